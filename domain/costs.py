"""Costs: what a task's usage costs under the configured price table, in exact micro-units.

Costs are stored as integer millionths of the table's currency, so totals per stage, run, pipeline and repository
add up exactly however they are grouped.
"""

from __future__ import annotations

import json
from functools import lru_cache

from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from devart.core import settings
from devart.core.bounds import MAX_MONEY
from devart.core.contracts import Usage

MICROS = 1_000_000


class PriceTable(BaseModel):
    """Prices: per 1,000 model tokens by model (with a default), and per sandbox CPU-second."""

    models: dict[str, float] = Field(default_factory=lambda: {"gpt-4o-mini": 0.0006, "gpt-4o": 0.01})
    default_per_1k_tokens: float = 0.002
    sandbox_cpu_second: float = 0.00002

    def cost_micros(self, usage: Usage) -> int:
        """The cost of ``usage``, at most ``MAX_MONEY``: a task's bounded usage at an operator's price (unbounded,
        say a typo's) still fits the ``bigint`` it is stored in."""
        tokens = sum(round(n * self.models.get(model, self.default_per_1k_tokens) * MICROS / 1000)
                     for model, n in usage.model_tokens.items())
        total = int(tokens + round(usage.sandbox_cpu_seconds * self.sandbox_cpu_second * MICROS))
        return min(total, int(MAX_MONEY * MICROS))


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


#: What cost totals may be grouped by, and the column each groups on.
GROUPS = {"pipeline": "r.pipeline", "repository": "r.repository", "run": "r.id", "stage": "a.stage"}


async def totals(session: AsyncSession, group: str, run_id: str | None = None) -> list[dict[str, object]]:
    """Cost totals grouped by pipeline, repository, run or stage (of one run with ``run_id``), in exact micros."""
    where = "WHERE r.id = :run_id" if run_id else ""
    rows = (await session.execute(text(
        f"SELECT {GROUPS[group]} AS key, sum(a.cost_micros) AS micros, count(DISTINCT r.id) AS runs "
        f"FROM task_attempts a JOIN runs r ON r.id = a.run_id {where} GROUP BY 1 ORDER BY 1"),
        {"run_id": run_id} if run_id else {})).all()
    return [{"key": key, "cost": to_money(int(micros)), "micros": int(micros), "runs": n} for key, micros, n in rows]
