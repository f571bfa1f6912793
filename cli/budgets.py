"""``devart budgets …`` and ``devart costs``: spending limits and totals (supervisor to change)."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from devart.cli.output import api_call, console

app = typer.Typer(no_args_is_help=True, help="Budgets per pipeline or repository (supervisor).")


@app.command("set")
def set_budget(
    scope: str = typer.Argument(..., help="pipeline or repository"),
    name: str = typer.Argument(..., help="The pipeline name or repository path/URL."),
    soft: float | None = typer.Option(None, help="Alert and pause runs for approval at this spend."),
    hard: float | None = typer.Option(None, help="Stop runs at this spend."),
) -> None:
    """Set or raise a budget (paused runs notice a raised budget on their next check)."""
    budget = api_call("PUT", f"/v1/budgets/{scope}/{name}", json={"soft_limit": soft, "hard_limit": hard})
    console.print(f"budget for {scope} {name}: soft {budget['soft_limit']}, hard {budget['hard_limit']}, "
                  f"spent {budget['spent']:.6f}")


@app.command("list")
def list_budgets(as_json: bool = typer.Option(False, "--json")) -> None:
    rows = api_call("GET", "/v1/budgets")
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table()
    for col in ("scope", "name", "soft", "hard", "spent"):
        table.add_column(col)
    for b in rows:
        table.add_row(b["scope"], b["name"], str(b["soft_limit"]), str(b["hard_limit"]), f"{b['spent']:.6f}")
    console.print(table)


@app.command("remove")
def remove(scope: str, name: str) -> None:
    api_call("DELETE", f"/v1/budgets/{scope}/{name}")
    console.print(f"budget for {scope} {name} removed")


def costs(
    group: str = typer.Option("pipeline", help="pipeline, repository, run or stage"),
    run: str | None = typer.Option(None, "--run", help="Only this run (with --group stage)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Cost totals under the price table."""
    rows = api_call("GET", "/v1/costs", params={"group": group, **({"run_id": run} if run else {})})
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table()
    for col in (group, "runs", "cost"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["key"]), str(r["runs"]), f"{r['cost']:.6f}")
    console.print(table)
