"""``devart run`` and ``devart runs list|show|cancel``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.live import Live
from rich.table import Table
from rich.text import Text

from devart.cli.output import api_call, console, fail
from devart.cli.run_view import LOG_LINES, STYLE, print_results, stage_table

runs_app = typer.Typer(no_args_is_help=True, help="List, inspect and cancel runs.")

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
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    from devart.core.telemetry import tracing as telemetry

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
            console.print(f"started {created['run_id']} · Web UI: {created['ui_url']}", soft_wrap=True, markup=False,
                          highlight=False)
        return
    final = _follow(created["run_id"], quiet=as_json)
    if as_json:
        console.print_json(json.dumps(final, default=str))
    else:
        print_results(console, final)
        if any(s.get("status") == "failed" for s in final.get("stages") or []):
            console.print(f"log tails: devart runs show {final['run_id']}", soft_wrap=True, markup=False,
                          highlight=False)
    raise typer.Exit(0 if final["status"] == "succeeded" else 1)


def _follow(run_id: str, quiet: bool) -> dict[str, Any]:
    current = api_call("GET", f"/v1/runs/{run_id}")
    if quiet:
        while current["status"] == "running":
            time.sleep(POLL_SECONDS)
            current = api_call("GET", f"/v1/runs/{run_id}")
        return dict(current)
    with Live(stage_table(current, console.width), console=console, refresh_per_second=4, transient=True) as live:
        while current["status"] == "running":
            time.sleep(POLL_SECONDS)
            current = api_call("GET", f"/v1/runs/{run_id}")
            live.update(stage_table(current, console.width))
    return dict(current)


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
    # Run ids are never cut: they are what `runs show` and `runs cancel` take. Other columns fold if need be.
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("run", no_wrap=True, min_width=max((len(r["run_id"]) for r in rows), default=3))
    table.add_column("status", no_wrap=True)
    for col in ("pipeline", "trigger", "created"):
        table.add_column(col, overflow="fold")
    table.add_column("error", overflow="fold", ratio=1)
    for r in rows:
        error = (r.get("error") or "").strip().splitlines()
        table.add_row(
            Text(r["run_id"]),
            Text(r["status"], style=STYLE.get(r["status"], "")),
            Text(r["pipeline"]),
            Text(r["trigger"]),
            str(r["created_at"])[:19].replace("T", " "),
            Text(error[0][:120] if error else ""),
        )
    console.print(table)


@runs_app.command("show")
def show(
    run_id: str,
    as_json: bool = typer.Option(False, "--json", help="Print the API's JSON (for scripts)."),
    logs: bool = typer.Option(False, "--logs", help="Show every stage's log tail (failed stages always show theirs)."),
    lines: int = typer.Option(LOG_LINES, "--lines", "-n", min=1, max=1000, help="Lines of each log tail."),
) -> None:
    """One run: stages, why any failed (failing tests, log tails), results and the Web UI link."""
    run_view = api_call("GET", f"/v1/runs/{run_id}")
    if as_json:
        console.print_json(json.dumps(run_view))
    else:
        print_results(console, run_view, logs="all" if logs else "failed", log_lines=lines)


@runs_app.command("cancel")
def cancel(run_id: str) -> None:
    """Cancel a running run: in-flight agent tasks stop and their sandboxes are removed."""
    api_call("POST", f"/v1/runs/{run_id}/cancel")
    console.print(f"cancelling {run_id}")


@runs_app.command("approve")
def approve(run_id: str) -> None:
    """Let a run paused on a soft budget limit go on (administrator)."""
    api_call("POST", f"/v1/runs/{run_id}/approve")
    console.print(f"approved {run_id}")
