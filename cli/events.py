"""``devart events [--follow]``: the activity feed in the terminal."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.markup import escape

from cli.output import api_call, console, fail


def _line(event: dict[str, Any]) -> str:
    where = "/".join(p for p in (event.get("run_id"), event.get("stage")) if p)
    who = f" @{event['agent']}" if event.get("agent") else ""
    return f"{event['created_at'][11:19]} #{event['id']} {event['kind']:<24} {where}{who} {event['message']}"


def events(
    run: str | None = typer.Option(None, "--run", help="Only this run."),
    pipeline: str | None = typer.Option(None, help="Only runs of this pipeline."),
    agent: str | None = typer.Option(None, help="Only this agent."),
    kind: str | None = typer.Option(None, help="Only this kind (or prefix, e.g. stage)."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep streaming new events."),
    after: int = typer.Option(0, help="Start after this event id."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """Show the activity feed; with --follow, stream it live (resuming after a dropped connection)."""
    import httpx

    from core import settings

    params = {k: v for k, v in {"run_id": run, "pipeline": pipeline, "agent": agent, "kind": kind}.items() if v}
    show = (lambda e: print(json.dumps(e))) if as_json else (lambda e: console.print(escape(_line(e)), highlight=False))  # noqa: T201
    if not follow:
        for event in api_call("GET", "/v1/events", params={**params, "after": after, "limit": 1000}):
            show(event)
        return
    last = after
    url = settings.api().url.rstrip("/") + "/v1/events/stream"
    while True:
        try:
            with httpx.stream("GET", url, params=params, headers={"Last-Event-ID": str(last)}, timeout=None) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        event = json.loads(line[6:])
                        last = event["id"]
                        show(event)
        except httpx.TransportError:
            fail(f"the devart API is not reachable at {settings.api().url} (resume with --after {last})", 2)
        except KeyboardInterrupt:
            raise typer.Exit(0) from None
