import pytest

from textstats import char_count, read_text, sentence_count, top_words, word_count, words


def test_words_are_lower_cased_and_keep_apostrophes():
    assert words("Don't PANIC, it's fine") == ["don't", "panic", "it's", "fine"]


def test_word_count_of_empty_text_is_zero():
    assert word_count("") == 0
    assert word_count("  \n\t ") == 0


def test_word_count_ignores_punctuation():
    assert word_count("Hello, world! -- How are you?") == 5


def test_char_count_with_and_without_spaces():
    assert char_count("a b\tc") == 5
    assert char_count("a b\tc", spaces=False) == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("One. Two! Three?", 3),
        ("No terminator at the end", 1),
        ("Wait... what?! Really.", 3),
    ],
)
def test_sentence_count(text, expected):
    assert sentence_count(text) == expected


def test_top_words_orders_by_frequency_then_first_use():
    text = "red blue red green blue red yellow"
    assert top_words(text, n=3) == [("red", 3), ("blue", 2), ("green", 1)]


def test_top_words_leaves_out_stopwords():
    text = "The cat and the hat. The cat sat."
    assert top_words(text, n=2, stopwords=["sat"]) == [("cat", 2), ("hat", 1)]


def test_read_text_falls_back_to_latin1(tmp_path):
    path = tmp_path / "legacy.txt"
    path.write_bytes("café".encode("latin-1"))
    assert read_text(path) == "café"
