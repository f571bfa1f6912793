"""The price table comes from DEVART_PRICES or DEVART_PRICES_FILE, read through the settings like the rest."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from devart.api.main import create_app
from devart.core import settings
from devart.core.contracts import Usage
from devart.domain import costs


@pytest.fixture(autouse=True)
def _fresh_table() -> Iterator[None]:
    settings.price_source.cache_clear()
    costs.prices.cache_clear()
    yield
    settings.price_source.cache_clear()
    costs.prices.cache_clear()


def test_inline_json_wins_over_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    table = tmp_path / "prices.json"
    table.write_text(json.dumps({"models": {"m": 1.0}}))
    monkeypatch.delenv("DEVART_PRICES", raising=False)  # the session's stack sets one
    monkeypatch.setenv("DEVART_PRICES_FILE", str(table))
    assert costs.prices().cost_micros(Usage(model_tokens={"m": 1000})) == 1_000_000
    settings.price_source.cache_clear()
    costs.prices.cache_clear()
    monkeypatch.setenv("DEVART_PRICES", json.dumps({"models": {"m": 3.0}}))
    assert costs.prices().cost_micros(Usage(model_tokens={"m": 1000})) == 3_000_000


def test_defaults_without_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEVART_PRICES", raising=False)
    monkeypatch.delenv("DEVART_PRICES_FILE", raising=False)
    assert costs.prices() == costs.PriceTable()


def test_a_cost_always_fits_its_column() -> None:
    from devart.core.bounds import INT8_MAX, MAX_MONEY
    from devart.core.contracts import MAX_TOKENS

    # The most usage an agent may report, at a price far beyond any model's, is held to the largest amount
    table = costs.PriceTable(models={f"m{i}": 1e9 for i in range(50)})
    usage = Usage(model_tokens={f"m{i}": MAX_TOKENS for i in range(50)})
    assert table.cost_micros(usage) == int(MAX_MONEY * costs.MICROS) < INT8_MAX
    # And an ordinary report is priced exactly
    assert costs.PriceTable(models={"m": 2.0}).cost_micros(Usage(model_tokens={"m": 1500})) == 3_000_000


@pytest.mark.parametrize(("table", "needle"), [
    ({"models": {"m": -1.0}}, "models.m: Input should be greater than or equal to 0"),
    ({"sandbox_cpu_second": float("inf")}, "sandbox_cpu_second: Input should be a finite number"),
    ({"default_per_1k_tokens": float("nan")}, "default_per_1k_tokens: Input should be a finite number"),
    ({"default_per_1k": 0.5}, "default_per_1k: Extra inputs are not permitted"),
    ({"models": {"m": "cheap"}}, "models.m: Input should be a valid number"),
])
def test_a_price_no_cost_can_be_computed_with_is_refused_with_its_place(
        monkeypatch: pytest.MonkeyPatch, table: dict[str, object], needle: str) -> None:
    # Given an operator's table with a negative, endless, unknown or unreadable price (NaN and Infinity as Python's
    # JSON writes them)
    monkeypatch.setenv("DEVART_PRICES", json.dumps(table))
    # Then reading it fails naming the setting, the key and the problem
    with pytest.raises(costs.InvalidPrices, match="the price table in DEVART_PRICES is not valid") as refused:
        costs.prices()
    assert needle in str(refused.value)


def test_a_price_file_that_cannot_be_read_or_parsed_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    monkeypatch.delenv("DEVART_PRICES", raising=False)
    monkeypatch.setenv("DEVART_PRICES_FILE", str(tmp_path / "missing.json"))
    with pytest.raises(costs.InvalidPrices, match=r"missing\.json\) cannot be read: No such file or directory"):
        costs.prices()
    settings.price_source.cache_clear()
    (tmp_path / "broken.json").write_text('{"models": ')
    monkeypatch.setenv("DEVART_PRICES_FILE", str(tmp_path / "broken.json"))
    with pytest.raises(costs.InvalidPrices, match=r"broken\.json\) is not valid: the table: Invalid JSON"):
        costs.prices()


async def test_the_api_does_not_start_with_a_price_table_it_cannot_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVART_PRICES", json.dumps({"models": {"m": -0.5}}))
    app = create_app()
    with pytest.raises(costs.InvalidPrices, match="models.m: Input should be greater than or equal to 0"):
        async with app.router.lifespan_context(app):
            pass
