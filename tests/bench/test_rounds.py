"""Alternated rounds are judged on the median of their per-round ratios, with the spread beside it."""

from __future__ import annotations

import pytest

from bench.rounds import describe, per_round, spread


def test_per_round_ratios() -> None:
    assert per_round([10.0, 20.0, 15.0], [20.0, 40.0, 20.0]) == [0.5, 0.5, 0.75]
    assert per_round([10.0, None, 5.0], [20.0, 40.0, 0.0]) == [0.5, None, None]
    with pytest.raises(ValueError):
        per_round([1.0], [1.0, 2.0])


def test_median_and_spread() -> None:
    s = spread([0.4, 0.9, 0.5])
    assert (s["median"], s["min"], s["max"], s["missing"]) == (0.5, 0.4, 0.9, 0)
    # One busy round moves the pooled figure; the median of rounds stays put.
    assert spread([0.5, 0.5, 0.1])["median"] == 0.5
    assert spread([0.2, 0.4, 0.6, 0.8])["median"] == 0.5  # even count: the middle two's mean
    s = spread([None, 0.3])
    assert (s["median"], s["missing"]) == (0.3, 1)
    assert spread([None])["median"] is None and spread([])["median"] is None


def test_describe() -> None:
    assert describe(spread([0.33, 0.35, 0.37])) == "0.35× (0.33–0.37×, 3 rounds)"
    assert describe(spread([1.2])) == "1.2× (1.2–1.2×, 1 round)"
    assert describe(spread([None])) == "not measured"
