"""``devart events [--follow]``: the activity feed in the terminal."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from devart.cli.output import api_call, auth_headers, console, err_console, fail

if TYPE_CHECKING:
    import httpx


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

    from devart.core import settings

    params = {k: v for k, v in {"run_id": run, "pipeline": pipeline, "agent": agent, "kind": kind}.items() if v}
    show = (lambda e: print(json.dumps(e))) if as_json else (lambda e: console.print(escape(_line(e)), highlight=False))  # noqa: T201
    if not follow:
        for event in api_call("GET", "/v1/events", params={**params, "after": after, "limit": 1000}):
            show(event)
        return
    last = after
    url = settings.api().url.rstrip("/") + "/v1/events/stream"
    authorization = auth_headers()  # found once: a resumed stream keeps the same caller
    while True:
        try:
            headers = {**authorization, "Last-Event-ID": str(last)}
            with httpx.stream("GET", url, params=params, headers=headers, timeout=None) as r:
                if r.status_code != 200:
                    _wait_or_fail(r)
                    continue
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        event = json.loads(line[6:])
                        last = event["id"]
                        show(event)
        except httpx.TransportError:
            fail(f"the devart API is not reachable at {settings.api().url} (resume with --after {last})", 2)
        except KeyboardInterrupt:
            raise typer.Exit(0) from None


#: Seconds to wait before asking for a stream again when the API is busy and says nothing of when to come back.
BUSY_WAIT = 5.0


def _wait_or_fail(response: httpx.Response) -> None:
    """A refused stream: wait as long as the API asks (429 past the stream caps, 503 while the feed is
    unavailable) and try again, rather than asking again at once; any other answer is an error line."""
    import time

    response.read()
    if response.status_code in (429, 503):
        retry_after = response.headers.get("Retry-After", "")
        wait = float(retry_after) if retry_after.isdigit() else BUSY_WAIT
        err_console.print(f"[yellow]the API refused the stream ({response.status_code}): "
                          f"trying again in {wait:.0f} s[/]")
        time.sleep(wait)
        return
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    fail(f"the event stream was refused ({response.status_code}): {detail}", 1)
