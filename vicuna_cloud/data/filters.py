"""Per-conversation cleaning and filters. Each drop has one named reason.

``clean_conversation`` runs the steps in a fixed order and returns either the cleaned turns
or the first reason that drops the conversation, so every input lands in exactly one
bucket of the manifest's ``counts``. Reasons (``DROP_REASONS``):

- ``bad_schema``: not an object, no ``conversations`` list, a turn without string
  ``from``/``value``.
- ``unknown_role``: a role other than human/user, gpt/assistant/chatgpt, system, or one
  mapped with ``assistant_roles``.
- ``other_assistant``: a turn by another assistant than ChatGPT (bard, bing, claude, ...):
  its replies are not the ones this data is for; ``--assistant-role NAME`` maps NAME to gpt.
- ``plugins``: the conversation used ChatGPT plugins (tool output, not a chat).
- ``system_turn``: a system turn after the first human turn (FastChat's cleaner drops any
  conversation that is not human/gpt alternating; a leading system turn is trimmed).
- ``roles_not_alternating``: after trimming the leading non-human turns and a trailing
  human turn, roles do not alternate human/gpt.
- ``invalid_unicode``: a lone surrogate or other text that cannot be written as UTF-8.
- ``html_error``: the HTML parser rejected a message.
- ``blocked_words``: a message mentions a blocked word (FastChat's list: openai, chatgpt;
  configurable) which mostly marks "As an AI language model by OpenAI" boilerplate.
- ``assistant_error``: an assistant turn is a ChatGPT UI error ("Too many requests in 1
  hour. Try again later.", "network error", ...).
- ``empty_message``: the first message is empty or starts with a non-printable character.
  Later empty messages truncate the conversation there (FastChat's behaviour), which
  is not a drop; the truncation is counted in ``truncated``.
- ``too_short``: fewer than one human/gpt pair, or fewer than ``min_chars`` characters.
- ``broken_list``: a numbered list that restarts at "1." right after a "1." item (the
  scrapes' broken list numbering, FastChat's filter_wrong_format).
- ``invalid_json``, ``invalid_utf8``, ``too_deep``, ``too_large``: the reader could not
  make a JSON value of the record (reader.py: the same in a JSON array and in JSONL).
The language, decontamination, duplicate and length reasons are added by later steps.

Roles follow FastChat's cleaner (fastchat/data/clean_sharegpt.py): the kept turns strictly
alternate human, gpt, human, gpt... and anything else drops the whole conversation with a
named reason, never a silent deletion. Turns removed from a kept conversation are counted
by reason (``Cleaned.removed``, ``REMOVED_TURN_REASONS``): the non-human turns before the
first human one (``leading_system``, ``leading_gpt``; FastChat trims one such turn and
drops the conversation if a second follows), a trailing human turn with no reply
(``trailing_human``), and the turns from an empty message on (``after_empty_message``).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from vicuna_cloud.data.html_to_markdown import HTMLConversionError, convert_value
from vicuna_cloud.data.reader import MALFORMED_REASONS, Malformed

DEFAULT_BLOCKED_WORDS = ("openai", "chatgpt")
ASSISTANT_ERRORS = (
    "too many requests in 1 hour",
    "an error occurred. if this issue persists",
    "something went wrong, please try reloading the conversation",
    "network error",
    "the message you submitted was too long",
    "conversation not found",
    "hmm...something seems to have gone wrong",
)
DROP_REASONS = (
    "bad_schema", "unknown_role", "other_assistant", "plugins", "system_turn",
    "roles_not_alternating", "invalid_unicode",
    "html_error", "blocked_words", "assistant_error", "empty_message", "too_short",
    "broken_list", "language", "contaminated", "duplicate_id", "duplicate_content",
    "pair_too_long", *MALFORMED_REASONS,
)

REMOVED_TURN_REASONS = ("leading_system", "leading_gpt", "trailing_human",
                        "after_empty_message")
#: The default spellings of the two roles: FastChat's "human"/"gpt", the same roles as
#: OpenAI-style dumps spell them, and ShareGPT's "chatgpt".
HUMAN_ROLES = frozenset({"human", "user"})
GPT_ROLES = frozenset({"gpt", "assistant", "chatgpt"})
#: Other assistants that ShareGPT-style dumps carry: dropped unless mapped to gpt.
OTHER_ASSISTANTS = frozenset({"bard", "bing", "claude", "gemini", "llama", "bot", "model"})

# Identity questions and answers ("Are you ChatGPT?" -> "No, I am ..."): when the blocked
# words drop such conversations, the run learns no identity (pipeline.py warns).
_IDENTITY_Q = re.compile(
    r"\b(?:who (?:are|r) (?:you|u)\b|what(?:'s| is) your name|your name\b"
    r"|are you (?:chat ?gpt|gpt|an? (?:ai|bot|chat ?bot|robot|human|language model|real person))"
    r"|are you (?:created|made|trained|developed|built|owned|based on|from)\b"
    r"|who (?:made|created|built|trained|developed|programmed|designed) you"
    r"|what (?:model|language model|ai|version|kind of ai) are you|what are you\b"
    r"|introduce yourself|tell me about yourself)")
_IDENTITY_A = re.compile(
    r"\b(?:i am|i'm|i\u2019m|my name is|i was (?:created|trained|developed|made|built))\b"
    r"|\b(?:openai|chat ?gpt|gpt-?[34]|language model)\b")

_YOU = re.compile(r"\byou\b")
_NO_I_AM = re.compile(r"(?:no|yes)\b\W{0,3}i(?: am|'m|\u2019m)\b")

# C0/C1 control characters except tab, newline and carriage return; they are removed.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_NUMBERED = re.compile(r"^( *)(\d+)\. ", re.M)
_FENCE = re.compile(r"^```.*?^```", re.M | re.S)


@dataclass(frozen=True)
class FilterOptions:
    blocked_words: tuple[str, ...] = DEFAULT_BLOCKED_WORDS
    min_chars: int = 16
    drop_plugins: bool = True
    check_lists: bool = True
    assistant_roles: tuple[str, ...] = ()   # other assistants' roles kept as gpt (bard, ...)


@dataclass
class Cleaned:
    id: str
    turns: list[dict[str, str]] = field(default_factory=list)
    reason: str | None = None          # drop reason, None when kept
    truncated: bool = False
    detail: str = ""
    removed: dict[str, int] = field(default_factory=dict)  # turns removed, by reason
    identity: bool = False             # blocked_words dropped what looks like identity data


def looks_like_identity(turns: list[tuple[str, str]]) -> bool:
    """A short human question about who the model is, answered "I am ..." or naming a
    model: the identity data a model learns its name from (Vicuna's, FastChat's)."""
    for (r1, q), (r2, a) in zip(turns, turns[1:]):
        if r1 != "human" or r2 != "gpt" or len(q) > 300:
            continue
        q, a = q.lower(), a[:600].lower()
        if _IDENTITY_Q.search(q) and _IDENTITY_A.search(a):
            return True
        if _YOU.search(q) and _NO_I_AM.match(a):  # "Do you call OpenAI APIs?" -> "No, I am"
            return True
    return False


def _role(name: str, opts: FilterOptions) -> tuple[str | None, str]:
    """(canonical role or None, the drop reason when None)."""
    r = name.strip().lower()
    if r in HUMAN_ROLES:
        return "human", ""
    if r in GPT_ROLES or r in opts.assistant_roles:
        return "gpt", ""
    if r == "system":
        return "system", ""
    return None, "other_assistant" if r in OTHER_ASSISTANTS else "unknown_role"


def _trim(turns: list[tuple[str, str]], out: Cleaned) -> list[tuple[str, str]]:
    """The turns before the first human one and a trailing human one, counted in
    ``out.removed``; FastChat's cleaner trims the same (one leading turn)."""
    start = 0
    while start < len(turns) and turns[start][0] != "human":
        key = f"leading_{turns[start][0]}"
        out.removed[key] = out.removed.get(key, 0) + 1
        start += 1
    turns = turns[start:]
    if turns and turns[-1][0] == "human":
        out.removed["trailing_human"] = 1
        turns = turns[:-1]
    return turns


def has_broken_list(text: str) -> bool:
    """True when a numbered list at some indent goes "1." then "1." again."""
    if text.count("1. ") < 2:
        return False
    text = _FENCE.sub("", text)
    last: dict[str, int] = {}
    for m in _NUMBERED.finditer(text):
        indent, num = m.group(1), int(m.group(2))
        if num == 1 and last.get(indent) == 1:
            return True
        last[indent] = num
        for k in [k for k in last if len(k) > len(indent)]:
            del last[k]  # a shallower item ends deeper lists
    return False


def _printable_start(text: str) -> bool:
    c = text[0]
    return c.isprintable() or c in "\n\t" or unicodedata.category(c) == "Co"


def clean_conversation(item: Any, fallback_id: str, opts: FilterOptions) -> Cleaned:
    if isinstance(item, Malformed):
        return Cleaned(fallback_id, reason=item.reason, detail=f"{item.where}: {item.detail}")
    if not isinstance(item, dict):
        return Cleaned(fallback_id, reason="bad_schema", detail="item is not an object")
    cid = item.get("id", fallback_id)
    cid = str(cid) if isinstance(cid, (str, int, float)) and str(cid) else fallback_id
    out = Cleaned(cid)
    convs = item.get("conversations", item.get("items"))
    if not isinstance(convs, list):
        out.reason, out.detail = "bad_schema", "no 'conversations' list"
        return out
    turns: list[tuple[str, str]] = []
    for t in convs:
        if not isinstance(t, dict) or not isinstance(t.get("from"), str) \
                or not isinstance(t.get("value"), str):
            out.reason, out.detail = "bad_schema", "turn without string 'from' and 'value'"
            return out
        role, why = _role(t["from"], opts)
        if role is None:
            out.reason, out.detail = why, f"role {t['from'][:40]!r}"
            return out
        turns.append((role, t["value"]))
    if opts.drop_plugins and item.get("plugins"):
        out.reason = "plugins"
        return out
    turns = _trim(turns, out)  # no reply to learn from, or no question before it
    for i, (role, _) in enumerate(turns):
        if role != ("human" if i % 2 == 0 else "gpt"):
            out.reason = "system_turn" if role == "system" else "roles_not_alternating"
            out.detail = f"turn {i} is {role}"
            return out
    if len(turns) < 2:
        out.reason = "too_short"
        return out
    return _clean_values(turns, out, opts)


def _clean_values(turns: list[tuple[str, str]], out: Cleaned, opts: FilterOptions) -> Cleaned:
    """Each message converted and checked, in order; the first problem drops or cuts."""
    blocked = tuple(w.lower() for w in opts.blocked_words)
    cleaned: list[dict[str, str]] = []
    chars = 0
    for role, value in turns:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            out.reason = "invalid_unicode"
            return out
        low = value.lower()
        if blocked and any(w in low for w in blocked):
            out.reason, out.identity = "blocked_words", looks_like_identity(turns)
            return out
        try:
            text = convert_value(value)
        except (HTMLConversionError, ValueError, RecursionError) as e:
            out.reason, out.detail = "html_error", str(e)[:80]
            return out
        if _CONTROL.search(text):
            text = _CONTROL.sub("", text).strip()
        if role == "gpt":
            tl = text[:200].lower().lstrip("!")
            if any(tl.startswith(err) for err in ASSISTANT_ERRORS):
                out.reason = "assistant_error"
                return out
        if not text or not _printable_start(text):
            out.truncated = True
            break
        if opts.check_lists and has_broken_list(text):
            out.reason = "broken_list"
            return out
        chars += len(text)
        cleaned.append({"from": role, "value": text})
    cleaned = cleaned[: len(cleaned) // 2 * 2]
    if not cleaned:
        out.reason = "empty_message"
        return out
    if len(cleaned) < len(turns):
        out.removed["after_empty_message"] = len(turns) - len(cleaned)
    if chars < opts.min_chars:
        out.reason = "too_short"
        return out
    out.turns = cleaned
    return out
