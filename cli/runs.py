"""``devart run`` and ``devart runs list|show|cancel``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from cli.output import api_call, console, fail
from core import telemetry

runs_app = typer.Typer(no_args_is_help=True, help="List, inspect and cancel runs.")

STYLE = {
    "succeeded": "green",
    "failed": "red",
    "running": "yellow",
    "pending": "dim",
    "skipped": "dim",
    "cancelled": "magenta",
}
#: How often ``--wait`` polls the API for stage states.
POLL_SECONDS = 0.5


def _repo_argument(repo: str) -> str:
    """Local paths are sent absolute (the API and worker may run elsewhere on this machine)."""
    if "://" in repo or repo.startswith("git@"):
        return repo
    path = Path(repo).expanduser()
    if not path.is_dir():
        fail(f"repository path '{repo}' does not exist or is not a directory")
    return str(path.resolve())


def _params(values: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--param '{item}' must look like key=value")
        out[key] = value
    return out


def stage_table(run: dict[str, Any]) -> Table:
    table = Table(title=f"{run['pipeline']} · {run['run_id']} · [{STYLE.get(run['status'], '')}]{run['status']}[/]")
    for col in ("stage", "status", "attempts", "agent", "summary"):
        table.add_column(col)
    for s in run["stages"]:
        result = s.get("result") or {}
        summary = result.get("summary") or s.get("error") or s.get("waiting") or ""
        if s.get("warnings"):
            summary = f"[!] {'; '.join(s['warnings'])} · {summary}"
        table.add_row(
            s["name"],
            f"[{STYLE.get(s['status'], '')}]{s['status']}[/]",
            str(s.get("attempts") or len(s.get("attempt_log", [])) or ""),
            result.get("agent") or "",
            escape(summary[:100]),
        )
    return table


def run(
    pipeline: str = typer.Argument(..., help="Pipeline name, e.g. build-test-review."),
    repo: str = typer.Option(..., "--repo", help="Local path or git URL of the repository."),
    ref: str | None = typer.Option(None, "--ref", help="Branch, tag or commit."),
    param: list[str] = typer.Option([], "--param", "-p", help="Pipeline parameter key=value (repeatable)."),
    wait: bool = typer.Option(False, "--wait", "-w", help="Show live progress and wait for the result."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (for scripts)."),
    priority: int | None = typer.Option(
        None, "--priority", help="1 (lowest) to 5 (highest): order within a busy lane (default: the pipeline's)."
    ),
) -> None:
    """Start a pipeline run; with --wait, follow it and exit non-zero unless it succeeds."""
    if priority is not None and not 1 <= priority <= 5:
        fail(f"--priority must be from 1 (lowest) to 5 (highest), got {priority}")
    body = {"pipeline": pipeline, "repo": _repo_argument(repo), "ref": ref, "params": _params(param), "trigger": "cli",
            "priority": priority}
    telemetry.setup("devart-cli")
    HTTPXClientInstrumentor().instrument()
    with telemetry.tracer().start_as_current_span(f"devart run {pipeline}"):
        created = api_call("POST", "/v1/runs", json=body)
    telemetry.shutdown()
    if not wait:
        if as_json:
            console.print_json(json.dumps(created))
        else:
            console.print(f"started [bold]{created['run_id']}[/] · Web UI: {created['ui_url']}")
        return
    final = _follow(created["run_id"], quiet=as_json)
    if as_json:
        console.print_json(json.dumps(final, default=str))
    else:
        _print_results(final)
    raise typer.Exit(0 if final["status"] == "succeeded" else 1)


def _follow(run_id: str, quiet: bool) -> dict[str, Any]:
    current = api_call("GET", f"/v1/runs/{run_id}")
    if quiet:
        while current["status"] == "running":
            time.sleep(POLL_SECONDS)
            current = api_call("GET", f"/v1/runs/{run_id}")
        return dict(current)
    with Live(stage_table(current), console=console, refresh_per_second=4, transient=True) as live:
        while current["status"] == "running":
            time.sleep(POLL_SECONDS)
            current = api_call("GET", f"/v1/runs/{run_id}")
            live.update(stage_table(current))
    return dict(current)


def _print_results(run: dict[str, Any]) -> None:
    console.print(stage_table(run))
    for s in run["stages"]:
        output = (s.get("result") or {}).get("output") or {}
        figures = {k: v for k, v in output.items() if isinstance(v, int | float | str) and k != "attempt"}
        if figures:
            shown = ", ".join(f"{k}={v}" for k, v in list(figures.items())[:8])
            console.print(f"[bold]{s['name']}[/]: " + escape(shown))
        for finding in (output.get("findings") or [])[:10]:
            console.print(
                f"   {finding.get('file')}:{finding.get('line')} [{finding.get('severity')}] "
                f"{finding.get('rule', '')} {finding.get('message', '')}",
                highlight=False,
            )
    if run.get("error"):
        console.print(f"[red]{run['error']}[/]")
    console.print(f"Web UI: {run['ui_url']}")


@runs_app.command("list")
def list_runs(
    pipeline: str | None = typer.Option(None, help="Only this pipeline."),
    status: str | None = typer.Option(None, help="running, succeeded, failed or cancelled."),
    limit: int = typer.Option(20, min=1, max=500),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Recent runs, newest first."""
    params: dict[str, Any] = {
        "limit": limit,
        **({"pipeline": pipeline} if pipeline else {}),
        **({"status": status} if status else {}),
    }
    rows = api_call("GET", "/v1/runs", params=params)
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table()
    for col in ("run", "pipeline", "status", "trigger", "created", "error"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["run_id"],
            r["pipeline"],
            f"[{STYLE.get(r['status'], '')}]{r['status']}[/]",
            r["trigger"],
            str(r["created_at"])[:19],
            (r.get("error") or "")[:60],
        )
    console.print(table)


@runs_app.command("show")
def show(run_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """One run: stages, attempts, results and the Web UI link."""
    run_view = api_call("GET", f"/v1/runs/{run_id}")
    if as_json:
        console.print_json(json.dumps(run_view))
    else:
        _print_results(run_view)


@runs_app.command("cancel")
def cancel(run_id: str) -> None:
    """Cancel a running run: in-flight agent tasks stop and their sandboxes are removed."""
    api_call("POST", f"/v1/runs/{run_id}/cancel")
    console.print(f"cancelling {run_id}")


@runs_app.command("approve")
def approve(run_id: str) -> None:
    """Let a run paused on a soft budget limit go on (administrator)."""
    api_call("POST", f"/v1/runs/{run_id}/approve", admin=True)
    console.print(f"approved {run_id}")
