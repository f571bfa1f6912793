"""``devart github …``: the App manifest, and which pipeline each repository's pull requests run (administrator)."""

from __future__ import annotations

import json

import typer
from rich.markup import escape
from rich.table import Table

from devart.cli.output import api_call, console, err_console, fail

app = typer.Typer(no_args_is_help=True, help="GitHub: pull requests run pipelines, results come back as checks.")


def _path(repository: str) -> str:
    owner, _, repo = repository.strip("/").partition("/")
    if not owner or not repo or "/" in repo:
        fail(f"'{repository}' is not OWNER/REPO")
    return f"/v1/github/repositories/{owner}/{repo}"


def manifest(name: str, url: str, public: bool = False) -> dict[str, object]:
    """The GitHub App manifest: the permissions and events devart needs, and where GitHub delivers webhooks."""
    from devart.github.client import APP_EVENTS, APP_PERMISSIONS  # with githubkit: loaded only by the command using it

    base = url.rstrip("/")
    return {
        "name": name,
        "url": base,
        "hook_attributes": {"url": f"{base}/v1/github/webhook", "active": True},
        "public": public,
        "default_permissions": dict(APP_PERMISSIONS),
        "default_events": list(APP_EVENTS),
    }


@app.command("setup")
def setup(name: str = typer.Option("devart", help="The App's name on GitHub (must be unique there)."),
          url: str = typer.Option("", help="devart's public URL (default: DEVART_GITHUB_PUBLIC_URL or the API's)."),
          public: bool = typer.Option(False, help="Let other accounts install the App.")) -> None:
    """Print the GitHub App manifest (JSON on stdout; the steps to use it on stderr)."""
    from devart.core import settings
    from devart.github.client import settings as github_settings

    base = url or github_settings().public_url or settings.api().url
    console.print_json(json.dumps(manifest(name, base, public)))
    err_console.print(
        "Create the App from this manifest (Settings → Developer settings → GitHub Apps → New, or POST it to "
        "https://github.com/settings/apps/new), generate a private key and a webhook secret, install the App on "
        "your repositories, then set on the API and the pipeline worker:\n"
        "  DEVART_GITHUB_APP_ID, DEVART_GITHUB_PRIVATE_KEY_PATH, DEVART_GITHUB_WEBHOOK_SECRET\n"
        "(or DEVART_GITHUB_TOKEN instead of the App), DEVART_GITHUB_API_URL for GitHub Enterprise, and map "
        "each repository: devart github map OWNER/REPO PIPELINE", highlight=False)


@app.command("map")
def map_repository(repository: str = typer.Argument(..., help="OWNER/REPO"),
                   pipeline: str = typer.Argument(..., help="Pipeline its pull requests run."),
                   clone_url: str = typer.Option(None, help="Clone from here instead of the PR head's URL.")) -> None:
    """Run PIPELINE on every pull request of OWNER/REPO (opened, pushed to, reopened)."""
    done = api_call("PUT", _path(repository), json={"pipeline": pipeline, "clone_url": clone_url})
    console.print(f"{done['repository']} pull requests run pipeline {done['pipeline']}", highlight=False)


@app.command("unmap")
def unmap(repository: str = typer.Argument(..., help="OWNER/REPO")) -> None:
    """Stop running a pipeline for OWNER/REPO's pull requests."""
    api_call("DELETE", _path(repository))
    console.print(f"{repository} is no longer mapped", highlight=False)


@app.command("show")
def show(repository: str = typer.Argument(..., help="OWNER/REPO"),
         as_json: bool = typer.Option(False, "--json")) -> None:
    mapping = api_call("GET", _path(repository))
    if as_json:
        console.print_json(json.dumps(mapping))
        return
    console.print(f"{mapping['repository']} → {mapping['pipeline']}"
                  + (f" (clone {mapping['clone_url']})" if mapping["clone_url"] else ""), highlight=False)


@app.command("list")
def list_mappings(as_json: bool = typer.Option(False, "--json")) -> None:
    """Every mapped repository."""
    rows = api_call("GET", "/v1/github/repositories")
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table()
    for col in ("repository", "pipeline", "clone url", "updated"):
        table.add_column(col)
    for m in rows:
        table.add_row(escape(m["repository"]), escape(m["pipeline"]), escape(m["clone_url"] or ""),
                      str(m["updated_at"])[:19])
    console.print(table)
