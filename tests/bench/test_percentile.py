"""The benchmarks' percentile is nearest rank: the p99 of 100 samples is the 99th, not their maximum."""

from __future__ import annotations

import pytest

from bench.stats import percentile


def test_nearest_rank() -> None:
    samples = [float(i) for i in range(100, 0, -1)]  # 1..100, unordered
    assert percentile(samples, 99) == 99.0 and percentile(samples, 50) == 50.0
    assert percentile(samples, 100) == 100.0 and percentile(samples, 0) == 1.0
    assert percentile(samples, 99.5) == 100.0 and percentile(samples, 0.5) == 1.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0], 50) == 1.0 and percentile([1.0, 2.0], 51) == 2.0


def test_refuses_what_has_no_percentile() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)
