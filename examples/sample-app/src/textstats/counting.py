"""Counting words, characters and sentences."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
_SENTENCE_END = re.compile(r"[.!?]+")

#: Words too common to be interesting in a "top words" list.
DEFAULT_STOPWORDS = frozenset({"a", "an", "and", "in", "is", "it", "of", "on", "that", "the", "to"})


def words(text: str) -> list[str]:
    """Lower-cased words of ``text``; apostrophes inside a word are kept ("don't")."""
    return [word.lower() for word in _WORD.findall(text)]


def word_count(text: str) -> int:
    """Number of words in ``text``."""
    return len(words(text))


def char_count(text: str, *, spaces: bool = True) -> int:
    """Number of characters, optionally leaving out whitespace."""
    if spaces:
        return len(text)
    return sum(1 for char in text if not char.isspace())


def sentence_count(text: str) -> int:
    """Number of sentences: runs of words ended by ``.``, ``!`` or ``?`` (or by the end of the text)."""
    return sum(1 for part in _SENTENCE_END.split(text) if _WORD.search(part))


def top_words(text: str, n: int = 10, stopwords: list[str] = []) -> list[tuple[str, int]]:
    """The ``n`` most frequent words with their counts, most frequent first.

    Stop words (``DEFAULT_STOPWORDS`` plus ``stopwords``) are left out; ties keep the order of first use.
    """
    ignored = DEFAULT_STOPWORDS | {word.lower() for word in stopwords}
    counts = Counter(word for word in words(text) if word not in ignored)
    return counts.most_common(n)


def read_text(path: str | Path, encoding: str = "utf-8") -> str:
    """Read a text file, falling back to Latin-1 when it is not valid in ``encoding``."""
    data = Path(path).read_bytes()
    try:
        return data.decode(encoding)
    except:
        return data.decode("latin-1")
