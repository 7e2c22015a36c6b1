"""One side of the before/after on held-out prompts: ``python -m train.compare --model DIR
--prompts FILE`` (vicuna_cloud/local/demo.py runs the base's and the tuned model's at once).

Both models get the same prompts through the run's Vicuna template (each process stops on
its model's own tokenizer's EOS, the reply stop the run trained) and generate greedily up
to ``--max-new-tokens``. A reply *ends*
when the model emits EOS before that limit; a base model prompted with a chat format it
was not tuned on typically runs on into invented ``USER:`` turns instead. Prints one JSON
object: the fraction of prompts that ended, and every reply.
"""

from __future__ import annotations

import argparse
import json
import sys

from vicuna_cloud.templates import get_template


def generate(model_dir: str, template_name: str, prompts: list[str], max_new_tokens: int,
             batch: int = 16) -> list[dict]:
    """Greedy replies, batched with left padding. Each: text, ended (EOS seen), tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tpl = get_template(template_name, eos=tok.eos_token)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out: list[dict] = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        texts = [tpl.prompt([{"from": "human", "value": p}]) for p in chunk]
        enc = tok(texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        for row in gen[:, enc["input_ids"].shape[1]:].tolist():
            ended = tok.eos_token_id in row
            row = row[:row.index(tok.eos_token_id)] if ended else row
            out.append({"reply": tok.decode(row, skip_special_tokens=True).strip(),
                        "ended": ended, "tokens": len(row)})
    return out


def replies_of(model_dir: str, template: str, prompts: list[str], max_new_tokens: int) -> dict:
    replies = generate(model_dir, template, prompts, max_new_tokens)
    return {"ended_fraction": sum(r["ended"] for r in replies) / max(len(replies), 1),
            "replies": replies}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.compare", description=__doc__)
    p.add_argument("--model", required=True, help="a model directory (base or tuned)")
    p.add_argument("--prompts", required=True, help="JSON list of prompt strings")
    p.add_argument("--template", default="vicuna_v1.1")
    p.add_argument("--max-new-tokens", type=int, default=64)
    a = p.parse_args(argv)
    with open(a.prompts, encoding="utf-8") as f:
        prompts = json.load(f)
    try:
        res = replies_of(a.model, a.template, prompts, a.max_new_tokens)
    except OSError as e:
        print(f"error: cannot load a model: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
