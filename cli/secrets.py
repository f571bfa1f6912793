"""``devart secrets …``: the organisation's secret store (administrator). Values go in, never come back out.

A value is read from ``--value``, else from standard input when it is not a terminal (``vault read … | devart
secrets set TOKEN``), else from a hidden prompt: the last two keep it out of the shell's history and ``ps``.
"""

from __future__ import annotations

import json
import sys

import typer
from rich.table import Table

from devart.cli.output import api_call, console, fail

app = typer.Typer(no_args_is_help=True,
                  help="The organisation's secret store: stages use a secret as `secrets: {VAR: secret:NAME}`.")


def _value(given: str | None) -> str:
    if given is not None:
        return given
    if not sys.stdin.isatty():
        text = sys.stdin.read()
        return text[:-1] if text.endswith("\n") else text  # `echo x |` adds a newline the secret does not hold
    return str(typer.prompt("value", hide_input=True))


@app.command("set")
def set_secret(
    name: str = typer.Argument(..., help="The secret's name, like a variable's: letters, digits and '_'."),
    value: str | None = typer.Option(None, "--value", help="The value (else standard input, else a hidden prompt)."),
) -> None:
    """Create or replace a secret; it is stored encrypted and never shown again."""
    text = _value(value)
    if not text:
        fail("a secret's value cannot be empty")
    api_call("PUT", f"/v1/secrets/{name}", json={"value": text})
    console.print(f"secret {name} set; stages use it as secrets: {{VAR: secret:{name}}}")


@app.command("list")
def list_secrets(as_json: bool = typer.Option(False, "--json")) -> None:
    """The organisation's secrets: names and when they were written (never values)."""
    rows = api_call("GET", "/v1/secrets")
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table()
    for col in ("name", "updated", "by", "created"):
        table.add_column(col)
    for s in rows:
        table.add_row(s["name"], s["updated_at"], s["updated_by"], s["created_at"])
    console.print(table)


@app.command("remove")
def remove(name: str) -> None:
    """Delete a secret; stages naming it fail (SecretMissing) from then on."""
    api_call("DELETE", f"/v1/secrets/{name}")
    console.print(f"secret {name} removed")


@app.command("keygen")
def keygen() -> None:
    """Print a new key for DEVART_SECRETS_KEY (keep it: secrets written under a key are unreadable without it)."""
    from devart.domain.secrets import keygen as new_key

    typer.echo(new_key())
