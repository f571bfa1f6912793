"""``devart pipelines list|validate``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from devart.cli.output import api_call, console, fail

app = typer.Typer(no_args_is_help=True, help="Pipeline templates.")


@app.command("list")
def list_pipelines(as_json: bool = typer.Option(False, "--json")) -> None:
    """Built-in and published pipelines (latest versions)."""
    rows = api_call("GET", "/v1/pipelines")
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table()
    for col in ("pipeline", "version", "stages", "params", "description"):
        table.add_column(col)
    for p in rows:
        table.add_row(p["name"], str(p["version"]), " → ".join(p["stages"]), ", ".join(p["params"]), p["description"])
    console.print(table)


@app.command("validate")
def validate(file: Path = typer.Argument(..., help="A pipeline YAML file.")) -> None:
    """Check a template locally, listing every problem (exit 1 when invalid)."""
    from devart.core import pipelines
    from devart.core.errors import InvalidPipeline

    try:
        definition = pipelines.load_file(file)
    except InvalidPipeline as exc:
        fail(f"{file} is invalid:\n  - " + "\n  - ".join(exc.problems))
    console.print(
        f"[green]valid[/]: pipeline '{definition.name}' with stages " + ", ".join(s.name for s in definition.stages)
    )


@app.command("publish")
def publish(file: Path = typer.Argument(..., help="A pipeline YAML file.")) -> None:
    """Publish the file as the pipeline's next version."""
    from devart.core import yaml_safe

    try:
        data = yaml_safe.load_file(file)
    except yaml_safe.YamlRefused as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}")
    created = api_call("POST", "/v1/pipelines", json=data)
    console.print(f"published {created['name']} version {created['version']}")
