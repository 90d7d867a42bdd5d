"""Text normalisation shared by metrics and data checks (no heavy imports)."""

from __future__ import annotations

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_text(
    text: str, *, ignore_case: bool = True, ignore_punctuation: bool = True, ignore_articles: bool = True
) -> str:
    """SQuAD-style answer normalisation; each step can be switched off. Whitespace is always collapsed."""
    if ignore_case:
        text = text.lower()
    if ignore_punctuation:
        text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    if ignore_articles:
        text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())
