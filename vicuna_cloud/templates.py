"""Vicuna chat templates, shared by the data pipeline, the trainer and the exported model.

Rendering returns the text *and* the character spans of every trained region (each
assistant reply plus the stop string that follows it), so the trainer builds its loss mask
from the tokenizer's offsets on the whole rendered conversation instead of per-turn length
arithmetic (FastChat's ``-2`` broke with Llama-2 tokenizers).

Formats (facts from FastChat's ``conversation.py``):
- ``vicuna_v1.1`` (used by v1.1, v1.3, v1.5, v1.5-16k): ``SYSTEM USER: q ASSISTANT: a</s>USER: ...``
  (separator style ADD_COLON_TWO, seps ``" "`` and ``"</s>"``).
- ``vicuna_v0`` (the March 2023 release): ``SYSTEM###Human: q###Assistant: a###...``
  (separator style SINGLE with ``"###"``); the trained region is the reply plus ``###``,
  the stop string that ends a reply in this format.

The reply stop follows the base model's tokenizer: v1.1's ``</s>`` *is* LLaMA's EOS, so for
a base whose EOS is another token (SmolLM2's ``<|im_end|>``, Llama 3, Mistral, Qwen) the
trained stop after each reply is that EOS (``get_template(name, eos=tokenizer.eos_token)``);
a literal ``</s>`` would be trained as plain text and never end generation. The exported
Jinja writes ``{{ eos_token }}`` there, so it renders the same for any tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping, Optional, Sequence
from vicuna_cloud.errors import ConfigError

HUMAN_ROLES = frozenset({"human", "user"})
ASSISTANT_ROLES = frozenset({"gpt", "assistant", "chatgpt", "bard", "bing"})


class TemplateError(ConfigError):
    """A conversation that cannot be rendered (unknown role, roles not alternating)."""


@dataclass(frozen=True)
class Rendered:
    text: str
    # Half-open [start, end) character spans of the trained regions, in order.
    assistant_spans: tuple[tuple[int, int], ...]
    # Half-open spans of each (human, assistant) pair, for splitting at pair boundaries.
    pair_spans: tuple[tuple[int, int], ...] = field(default=())


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    system: str
    user_role: str
    assistant_role: str
    sep: str          # after the system prompt and after each user turn
    sep2: str         # after each assistant reply (the trained stop string)
    hf_jinja: str     # tokenizer_config.json chat_template reproducing `render`
    stop_is_eos: bool = False  # sep2 is the tokenizer's EOS (v1.1), not a literal string

    def with_eos(self, eos: Optional[str]) -> "ChatTemplate":
        """This template for a tokenizer whose EOS token is ``eos`` (see module doc)."""
        if not self.stop_is_eos or not eos or eos == self.sep2:
            return self
        return replace(self, sep2=eos)

    def render(self, conversation: Sequence[Mapping[str, str]]) -> Rendered:
        """Render ShareGPT turns ``[{"from": "human"|"gpt", "value": ...}, ...]``.

        Turns must alternate human, assistant, starting with human. A trailing human turn is
        rendered as an open prompt (``ASSISTANT:``) with nothing trained after it.
        """
        parts: list[str] = [self.system, self.sep]
        pos = len(self.system) + len(self.sep)
        spans: list[tuple[int, int]] = []
        pairs: list[tuple[int, int]] = []
        pair_start = pos
        for i, turn in enumerate(conversation):
            role = normalize_role(turn.get("from", ""))
            expected = "human" if i % 2 == 0 else "gpt"
            if role != expected:
                raise TemplateError(
                    f"turn {i} has role {turn.get('from')!r}, expected {expected!r}: "
                    "turns must alternate human/gpt starting with human"
                )
            value = turn.get("value", "")
            if role == "human":
                pair_start = pos
                chunk = f"{self.user_role}: {value}{self.sep}"
                parts.append(chunk)
                pos += len(chunk)
            else:
                head = f"{self.assistant_role}: "
                parts.append(head)
                pos += len(head)
                body = f"{value}{self.sep2}"
                parts.append(body)
                spans.append((pos, pos + len(body)))
                pos += len(body)
                pairs.append((pair_start, pos))
        if len(conversation) % 2 == 1:
            tail = f"{self.assistant_role}:"
            parts.append(tail)
            pos += len(tail)
        return Rendered("".join(parts), tuple(spans), tuple(pairs))

    def prompt(self, conversation: Sequence[Mapping[str, str]]) -> str:
        """The generation prompt for a conversation ending with a human turn."""
        if len(conversation) % 2 != 1:
            raise TemplateError("a generation prompt must end with a human turn")
        return self.render(conversation).text

    @property
    def stop_strings(self) -> list[str]:
        return [self.sep2.strip() or self.sep2]


def canonical_role(role: str) -> str | None:
    """The canonical role ("human", "gpt" or "system") for any spelling ShareGPT data
    uses; None if unknown (the data filters drop such conversations)."""
    r = (role or "").strip().lower()
    if r in HUMAN_ROLES:
        return "human"
    if r in ASSISTANT_ROLES:
        return "gpt"
    if r == "system":
        return "system"
    return None


def normalize_role(role: str) -> str:
    canonical = canonical_role(role)
    if canonical is None:
        raise TemplateError(f"unknown role {role!r}: expected one of human/user or gpt/assistant")
    return canonical


VICUNA_V11_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
VICUNA_V0_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


#: How a template may start, in order of preference: BOS then the text (LLaMA tokenizers
#: whose training ids are [<s>, ...]); BOS and a space (SentencePiece tokenizers that put
#: no word-start marker after a special token: the space becomes the "▁" that training's
#: ``tokenizer(text)`` prepends); nothing (tokenizers that add no BOS). The export keeps
#: the first whose ``apply_chat_template(tokenize=True)`` ids equal the training ids.
BOS_PREFIXES = ("{{ bos_token }}", "{{ bos_token ~ ' ' }}", "")


def with_bos_prefix(jinja: str, prefix: str) -> str:
    """``jinja`` (one of TEMPLATES' ``hf_jinja``) starting with ``prefix`` instead."""
    if not jinja.startswith(BOS_PREFIXES[0]) or prefix not in BOS_PREFIXES:
        raise ValueError("with_bos_prefix takes a TEMPLATES hf_jinja and one of BOS_PREFIXES")
    return prefix + jinja[len(BOS_PREFIXES[0]):]


EOS = None  # _jinja's sep2 for "the tokenizer's EOS token" ({{ eos_token }})


def _jinja(system: str, user: str, assistant: str, sep: str, sep2: Optional[str]) -> str:
    # BOS first: serving stacks (vLLM's chat endpoint, apply_chat_template(tokenize=True))
    # tokenize the rendered text without adding special tokens ("the template adds them"),
    # and training ids start with <s>. A leading "system" message replaces the default
    # system prompt.
    stop = "{{ eos_token }}" if sep2 is EOS else f"{{{{ {sep2!r} }}}}"
    return (
        f"{BOS_PREFIXES[0]}"
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set system = messages[0]['content'] -%}{%- set msgs = messages[1:] -%}"
        "{%- else -%}"
        f"{{%- set system = {system!r} -%}}{{%- set msgs = messages -%}}"
        "{%- endif -%}"
        f"{{{{ system }}}}{{{{ {sep!r} }}}}"
        "{%- for m in msgs -%}"
        "{%- if m['role'] == 'user' -%}"
        f"{{{{ {user!r} }}}}: {{{{ m['content'] }}}}{{{{ {sep!r} }}}}"
        "{%- else -%}"
        f"{{{{ {assistant!r} }}}}: {{{{ m['content'] }}}}{stop}"
        "{%- endif -%}"
        "{%- endfor -%}"
        f"{{%- if add_generation_prompt -%}}{{{{ {assistant!r} }}}}:{{%- endif -%}}"
    )


TEMPLATES: dict[str, ChatTemplate] = {
    "vicuna_v1.1": ChatTemplate(
        name="vicuna_v1.1",
        system=VICUNA_V11_SYSTEM,
        user_role="USER",
        assistant_role="ASSISTANT",
        sep=" ",
        sep2="</s>",  # LLaMA's EOS; with_eos() swaps in another tokenizer's
        hf_jinja=_jinja(VICUNA_V11_SYSTEM, "USER", "ASSISTANT", " ", EOS),
        stop_is_eos=True,
    ),
    "vicuna_v0": ChatTemplate(
        name="vicuna_v0",
        system=VICUNA_V0_SYSTEM,
        user_role="Human",
        assistant_role="Assistant",
        sep="###",
        sep2="###",
        hf_jinja=_jinja(VICUNA_V0_SYSTEM, "Human", "Assistant", "###", "###"),
    ),
}


def get_template(name: str, eos: Optional[str] = None) -> ChatTemplate:
    """The named template; with ``eos`` (the tokenizer's EOS token), its reply stop."""
    try:
        return TEMPLATES[name].with_eos(eos)
    except KeyError:
        raise TemplateError(
            f"unknown chat template {name!r}; choose one of: {', '.join(sorted(TEMPLATES))}"
        ) from None


def to_messages(conversation: Iterable[Mapping[str, str]]) -> list[dict[str, str]]:
    """ShareGPT turns -> OpenAI/HF style messages (role user/assistant)."""
    out = []
    for turn in conversation:
        role = normalize_role(turn["from"])
        out.append({"role": "user" if role == "human" else "assistant",
                    "content": turn["value"]})
    return out
