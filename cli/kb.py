"""``devart kb …``: the organisation's knowledge base of failures, remedies and guidance, through the API.

``search`` finds what helped with failures like a text; ``list`` and ``show`` read entries and their record;
``add`` writes a supervisor's remedy or guidance for a failure kind; ``reembed`` (administrator) moves every entry
to the configured embedding model, one bounded request at a time so no request outlives the client's timeout.
"""

from __future__ import annotations

import json
from typing import Any

import typer

from devart.cli.identity import JSON_OPTION, _print_json, _table
from devart.cli.output import api_call, console, fail
from devart.cli.runs import _params

app = typer.Typer(no_args_is_help=True,
                  help="The knowledge base: past failures, the remedies and guidance that fixed them, their record.")

def _record(item: dict[str, Any]) -> str:
    record = item["record"]
    return f"{record['succeeded']}/{record['applied']} worked, suggested {record['suggested']}"


def _what(item: dict[str, Any]) -> str:
    """The remedy with its parameters, and/or the start of the guidance."""
    parts = []
    if item.get("remedy"):
        params = ", ".join(f"{k}={v}" for k, v in (item.get("parameters") or {}).items())
        parts.append(f"{item['remedy']}({params})" if params else item["remedy"])
    if item.get("guidance"):
        guidance = item["guidance"]
        parts.append(guidance if len(guidance) <= 60 else guidance[:57] + "...")
    return "; ".join(parts) or "(no remedy yet)"


def _param_values(pairs: list[str]) -> dict[str, Any]:
    """``--param key=value`` pairs as a mapping; a value that reads as JSON (a number, true, a list) is taken as
    such, so ``--param memory_mb=8192`` is a number for the remedy."""
    parsed: dict[str, Any] = {}
    for key, value in _params(pairs).items():
        try:
            parsed[key] = json.loads(value)
        except ValueError:
            parsed[key] = value
    return parsed


@app.command()
def search(
    text: str = typer.Argument(..., help="A failure's message or log line, or a description of it."),
    k: int = typer.Option(5, "-k", min=1, max=50, help="How many hints."),
    as_json: bool = JSON_OPTION,
) -> None:
    """The entries most similar to TEXT that have a remedy or guidance, best first (similarity × success rate)."""
    hints = api_call("GET", "/v1/knowledge/search", params={"q": text, "k": k})
    if as_json:
        _print_json(hints)
        return
    if not hints:
        console.print("nothing in the knowledge base is like that yet")
        return
    _table(("id", "score", "similarity", "failure", "what to do", "record"),
           [(str(h["entry_id"]), f"{h['score']:.3f}", "exact" if h["exact"] else f"{h['similarity']:.3f}",
             f"{h['error_type']} in {h['skill']}: {h['message'][:60]}", _what(h), _record(h)) for h in hints])


@app.command("list")
def list_entries(
    skill: str | None = typer.Option(None, "--skill", help="Only this skill's failures."),
    remedy: str | None = typer.Option(None, "--remedy", help="Only entries with this remedy."),
    limit: int = typer.Option(50, "--limit", min=1, max=500),
    before: int | None = typer.Option(None, "--before", help="Entries older than this id (the next page)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """The organisation's entries, newest first, with their record."""
    params: dict[str, Any] = {"limit": limit}
    for key, value in (("skill", skill), ("remedy", remedy), ("before", before)):
        if value is not None:
            params[key] = value
    rows = api_call("GET", "/v1/knowledge", params=params)
    if as_json:
        _print_json(rows)
        return
    _table(("id", "failure", "what to do", "source", "record", "model"),
           [(str(e["id"]), f"{e['error_type']} in {e['skill']}: {e['message'][:60]}", _what(e),
             e["source"] if e["source"] == "written" else f"learned ({e['run_id'] or '-'} #{e['attempt'] or '-'})",
             _record(e), e["model"]) for e in rows])


@app.command()
def show(entry_id: int = typer.Argument(..., min=1), as_json: bool = JSON_OPTION) -> None:
    """One entry: its normalised signature, context, remedy, guidance, origin and record."""
    entry = api_call("GET", f"/v1/knowledge/{entry_id}")
    if as_json:
        _print_json(entry)
        return
    origin = (f"written by {entry['author']}" if entry["source"] == "written"
              else f"learned from run {entry['run_id']} attempt {entry['attempt']}")
    lines = [f"entry {entry['id']}: {entry['error_type']} in {entry['skill']} ({origin})",
             f"message:  {entry['message']}"]
    if entry["log_tail"]:
        lines.append(f"log tail: {entry['log_tail']}")
    if entry["context"]:
        lines.append(f"context:  {json.dumps(entry['context'])}")
    lines += [f"remedy:   {entry['remedy'] or '-'} {json.dumps(entry['parameters']) if entry['parameters'] else ''}",
              f"guidance: {entry['guidance'] or '-'}",
              f"record:   {_record(entry)} (success rate {entry['success_rate']:.2f}); seen {entry['seen']} times",
              f"model:    {entry['model']}; digest {entry['digest'][:16]}"]
    for line in lines:
        console.print(line, highlight=False, markup=False)


@app.command()
def add(
    skill: str = typer.Option(..., "--skill", help="The skill that fails so, e.g. test."),
    error_type: str = typer.Option(..., "--error-type", help="e.g. OutOfMemory, TestFailed."),
    message: str = typer.Option(..., "--message", help="The failure's message (paths, numbers, hashes stripped)."),
    log_tail: str = typer.Option("", "--log-tail", help="The end of the failing command's log."),
    remedy: str | None = typer.Option(None, "--remedy", help="A named remedy, e.g. more_memory."),
    param: list[str] = typer.Option([], "--param", help="A remedy parameter as key=value (repeatable)."),
    guidance: str | None = typer.Option(None, "--guidance", help="What to do, for a person or an agent's model."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Write a remedy and/or guidance for a failure kind (supervisor); similar failures get it as a hint."""
    if remedy is None and not guidance:
        fail("say what to do: give --remedy, --guidance or both")
    body = {"skill": skill, "error_type": error_type, "message": message, "log_tail": log_tail, "remedy": remedy,
            "parameters": _param_values(param), "guidance": guidance}
    entry = api_call("POST", "/v1/knowledge", json=body)
    if as_json:
        _print_json(entry)
        return
    console.print(f"entry {entry['id']} added: {entry['error_type']} in {entry['skill']} -> {_what(entry)}",
                  highlight=False, markup=False)


@app.command()
def reembed(
    batch: int = typer.Option(64, "--batch", min=1, max=2048, help="Entries per call to the embedding model."),
    step: int = typer.Option(1000, "--step", min=1, max=100_000, help="Entries moved per request."),
) -> None:
    """Move every entry to the configured embedding model (administrator), then build its index."""
    moved = 0
    while True:
        done = api_call("POST", "/v1/knowledge/reembed", json={"batch": batch, "limit": step})
        moved += done["moved"]
        if done["remaining"] == 0:
            break
        console.print(f"{moved} entries moved to {done['model']}, {done['remaining']} to go")
        if done["moved"] == 0:
            fail(f"no progress: {done['remaining']} entries remain under another model")
    console.print(f"{moved} entries moved; every entry is under {done['model']} ({done['dimension']} dimensions), "
                  f"index {done['index']}")
