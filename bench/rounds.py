"""Per-round ratios and their spread: how a comparison measured in alternated rounds is judged.

A ratio pooled over every round hides how much it moved from one round to the next; on a shared machine one
busy round can carry it. So each round gives its own ratio (the step's figure ÷ the reference's figure in that
round), and a comparison is judged on the median of those ratios, with their spread (min–max) beside it.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any


def per_round(values: Sequence[float | None], references: Sequence[float | None]) -> list[float | None]:
    """``value ÷ reference`` round by round (None where either is missing or the reference is zero)."""
    if len(values) != len(references):
        raise ValueError(f"{len(values)} rounds against {len(references)} reference rounds")
    return [round(v / r, 3) if v is not None and r else None for v, r in zip(values, references, strict=True)]


def spread(ratios: Sequence[float | None]) -> dict[str, Any]:
    """The rounds' ratios, their median and their min–max; the rounds without a ratio count as missing.

    The median of an even number of rounds is the mean of the middle two (``statistics.median``): with rounds
    this few, picking either middle round would favour one side.
    """
    known = [r for r in ratios if r is not None]
    if not known:
        return {"rounds": list(ratios), "median": None, "min": None, "max": None, "missing": len(ratios)}
    return {"rounds": list(ratios), "median": round(statistics.median(known), 3), "min": min(known),
            "max": max(known), "missing": len(ratios) - len(known)}


def describe(s: dict[str, Any]) -> str:
    """``0.35× (0.33–0.37×, 3 rounds)``: a spread as the report writes it."""
    if s["median"] is None:
        return "not measured"
    n = len(s["rounds"]) - s["missing"]
    return f"{s['median']}× ({s['min']}–{s['max']}×, {n} round{'s' if n != 1 else ''})"
