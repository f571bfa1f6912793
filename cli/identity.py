"""``devart login|logout|whoami``, ``devart orgs …``, ``devart users …``, ``devart tokens …`` and ``devart audit``.

Every call carries a personal token bound to one organisation; ``login`` checks one against the API and keeps it
for that API's URL in a file only its owner can read (``output.credentials_path``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from devart.cli.output import api_call, api_url, console, credentials_path, fail, saved_tokens

orgs_app = typer.Typer(no_args_is_help=True, help="Organisations you belong to; admins create new ones.")
users_app = typer.Typer(no_args_is_help=True, help="Members of the token's organisation and their roles (admin).")
tokens_app = typer.Typer(no_args_is_help=True, help="Personal API tokens: create, list, revoke.")


class Role(StrEnum):
    """The roles of ``domain.identity.Role``, repeated here so the CLI offers them as choices without loading it."""

    viewer = "viewer"
    supervisor = "supervisor"
    admin = "admin"


JSON_OPTION = typer.Option(False, "--json", help="Print JSON (for scripts).")
NO_EXPIRY = typer.Option(False, "--no-expiry", help="The token never expires (revoke it when done).")


def _print_json(value: Any) -> None:
    console.print_json(json.dumps(value, default=str))


def _table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """A plain table of already-formatted cells (escaped, as names may hold brackets)."""
    table = Table()
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)


def _listing(path: str, columns: tuple[str, ...], row: Callable[[dict[str, Any]], tuple[str, ...]],
             as_json: bool, params: dict[str, Any] | None = None) -> None:
    """GET a list from the API and print it as JSON or as a table of one ``row`` per item: every list command's
    shape."""
    rows = api_call("GET", path, params=params or {})
    if as_json:
        _print_json(rows)
        return
    _table(columns, [row(item) for item in rows])


def _when(value: str | None) -> str:
    return (value or "")[:19].replace("T", " ")


def _lifetime(days: int | None, no_expiry: bool, default: int | None = 90) -> int | None:
    """The days a new token lives: ``--no-expiry`` is none, else ``--days`` or the default; both is an error."""
    if no_expiry and days is not None:
        fail("give either a number of days or --no-expiry, not both")
    return None if no_expiry else (days if days is not None else default)


def _show_secret(token: str, what: str) -> None:
    """Print a new token by itself on a line (to copy), saying it cannot be shown again: only its hash is kept."""
    console.print(f"{what} (shown once, it will not be shown again; store it now):")
    console.print(token, highlight=False, markup=False, soft_wrap=True)


# --- login ---------------------------------------------------------------------------------------------------------


def _read_token(given: str | None) -> str:
    """The token to log in with: ``--token``, else stdin when it is piped, else a hidden prompt."""
    if given is None:
        given = sys.stdin.read() if not sys.stdin.isatty() else typer.prompt("personal token", hide_input=True)
    token = given.strip()
    if not token:
        fail("no token given: pass --token, pipe it on stdin, or type it at the prompt")
    return token


def _write_credentials(tokens: dict[str, str]) -> Path:
    """Replace the credentials file atomically with one created 0600 (in a folder created 0700): the token is
    never readable by others, not even between writing the file and a chmod."""
    path = credentials_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump({"tokens": tokens}, handle, indent=2)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def login(token: str | None = typer.Option(None, "--token", help="The token (default: prompt, or stdin).")) -> None:
    """Check a personal token against the API and save it for this API's URL; later commands use it."""
    secret = _read_token(token)
    me = api_call("GET", "/v1/me", token=secret)  # a refused token ends here, before anything is saved
    path = _write_credentials({**saved_tokens(), api_url(): secret})
    console.print(f"logged in to {api_url()} as {escape(me['user'])} · organisation {escape(me['org'])} · "
                  f"role {me['role']} (token saved in {path})", highlight=False)


def logout() -> None:
    """Forget the token saved for this API's URL (the token itself stays valid: revoke it with `devart tokens`)."""
    tokens = saved_tokens()
    if tokens.pop(api_url(), None) is None:
        console.print(f"no token saved for {api_url()}", highlight=False)
        return
    _write_credentials(tokens)
    console.print(f"logged out of {api_url()}", highlight=False)


def whoami(as_json: bool = JSON_OPTION) -> None:
    """The user and organisation of the token in use, its role, and every organisation the user belongs to."""
    me = api_call("GET", "/v1/me")
    if as_json:
        _print_json(me)
        return
    console.print(f"{escape(me['user'])} · organisation {escape(me['org'])} · role {me['role']}", highlight=False)
    others = [f"{o['id']} ({o['role']})" for o in me["orgs"] if o["id"] != me["org"]]
    if others:
        console.print("also member of: " + escape(", ".join(others)), highlight=False)


# --- organisations -------------------------------------------------------------------------------------------------


@orgs_app.command("list")
def list_orgs(as_json: bool = JSON_OPTION) -> None:
    """The organisations you belong to, with your role in each."""
    _listing("/v1/orgs", ("organisation", "name", "role", "Temporal namespace"),
             lambda o: (o["id"], o["name"], o["role"], o.get("temporal_namespace") or "(the deployment's)"), as_json)


@orgs_app.command("create")
def create_org(org_id: str = typer.Argument(..., metavar="ID", help="A slug: lower-case letters, digits and '-'."),
               name: str | None = typer.Option(None, "--name", help="Display name (default: the id)."),
               namespace: str | None = typer.Option(
                   None, "--temporal-namespace",
                   help="Run its workflows in this Temporal namespace of their own (set once, here).")) -> None:
    """Create an organisation with you as its first admin (needs admin); log in with a token issued there to use it."""
    org = api_call("POST", "/v1/orgs", json={"id": org_id, "name": name, "temporal_namespace": namespace})
    where = f" in Temporal namespace {escape(org['temporal_namespace'])}" if org.get("temporal_namespace") else ""
    console.print(f"organisation {escape(org['id'])} created{where}; you are its admin. A token there: "
                  f"`devart tokens create --org {escape(org['id'])}`", highlight=False)


@orgs_app.command("sources")
def org_sources(
    roots: list[str] = typer.Option(None, "--root", help="A folder its runs' local sources may come from (repeat)."),
    hosts: list[str] = typer.Option(None, "--host", help="A host its runs' remote sources may come from (repeat)."),
    clear: bool = typer.Option(False, "--clear", help="Narrow nothing: the operator's folders, any public host."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Show where the organisation's runs may take their sources from; with --root/--host/--clear, set it (admin)."""
    if clear or roots or hosts:
        policy = api_call("PUT", "/v1/orgs/current/sources", json={"roots": roots or [], "hosts": hosts or []})
    else:
        policy = api_call("GET", "/v1/orgs/current/sources")
    if as_json:
        _print_json(policy)
        return
    console.print("local folders: " + escape(", ".join(policy["roots"]) or "the operator's"), highlight=False)
    console.print("remote hosts: " + escape(", ".join(policy["hosts"]) or "any public host"), highlight=False)


# --- members -------------------------------------------------------------------------------------------------------


@users_app.command("list")
def list_users(as_json: bool = JSON_OPTION) -> None:
    """Members of the token's organisation."""
    _listing("/v1/users", ("user", "role", "since"), lambda u: (u["name"], u["role"], _when(u["created_at"])), as_json)


@users_app.command("add")
def add_user(
    name: str,
    role: Role = typer.Option(..., "--role", help="viewer, supervisor or admin."),
    token_days: int | None = typer.Option(None, "--token-days", min=1, help="First token's lifetime (default 90)."),
    no_expiry: bool = NO_EXPIRY,
    as_json: bool = JSON_OPTION,
) -> None:
    """Add a member to the token's organisation and print their first token once."""
    body = {"name": name, "role": role.value, "token_days": _lifetime(token_days, no_expiry)}
    created = api_call("POST", "/v1/users", json=body)
    if as_json:
        _print_json(created)
        return
    console.print(f"{escape(created['name'])} is now a {created['role']} of {escape(created['org'])}",
                  highlight=False)
    _show_secret(created["token"], "their first token")


@users_app.command("role")
def change_role(name: str, role: Role = typer.Argument(..., help="viewer, supervisor or admin.")) -> None:
    """Change a member's role; it applies from their next request."""
    member = api_call("PUT", f"/v1/users/{name}", json={"role": role.value})
    console.print(f"{escape(member['name'])} is now a {member['role']}", highlight=False)


@users_app.command("remove")
def remove_user(name: str) -> None:
    """Remove a member from the organisation; their tokens for it stop working at once."""
    api_call("DELETE", f"/v1/users/{name}")
    console.print(f"{escape(name)} removed", highlight=False)


# --- tokens --------------------------------------------------------------------------------------------------------


@tokens_app.command("list")
def list_tokens(everyone: bool = typer.Option(False, "--all", help="Every member's tokens (admin)."),
                as_json: bool = JSON_OPTION) -> None:
    """Your tokens in this organisation (with --all, everyone's); only a prefix of each is known."""
    _listing("/v1/tokens", ("id", "name", "prefix", "user", "created", "expires", "last used", "active"), _token_row,
             as_json, {"all": "true"} if everyone else None)


def _token_row(t: dict[str, Any]) -> tuple[str, ...]:
    state = "yes" if t["active"] else ("revoked" if t["revoked_at"] else "expired")
    return (str(t["id"]), t["name"], t["prefix"] + "…", t["user"], _when(t["created_at"]),
            _when(t["expires_at"]) or "never", _when(t["last_used_at"]), state)


@tokens_app.command("create")
def create_token(
    name: str = typer.Option("cli", "--name", help="What the token is for."),
    org: str | None = typer.Option(None, "--org", help="Another organisation you belong to (default: this one)."),
    days: int | None = typer.Option(None, "--days", min=1, help="Lifetime in days (default 90)."),
    no_expiry: bool = NO_EXPIRY,
    as_json: bool = JSON_OPTION,
) -> None:
    """A new personal token of yours in this organisation (or, with --org, another of yours), printed once."""
    body = {"name": name, "days": _lifetime(days, no_expiry), **({"org": org} if org else {})}
    created = api_call("POST", "/v1/tokens", json=body)
    if as_json:
        _print_json(created)
        return
    expiry = f"expires {_when(created['expires_at'])}" if created["expires_at"] else "never expires"
    console.print(f"token {created['id']} ({escape(created['name'])}) {expiry}", highlight=False)
    _show_secret(created["token"], "the token")


@tokens_app.command("revoke")
def revoke_token(token_id: int = typer.Argument(..., metavar="ID", help="From `devart tokens list`.")) -> None:
    """Revoke a token (yours; an admin: anyone's in the organisation); it is refused from the next request."""
    api_call("DELETE", f"/v1/tokens/{token_id}")
    console.print(f"token {token_id} revoked", highlight=False)


# --- audit ---------------------------------------------------------------------------------------------------------


def audit(
    limit: int = typer.Option(50, "--limit", min=1, max=1000),
    user: str | None = typer.Option(None, "--user", help="Only this user's writes."),
    before: int | None = typer.Option(None, "--before", min=1, help="Entries older than this id (to page)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """The organisation's writes through the API, newest first, with who made them and the answer (admin)."""
    params = {k: v for k, v in {"limit": limit, "user": user, "before": before}.items() if v is not None}
    _listing("/v1/audit", ("id", "at", "user", "role", "method", "route", "status"),
             lambda e: (str(e["id"]), _when(e["at"]), e["user"], e["role"], e["method"], e["route"], str(e["status"])),
             as_json, params)
