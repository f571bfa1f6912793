"""The one percentile every benchmark reports: nearest rank, ``ceil(q/100 × n)``.

Nearest rank never interpolates, so a reported p99 is a latency that was measured. The rank is a ceiling, not a
rounding: ``round(99.5)`` rounds half to even (100), which made the p99 of 100 samples their maximum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 < q ≤ 100; 0 gives the minimum) of ``samples``, by nearest rank."""
    if not samples:
        raise ValueError("no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"a percentile is between 0 and 100, not {q}")
    ordered = sorted(samples)
    return ordered[min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1]
