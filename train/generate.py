"""Talk to an exported model: `python -m train.generate --model DIR [--prompt TEXT]`.

Loads the Hugging Face directory the trainer exported (runs/<id>/final/), formats the
conversation with the same Vicuna template used in training (vicuna_cloud.templates), and
generates. Without --prompt it is an interactive loop that keeps the conversation.
Greedy by default, so a reply is reproducible.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional, TypeVar

from vicuna_cloud.templates import TemplateError, get_template

T = TypeVar("T")


def load_or_report(load: Callable[[], T], model_dir: str) -> Optional[T]:
    """``load()``, or None after one ``error:`` line on stderr when the template is unknown
    or ``model_dir`` cannot be loaded (the caller exits 2): bad input, not a traceback.
    Shared by this chat and the local server (train/serve.py)."""
    try:
        return load()
    except TemplateError as e:
        print(f"error: {e}", file=sys.stderr)
    except OSError as e:
        print(f"error: cannot load the model from {model_dir}: {str(e).splitlines()[0]}",
              file=sys.stderr)
    return None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train.generate", description=__doc__)
    p.add_argument("--model", required=True, help="exported model directory")
    p.add_argument("--template", default="vicuna_v1.1")
    p.add_argument("--prompt", default=None, help="one message; omit for a chat loop")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


class Chat:
    """One conversation with a loaded model."""

    def __init__(self, model_dir: str, template: str, max_new_tokens: int,
                 temperature: float, seed: int):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        torch.manual_seed(seed)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.template = get_template(template, eos=self.tokenizer.eos_token)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.model.eval()
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.turns: list[dict] = []

    def reply(self, message: str) -> str:
        self.turns.append({"from": "human", "value": message})
        text = self.template.prompt(self.turns)
        enc = self.tokenizer(text, return_tensors="pt")
        kwargs = dict(max_new_tokens=self.max_new_tokens,
                      eos_token_id=self.tokenizer.eos_token_id,
                      pad_token_id=self.tokenizer.eos_token_id)
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature)
        else:
            kwargs.update(do_sample=False)
        with self.torch.no_grad():
            out = self.model.generate(**enc, **kwargs)
        new = out[0, enc["input_ids"].shape[1]:]
        answer = self.tokenizer.decode(new, skip_special_tokens=True)
        for stop in self.template.stop_strings:
            answer = answer.split(stop)[0]
        answer = answer.strip()
        self.turns.append({"from": "gpt", "value": answer})
        if not answer:
            # An undertrained model (the tiny demo trains a few steps) often emits only
            # whitespace; say so rather than print a blank line that looks like a bug.
            print(f"(empty reply: the model generated {len(new)} token(s) of whitespace or "
                  "stop strings; a model this small or this briefly trained often does. "
                  "Try --temperature 0.8)", file=sys.stderr, flush=True)
        return answer


def main(argv=None) -> int:
    args = parse_args(argv)
    chat = load_or_report(lambda: Chat(args.model, args.template, args.max_new_tokens,
                                       args.temperature, args.seed), args.model)
    if chat is None:
        return 2
    if args.prompt is not None:
        print(chat.reply(args.prompt), flush=True)
        return 0
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("USER: ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() in ("exit", "quit", "/exit"):
            return 0
        if not line.strip():
            continue
        print(("ASSISTANT: " if interactive else "") + chat.reply(line.strip()), flush=True)


if __name__ == "__main__":
    sys.exit(main())
