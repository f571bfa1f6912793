"""Readability scores for English text."""

from __future__ import annotations

import re
import string

from textstats.counting import sentence_count, words

_VOWEL_GROUP = re.compile(r"[aeiouy]+")

#: Flesch reading-ease bands, from the highest score down.
_LEVELS = [
    (90.0, "very easy"),
    (70.0, "easy"),
    (60.0, "standard"),
    (50.0, "fairly difficult"),
    (30.0, "difficult"),
]


def syllable_count(word: str) -> int:
    """Estimate the syllables of an English word by counting its vowel groups.

    A silent final ``e`` is not counted ("make"), except after ``l`` ("table") or another ``e`` ("free").
    """
    word = word.lower().strip(string.punctuation)
    if not word:
        return 0
    count = len(_VOWEL_GROUP.findall(word))
    if word.endswith("e") and not word.endswith(("le", "ee")) and count > 1:
        count -= 1
    return max(count, 1)


def flesch_reading_ease(text: str) -> float:
    """Flesch reading-ease score: higher is easier; most prose scores between 30 and 80."""
    tokens = words(text)
    if not tokens:
        raise ValueError("cannot score a text without words")
    sentences = max(sentence_count(text), 1)
    syllables = sum(syllable_count(token) for token in tokens)
    score = 206.835 - 1.015 * (len(tokens) / sentences) - 84.6 * (syllables / len(tokens))
    return round(score, 2)


def reading_level(score: float) -> str:
    """A label for a Flesch reading-ease score."""
    for floor, label in _LEVELS:
        if score >= floor:
            return label
    return "very difficult"
