"""Entry point of the ``devart`` command; each group of commands lives in its own module.

The command modules import only typer, rich and the standard library at the top, and the rest inside the commands
that need it: ``devart --help`` or ``devart runs list`` never load Temporal's SDK, SQLAlchemy, AMQP or GitHub
clients (``tests/cli/test_startup.py`` holds them to it).
"""

from __future__ import annotations

import sys

import typer

from devart.cli import agents, budgets, events, github, identity, kb, pipelines, processes, runs, secrets, stack, stats

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
app.add_typer(identity.orgs_app, name="orgs")
app.add_typer(identity.users_app, name="users")
app.add_typer(identity.tokens_app, name="tokens")
app.add_typer(secrets.app, name="secrets")
app.add_typer(kb.app, name="kb")  # issue 15
app.command()(identity.login)
app.command()(identity.logout)
app.command()(identity.whoami)
app.command()(identity.audit)
app.command()(budgets.costs)
app.command()(runs.run)
app.command()(events.events)
app.command()(stats.stats)
app.command()(stack.up)
app.command()(stack.down)
app.command()(stack.status)
app.command(hidden=True)(stack.supervise)
app.command()(stack.doctor)
app.command()(processes.api)
app.command()(processes.worker)
app.command()(processes.agent)


def main() -> None:
    # Help is printed while the arguments are parsed, before any command runs, and needs no logging: skipping the
    # settings that logging reads keeps `devart … --help` as quick as the help itself.
    if "--help" not in sys.argv[1:]:
        from devart.core.telemetry import logs

        logs.configure()
    app()
