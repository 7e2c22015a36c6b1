"""The reply stop follows the base model's tokenizer (SmolLM2: GPT-2-style BPE, EOS
``<|im_end|>``, no BOS), in the loss mask, the data pipeline and the exported template.

Vicuna v1.1's ``</s>`` is LLaMA's EOS; with a literal ``</s>`` a SmolLM2 model would be
trained to write the five characters ``</s>`` and never stop. Decoding the mask shows
which it is.
"""

from __future__ import annotations

import json

import pytest

from vicuna_cloud.templates import get_template
from vicuna_cloud.tokenizer import eos_token, load_tokenizer

from helpers.model import smollm2_dir
from test_train_masking import TRICKY, multi_turn, trained_runs
from train.masking import IGNORE, tokenize_conversation

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base() -> str:
    return smollm2_dir()


@pytest.fixture(scope="module")
def tok(base):
    return load_tokenizer(base)


def test_eos_is_read_from_the_tokenizer_files(base):
    assert eos_token(base) == "<|im_end|>"
    assert eos_token("builtin:llama-sp") == "</s>"
    assert get_template("vicuna_v1.1", eos="<|im_end|>").sep2 == "<|im_end|>"
    assert get_template("vicuna_v1.1", eos="</s>") is get_template("vicuna_v1.1")
    assert get_template("vicuna_v0", eos="<|im_end|>").sep2 == "###"  # a text stop, kept


def test_mask_decodes_to_replies_each_ending_with_the_bases_eos(tok):
    tpl = get_template("vicuna_v1.1", eos=tok.eos_token)
    for conv in multi_turn(25) + TRICKY:
        ex = tokenize_conversation(tok, tpl, conv, max_length=100_000)
        runs = trained_runs(ex)
        # A byte-level BPE token carries the space before it: the first trained token of
        # a reply is " I" (the template's space after "ASSISTANT:"), as the mask allows.
        decoded = [tok.decode(r, skip_special_tokens=False) for r in runs]
        assert [d[1:] if d.startswith(" ") and not t["value"].startswith(" ") else d
                for d, t in zip(decoded, conv[1::2])] == \
            [t["value"] + "<|im_end|>" for t in conv[1::2]], conv
        # One EOS token per reply, the last trained token of each run: generation stops.
        assert [r[-1] for r in runs] == [tok.eos_token_id] * len(runs)
        assert sum(t == tok.eos_token_id for t in ex.targets if t != IGNORE) == len(runs)
        assert "</s>" not in tok.decode(ex.input_ids)
        assert ex.input_ids[0] != tok.bos_token_id  # SmolLM2 adds no BOS
        assert not ex.misaligned


def test_literal_llama_stop_would_not_stop_a_smollm2_model(tok):
    """What the old template did: ``</s>`` is several plain-text tokens, no EOS."""
    ex = tokenize_conversation(tok, get_template("vicuna_v1.1"), TRICKY[0], max_length=10_000)
    trained = [t for t in ex.targets if t != IGNORE]
    assert tok.eos_token_id not in trained
    assert tok.decode(trained_runs(ex)[0]).endswith("</s>")


def test_data_pipeline_splits_with_the_bases_tokenizer_and_records_the_stop(base, tok, tmp_path):
    from conftest import DUMMY_CONVERSATIONS
    from vicuna_cloud.data.pipeline import PrepareOptions, prepare

    res = prepare([str(DUMMY_CONVERSATIONS)], str(tmp_path / "d"),
                  PrepareOptions(tokenizer=base, max_length=96))
    m = res.manifest
    assert m["stop"] == "<|im_end|>" and m["counts"]["split_conversations"] > 0
    tpl = get_template("vicuna_v1.1", eos=tok.eos_token)
    lines = (tmp_path / "d" / "train.jsonl").read_text().splitlines()
    total = cut = 0
    for line in lines:
        conv = json.loads(line)["conversations"]
        n = len(tokenize_conversation(tok, tpl, conv, max_length=100_000))
        total += n
        cut += len(tokenize_conversation(tok, tpl, conv, max_length=96))
        assert n <= 96 or len(conv) == 2  # only a single over-long pair exceeds it
    assert total == m["tokens"]["total"]  # the manifest counts what the trainer will see
    assert cut == m["counts"]["train_tokens_after_truncation"]  # and after its cut


def test_export_template_and_generation_config_stop_at_the_same_eos(base, tok, tmp_path):
    """apply_chat_template on the export renders the training text and ids exactly."""
    from transformers import AutoConfig, AutoTokenizer

    from train.export import save_hf_dir
    from vicuna_cloud.templates import to_messages

    config = AutoConfig.from_pretrained(base)
    save_hf_dir({}, config, tok, "vicuna_v1.1", str(tmp_path / "x"))
    out = AutoTokenizer.from_pretrained(tmp_path / "x")
    gen = json.loads((tmp_path / "x" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.eos_token_id == out.eos_token_id
    tpl = get_template("vicuna_v1.1", eos=tok.eos_token)
    for conv in multi_turn(5) + TRICKY:
        ids = out.apply_chat_template(to_messages(conv), tokenize=True, return_dict=True)["input_ids"]
        assert ids == tokenize_conversation(tok, tpl, conv, 100_000).input_ids
        prompt = out.apply_chat_template(to_messages(conv[:-1]), tokenize=False,
                                         add_generation_prompt=True)
        assert prompt == tpl.prompt(conv[:-1])
