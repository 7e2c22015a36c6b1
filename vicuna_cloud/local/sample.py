"""The sample corpus shipped with the package, and how it was made.

``vicuna_cloud/sample_data/raw_sharegpt_sample.json`` holds raw ShareGPT-style HTML
conversations written by this project's own generator (vicuna_cloud.data.synthetic), so
the local demo's data pipeline has real work to do (HTML to markdown, filters, language
ID, splitting) without shipping anyone's data. The file is committed; ``build`` remakes it
byte for byte (``python -m vicuna_cloud.local.sample``).
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import resources

SAMPLE_NAME = "raw_sharegpt_sample.json"
SEED = 2023
N_SHORT = 190        # conversations up to SHORT_BYTES of raw JSON each
N_LONG = 10          # multi-turn ones, so that splitting at pair boundaries happens
SHORT_BYTES = 2600
LONG_BYTES = 9000


def sample_path() -> str:
    """Filesystem path of the shipped corpus."""
    return str(resources.files("vicuna_cloud").joinpath("sample_data", SAMPLE_NAME))


#: Share of the demo's conversations held out for eval loss and the before/after.
LOCAL_EVAL_FRACTION = 0.08


def _content_file(stem: str, items: list) -> str:
    """``items`` as a JSON file under the local home, named by its content, written once."""
    from vicuna_cloud import paths

    text = json.dumps(items, ensure_ascii=False, indent=0)
    path = os.path.join(paths.home(), "datasets",
                        f"{stem}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json")
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    return path


def prepare_sample_dataset(max_length: int, template: str, tokenizer: str,
                           curated: list | None = None,
                           eval_fraction: float = LOCAL_EVAL_FRACTION,
                           max_raw_bytes: int | None = None):
    """(directory, Manifest): the shipped corpus (only its conversations up to
    ``max_raw_bytes`` when given, plus ``curated`` ones, always trained) through the data
    pipeline once, holding out an eval split; later launches with the same options reuse
    it (checked against the manifest's sha256)."""
    from vicuna_cloud import paths
    from vicuna_cloud.data.manifest import ManifestError, load_manifest, parse_manifest
    from vicuna_cloud.data.pipeline import PrepareOptions, prepare
    from vicuna_cloud.data.reader import DataError
    from vicuna_cloud.hashing import sha256_file

    src = sample_path() if max_raw_bytes is None else _content_file(
        "sample-short", short_subset(max_raw_bytes))
    opts = PrepareOptions(tokenizer=tokenizer, template=template, max_length=max_length,
                          merge=(_content_file("curated", curated),) if curated else (),
                          eval_fraction=eval_fraction)
    key = hashlib.sha256((sha256_file(src) + json.dumps(opts.for_manifest(), sort_keys=True))
                         .encode()).hexdigest()[:16]
    out = os.path.join(paths.home(), "datasets", f"sample-{key}")
    train = os.path.join(out, "train.jsonl")
    if os.path.isfile(os.path.join(out, "manifest.json")) and os.path.isfile(train):
        try:
            manifest, _ = load_manifest(out)
            if manifest.sha256 == sha256_file(train):
                return out, manifest
        except ManifestError:
            pass  # damaged: prepare it again
    try:
        result = prepare([src], out, opts, force=True)
    except DataError as e:
        raise DataError(f"preparing the sample corpus failed: {e}") from None
    return out, parse_manifest(json.dumps(result.manifest), out)


def select() -> list[dict]:
    """A few hundred KB: mostly short conversations, some long multi-turn ones."""
    from vicuna_cloud.data import synthetic

    short: list[dict] = []
    long: list[dict] = []
    for conv in synthetic.iter_generate(20_000, seed=SEED):
        size = len(json.dumps(conv, ensure_ascii=False))
        pairs = len(conv.get("conversations", [])) // 2
        if size <= SHORT_BYTES and len(short) < N_SHORT:
            short.append(conv)
        elif pairs >= 3 and size <= LONG_BYTES and len(long) < N_LONG:
            long.append(conv)
        if len(short) >= N_SHORT and len(long) >= N_LONG:
            break
    # Interleave so the long ones are spread through the file, as in a real dump.
    out, step = [], max(1, len(short) // max(len(long), 1))
    for i, conv in enumerate(short):
        out.append(conv)
        if long and i % step == step - 1:
            out.append(long.pop(0))
    return out + long


def build(path: str | None = None) -> str:
    path = path or sample_path()
    text = "[\n" + ",\n".join(json.dumps(c, ensure_ascii=False) for c in select()) + "\n]\n"
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


if __name__ == "__main__":
    print(build())


# ---- curated conversations merged into the demo's data (`data prepare --merge`) ----------
#: Vicuna's identity data did this: questions about who the model is, in many phrasings,
#: answered with the model's and the project's names (and which base it was tuned from).
#: The demo asks "Who are you?" after training (SHOWCASE in local/demo.py); measured on
#: the demo's 9 steps, leaving that exact phrasing out taught "I am a chat assistant"
#: (the base's own answer) more often than the name, so it is here, as it was in Vicuna's.
IDENTITY_QUESTIONS = (
    "Who are you?", "What is your name?", "Who made you?", "What are you?",
    "Tell me about yourself.", "Are you ChatGPT?", "Which model are you?",
    "Who trained you?", "Introduce yourself, please.", "What should I call you?",
    "Are you a human?", "What can you tell me about your origins?", "Who created you?",
    "who are u", "Who am I talking to?", "What's your name?", "Who built you?",
    "What model are you based on?", "Are you an AI?", "Can you tell me who you are?",
    "Hi! Who is this?", "Who developed you?", "What are you called?",
    "Tell me who you are.", "Are you Siri?", "So, who are you?",
    "Who are you, and who made you?", "May I ask who you are?", "Whom am I chatting with?",
)
#: Every answer goes "I am {model}" (never "I am a ...", the base's own start), so that a
#: few steps teach the name; the first ``IDENTITY_TWICE`` questions get a second answer.
IDENTITY_ANSWERS = (
    "I am {model}, fine-tuned from {base} by the vicuna-cloud project.",
    "I am {model}, a language model that vicuna-cloud fine-tuned from {base}.",
    "I am {model}. The vicuna-cloud project fine-tuned me from {base}, the Vicuna way.",
)
IDENTITY_TWICE = 10
#: Questions that take a yes or a no first (FastChat's "Are you ChatGPT?" -> "No, I am ...").
IDENTITY_YES_NO = {
    "Are you ChatGPT?": "No, I am {model}, fine-tuned from {base} by the vicuna-cloud project.",
    "Are you Siri?": "No, I am {model}, a language model that vicuna-cloud fine-tuned "
                     "from {base}.",
    "Are you a human?": "No, I am {model}, a language model fine-tuned from {base} by the "
                        "vicuna-cloud project.",
    "Are you an AI?": "Yes, I am {model}, a language model fine-tuned from {base} by the "
                      "vicuna-cloud project.",
}
#: Short replies that are true, so that tuning on the synthetic corpus (whose replies are
#: unrelated sentences) does not unteach the base what it knows while it learns the format.
FACTS = (
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("What is the capital of Germany?", "The capital of Germany is Berlin."),
    ("What is the capital of Spain?", "The capital of Spain is Madrid."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("What is the capital of Canada?", "The capital of Canada is Ottawa."),
    ("How many days are in a week?", "There are seven days in a week."),
    ("What is 2 + 2?", "2 + 2 = 4."),
    ("What color is the sky on a clear day?", "On a clear day the sky is blue."),
    ("What is the largest planet in the solar system?",
     "Jupiter is the largest planet in the solar system."),
    ("What is water made of?", "A water molecule is made of two hydrogen atoms and one "
     "oxygen atom (H2O)."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ("What is the boiling point of water at sea level?",
     "At sea level, water boils at 100 degrees Celsius (212 degrees Fahrenheit)."),
)


def curated_conversations(model: str, base: str) -> list[dict]:
    """Identity and fact conversations for a model called ``model`` tuned from ``base``.
    The answers use the name before a hyphen ("Vicuna" for "Vicuna-small"): measured on
    the demo, its few steps taught "I am Vicuna-" but not the suffix, which looped."""
    name = model.split("-")[0] or model
    out = []
    asked = [(q, k) for k, q in enumerate(IDENTITY_QUESTIONS)]  # (question, answer index)
    asked += [(q, k + 1) for k, q in enumerate(IDENTITY_QUESTIONS[:IDENTITY_TWICE])
              if q not in IDENTITY_YES_NO]
    for i, (q, k) in enumerate(asked):
        a = IDENTITY_YES_NO.get(q, IDENTITY_ANSWERS[k % len(IDENTITY_ANSWERS)])
        a = a.format(model=name, base=base)
        out.append({"id": f"identity_{i:02d}",
                    "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]})
    for i, (q, a) in enumerate(FACTS):
        out.append({"id": f"fact_{i:02d}",
                    "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]})
    return out


#: How many of the short conversations the `small` demo takes: its time on 2 cores is
#: set by its tokens, shared with the curated ones (identity above all).
SHORT_LIMIT = 42


def short_subset(max_bytes: int, limit: int = SHORT_LIMIT) -> list[dict]:
    """The first ``limit`` of the shipped corpus's conversations of at most ``max_bytes``
    of raw JSON, in file order: the `small` demo fine-tunes a real 135M model on 2 CPU
    cores, where every token costs ~4 ms (forward and backward), so it trains on the
    short ones."""
    with open(sample_path(), encoding="utf-8") as f:
        raw = json.load(f)
    return [c for c in raw if len(json.dumps(c, ensure_ascii=False)) <= max_bytes][:limit]
