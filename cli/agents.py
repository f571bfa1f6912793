"""``devart agents …`` (the registry) and ``devart dlq …``."""

from __future__ import annotations

import json

import typer
from rich.markup import escape
from rich.table import Table

from devart.cli.output import api_call, console

app = typer.Typer(no_args_is_help=True,
                  help="The agent registry (admins register agents and keys; supervisors activate and deactivate).")
dlq_app = typer.Typer(no_args_is_help=True, help="Dead-lettered task messages (supervisors redrive; admins purge).")


def _caps(value: str) -> list[str]:
    return [c.strip() for c in value.split(",") if c.strip()]


@app.command("create")
def create(name: str, capabilities: str = typer.Option(..., help="Comma-separated, e.g. python,test."),
           owner: str = typer.Option("admin")) -> None:
    """Register an agent and print its key once (only a hash is stored)."""
    created = api_call("POST", "/v1/agents",
                       json={"name": name, "capabilities": _caps(capabilities), "owner": owner})
    console.print(f"agent {name} registered; its key (shown once, store it now):")
    console.print(created["key"], highlight=False)


@app.command("list")
def list_agents(as_json: bool = typer.Option(False, "--json")) -> None:
    rows = api_call("GET", "/v1/agents")
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table()
    for col in ("agent", "active", "status", "capabilities", "current task", "last seen"):
        table.add_column(col)
    for a in rows:
        active = "yes" if a["active"] else "[red]no[/]"
        table.add_row(a["name"], active, a["status"], escape(",".join(a["capabilities"])), a["current_task"] or "",
                      str(a["last_seen_at"] or "")[:19])
    console.print(table)


@app.command("show")
def show(name: str, as_json: bool = typer.Option(False, "--json")) -> None:
    agent = api_call("GET", f"/v1/agents/{name}")
    if as_json:
        console.print_json(json.dumps(agent))
        return
    console.print(f"[bold]{agent['name']}[/] · {'active' if agent['active'] else 'inactive'} · {agent['status']} · "
                  f"key {agent['key_prefix']}… · " + escape(",".join(agent["capabilities"])))
    table = Table(title="skills")
    for col in ("skill", "tasks", "success rate", "mean s", "cost"):
        table.add_column(col)
    for s in agent["stats"]:
        table.add_row(s["skill"], str(s["tasks"]), f"{s['success_rate']:.0%}", f"{s['mean_seconds']:.2f}",
                      f"{s['cost']:.4f}")
    console.print(table)


@app.command("activate")
def activate(name: str) -> None:
    api_call("POST", f"/v1/agents/{name}/activate")
    console.print(f"agent {name} activated")


@app.command("deactivate")
def deactivate(name: str, handback: bool = typer.Option(False, help="Hand the current task back now.")) -> None:
    """Stop the agent taking tasks (within seconds); it finishes its current task unless --handback."""
    api_call("POST", f"/v1/agents/{name}/deactivate", params={"handback": handback})
    console.print(f"agent {name} deactivated")


@app.command("rotate-key")
def rotate_key(name: str) -> None:
    """Issue a new key (printed once); the old one stops working at once."""
    created = api_call("POST", f"/v1/agents/{name}/rotate-key")
    console.print(f"new key for {name} (shown once):")
    console.print(created["key"], highlight=False)


@app.command("remove")
def remove(name: str) -> None:
    api_call("DELETE", f"/v1/agents/{name}")
    console.print(f"agent {name} removed")


@dlq_app.command("list")
def dlq_list(all_letters: bool = typer.Option(False, "--all", help="Include redriven ones."),
             as_json: bool = typer.Option(False, "--json")) -> None:
    rows = api_call("GET", "/v1/dlq", params={"include_redriven": all_letters})
    if as_json:
        console.print_json(json.dumps(rows, default=str))
        return
    table = Table()
    for col in ("id", "lane", "reason", "created", "redriven"):
        table.add_column(col)
    for d in rows:
        table.add_row(str(d["id"]), d["lane"] or "", escape(d["reason"]), str(d["created_at"])[:19],
                      str(d["redriven_at"] or "")[:19])
    console.print(table)


@dlq_app.command("show")
def dlq_show(letter_id: int) -> None:
    console.print_json(json.dumps(api_call("GET", f"/v1/dlq/{letter_id}"), default=str))


@dlq_app.command("redrive")
def dlq_redrive(letter_id: int) -> None:
    """Send the message back to its lane."""
    done = api_call("POST", f"/v1/dlq/{letter_id}/redrive")
    console.print(f"dead letter {letter_id} sent back to lane {done['lane']}")


@dlq_app.command("purge")
def dlq_purge(yes: bool = typer.Option(False, "--yes", help="Do not ask.")) -> None:
    if not yes:
        typer.confirm("Delete every dead letter?", abort=True)
    done = api_call("DELETE", "/v1/dlq")
    console.print(f"{done['purged']} dead letters purged")
