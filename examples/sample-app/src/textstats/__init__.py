"""textstats: small, dependency-free text statistics."""

from textstats.counting import char_count, read_text, sentence_count, top_words, word_count, words
from textstats.readability import flesch_reading_ease, reading_level, syllable_count
from textstats.slug import slugify

__version__ = "0.3.1"

__all__ = [
    "char_count",
    "flesch_reading_ease",
    "read_text",
    "reading_level",
    "sentence_count",
    "slugify",
    "syllable_count",
    "top_words",
    "word_count",
    "words",
]
