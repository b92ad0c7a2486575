"""Keep special-token text in user and document content from becoming real special tokens.

GLM tokenizers parse ``<|system|>``, ``<|user|>``, ``[gMASK]``, ``<|endoftext|>`` (and
ChatGLM's ``sop``/``eop``) wherever they appear in the rendered prompt, so a passage holding
that text could forge a system turn. Message contents get a zero-width space after the
token's first character: the text reads the same, but tokenizes as plain text. The chat
template's own special tokens are added after this and stay real.
"""

from __future__ import annotations

import re
import weakref
from typing import Any

ZERO_WIDTH_SPACE = "\u200b"
_PATTERNS: weakref.WeakKeyDictionary[Any, re.Pattern[str] | None] = weakref.WeakKeyDictionary()


def special_token_strings(tokenizer: Any) -> list[str]:
    """Every special token's text the tokenizer would match inside ordinary text."""
    strings = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(token, "special", False):
            strings.add(str(getattr(token, "content", token)))
    return sorted((s for s in strings if len(s) > 1), key=len, reverse=True)


def _pattern(tokenizer: Any) -> re.Pattern[str] | None:
    try:
        return _PATTERNS[tokenizer]
    except (KeyError, TypeError):
        pass
    strings = special_token_strings(tokenizer)
    pattern = re.compile("|".join(re.escape(s) for s in strings)) if strings else None
    try:
        _PATTERNS[tokenizer] = pattern
    except TypeError:  # not weak-referenceable: just don't cache
        pass
    return pattern


def neutralize_special_tokens(text: str, tokenizer: Any) -> str:
    """``text`` with every special-token string broken by a zero-width space (idempotent)."""
    pattern = _pattern(tokenizer)
    if pattern is None or not text:
        return text
    return pattern.sub(lambda m: m.group(0)[0] + ZERO_WIDTH_SPACE + m.group(0)[1:], text)
