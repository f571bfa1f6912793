"""Costs: what a task's usage costs under the configured price table, in exact micro-units.

Costs are stored as integer millionths of the table's currency, so totals per stage, run, pipeline and repository
add up exactly however they are grouped.
"""

from __future__ import annotations

import json
from functools import lru_cache

from pydantic import BaseModel, Field

from core import settings
from core.contracts import Usage

MICROS = 1_000_000


class PriceTable(BaseModel):
    """Prices: per 1,000 model tokens by model (with a default), and per sandbox CPU-second."""

    models: dict[str, float] = Field(default_factory=lambda: {"gpt-4o-mini": 0.0006, "gpt-4o": 0.01})
    default_per_1k_tokens: float = 0.002
    sandbox_cpu_second: float = 0.00002

    def cost_micros(self, usage: Usage) -> int:
        tokens = sum(round(n * self.models.get(model, self.default_per_1k_tokens) * MICROS / 1000)
                     for model, n in usage.model_tokens.items())
        return int(tokens + round(usage.sandbox_cpu_seconds * self.sandbox_cpu_second * MICROS))


@lru_cache
def prices() -> PriceTable:
    """DEVART_PRICES (JSON) or the file DEVART_PRICES_FILE; the defaults otherwise."""
    source = settings.price_source()
    raw = source.prices
    if not raw and source.prices_file:
        raw = source.prices_file.read_text()
    return PriceTable.model_validate(json.loads(raw)) if raw else PriceTable()


def to_money(micros: int) -> float:
    return micros / MICROS
