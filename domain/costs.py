"""Costs: what a task's usage costs under the configured price table, in exact micro-units.

Costs are stored as integer millionths of the table's currency, so totals per stage, run, pipeline and repository
add up exactly however they are grouped.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from devart.core import settings
from devart.core.bounds import MAX_MONEY
from devart.core.contracts import Usage
from devart.core.errors import Invalid

MICROS = 1_000_000


#: A price: finite and not negative (a negative one would lower a run's cost and its budget's spending).
Price = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class PriceTable(BaseModel):
    """Prices: per 1,000 model tokens by model (with a default), and per sandbox CPU-second.

    Unknown keys are refused: a misspelt one (``default_per_1k``) would otherwise leave its default price in force
    without a word.
    """

    model_config = ConfigDict(extra="forbid")
    models: dict[str, Price] = Field(default_factory=lambda: {"gpt-4o-mini": 0.0006, "gpt-4o": 0.01})
    default_per_1k_tokens: Price = 0.002
    sandbox_cpu_second: Price = 0.00002

    def cost_micros(self, usage: Usage) -> int:
        """The cost of ``usage``, at most ``MAX_MONEY``: a task's bounded usage at an operator's price (unbounded,
        say a typo's) still fits the ``bigint`` it is stored in."""
        tokens = sum(round(n * self.models.get(model, self.default_per_1k_tokens) * MICROS / 1000)
                     for model, n in usage.model_tokens.items())
        total = int(tokens + round(usage.sandbox_cpu_seconds * self.sandbox_cpu_second * MICROS))
        return min(total, int(MAX_MONEY * MICROS))


class InvalidPrices(Invalid):
    """The operator's price table cannot be read or holds a value no cost can be computed with."""


@lru_cache
def prices() -> PriceTable:
    """DEVART_PRICES (JSON) or the file DEVART_PRICES_FILE; the defaults otherwise.

    The API reads it as it starts (``api.main``): a table it cannot use stops it there with the reason, rather than
    failing every agent's report later.
    """
    source = settings.price_source()
    where = "DEVART_PRICES" if source.prices else f"DEVART_PRICES_FILE ({source.prices_file})"
    try:
        raw = source.prices or (source.prices_file.read_text() if source.prices_file else "")
        return PriceTable.model_validate_json(raw) if raw else PriceTable()
    except OSError as exc:
        raise InvalidPrices(f"the price table in {where} cannot be read: {exc.strerror or exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'the table'}: {e['msg']}" for e in exc.errors())
        raise InvalidPrices(f"the price table in {where} is not valid: {problems}") from exc


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
