"""The price table comes from DEVART_PRICES or DEVART_PRICES_FILE, read through the settings like the rest."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

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
