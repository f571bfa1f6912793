import os

import pytest

from textstats import flesch_reading_ease, reading_level, syllable_count


@pytest.mark.parametrize(
    ("word", "expected"),
    [("table", 2), ("make", 1), ("the", 1), ("syllable", 3)],
)
def test_syllable_count(word, expected):
    assert syllable_count(word) == expected


def test_simple_text_is_very_easy():
    score = flesch_reading_ease("The cat sat on the mat. The dog ran.")
    assert score > 90
    assert reading_level(score) == "very easy"


def test_scoring_an_empty_text_is_an_error():
    with pytest.raises(ValueError, match="without words"):
        flesch_reading_ease("...")


@pytest.mark.skipif(
    not os.environ.get("TEXTSTATS_CORPUS"),
    reason="needs TEXTSTATS_CORPUS pointing at a large text corpus (slow benchmark)",
)
def test_scores_a_large_corpus_quickly():
    with open(os.environ["TEXTSTATS_CORPUS"], encoding="utf-8") as corpus:
        assert 0 < flesch_reading_ease(corpus.read()) < 100
