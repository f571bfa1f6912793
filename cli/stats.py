"""``devart stats``: analytics in the terminal, and a PNG chart of duration and cost over time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from devart.cli.output import api_call, console, fail

#: Width of the terminal bar chart, in characters.
BAR_WIDTH = 40


def stats(
    pipeline: str | None = typer.Option(None, help="Only this pipeline."),
    plot: Path | None = typer.Option(None, "--plot", help="Write a PNG chart of duration and cost per run."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Runs, success rates, stage p50/p95, retries, costs, agents and the slowest stages."""
    data = api_call("GET", "/v1/analytics", params={"pipeline": pipeline} if pipeline else {})
    if as_json:
        console.print_json(json.dumps(data))
        return
    table = Table(title="pipelines")
    for col in ("pipeline", "runs", "success", "retries", "stage p50 / p95 (s)"):
        table.add_column(col)
    for p in data["pipelines"]:
        stages = ", ".join(f"{s} {v['p50']:.2f}/{v['p95']:.2f}" for s, v in p["stages"].items())
        table.add_row(p["pipeline"], str(p["runs"]), f"{p['success_rate']:.0%}", str(p["retries"]), stages)
    console.print(table)
    agents = Table(title="agents and skills")
    for col in ("agent", "skill", "tasks", "success", "mean s", "cost"):
        agents.add_column(col)
    for a in data["agents"]:
        agents.add_row(a["agent"], a["skill"], str(a["tasks"]), f"{a['success_rate']:.0%}",
                       f"{a['mean_seconds']:.2f}", f"{a['cost']:.4f}")
    console.print(agents)
    for p in data["pipelines"]:
        _terminal_chart(p)
    if plot is not None:
        _png(data["pipelines"], plot)
        console.print(f"chart written to {plot}")


def _terminal_chart(p: dict[str, Any]) -> None:
    runs = [r for r in p["cost_per_run"] if r["seconds"] is not None][-15:]
    if not runs:
        return
    longest = max(r["seconds"] for r in runs) or 1.0
    console.print(f"[bold]{p['pipeline']}[/]: duration of the last {len(runs)} runs")
    for r in runs:
        bar = "█" * max(1, round(r["seconds"] / longest * BAR_WIDTH))
        console.print(f"  {r['at'][5:16]} {bar} {r['seconds']:.1f}s  cost {r['cost']:.4f}", highlight=False)


def _png(pipelines: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        fail("--plot needs matplotlib: pip install 'devart[dev]' or pip install matplotlib")
    from datetime import datetime

    fig, (ax_time, ax_cost) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for p in pipelines:
        runs = [r for r in p["cost_per_run"] if r["seconds"] is not None]
        when = [datetime.fromisoformat(r["at"]) for r in runs]
        ax_time.plot(when, [r["seconds"] for r in runs], marker="o", label=p["pipeline"])
        ax_cost.plot(when, [r["cost"] for r in runs], marker="o", label=p["pipeline"])
    ax_time.set_ylabel("duration (s)")
    ax_cost.set_ylabel("cost")
    ax_time.legend(loc="upper left", fontsize="small")
    ax_time.set_title("devart runs: duration and cost over time")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
