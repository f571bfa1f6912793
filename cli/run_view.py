"""How a run is shown: the stage table (live and final), its figures and findings, why it failed, log tails.

Everything that comes from the run (test names, messages, logs) is rendered as plain ``Text``, never as markup, so
brackets in a node id (``test_x[param]``) or a log line are shown as they are.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from devart.cli import stage_details

STYLE = {
    "succeeded": "green",
    "failed": "red",
    "running": "yellow",
    "pending": "dim",
    "skipped": "dim",
    "cancelled": "magenta",
    "awaiting_approval": "yellow",
}
#: Failing tests named in the table per stage; the rest are counted.
TESTS_SHOWN = 5
#: Lines of a stage's log tail that ``runs show`` prints.
LOG_LINES = 25
#: A failure message longer than this is cut (the full text is in the log tail and the JSON).
MESSAGE_CHARS = 160
#: Terminals narrower than this get the stage table without its attempts and agent columns.
NARROW = 90


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def stage_details_cell(stage: dict[str, Any]) -> Text:
    """The summary for a stage that went well; why not and the first failing tests for one that did not."""
    cell = Text()
    if stage.get("warnings"):
        cell.append(f"[!] {'; '.join(stage['warnings'])}\n", style="yellow")
    why = stage_details.reason(stage)
    if why:
        cell.append(_clip(why, 400), style="red" if stage.get("status") == "failed" else "dim")
    elif stage.get("status") == "failed":
        cell.append("no reason was recorded (see the Web UI)", style="red")
    else:
        summary = stage_details.result_of(stage).get("summary") or stage.get("waiting") or stage.get("error") or ""
        cell.append(_clip(str(summary), MESSAGE_CHARS))
    tests = stage_details.failures(stage)
    for failure in tests[:TESTS_SHOWN]:
        cell.append("\n✗ ", style="red")
        cell.append(failure["test"], style="bold")
        if failure["message"]:  # on its own line, so the node id gets the cell's whole width
            cell.append(f"\n    {_clip(failure['message'], MESSAGE_CHARS)}", style="dim")
    more = stage_details.failure_count(stage) - min(len(tests), TESTS_SHOWN)
    if tests and more > 0:
        cell.append(f"\n… and {more} more", style="dim")
    for remedy in stage_details.result_of(stage).get("remedies") or []:
        cell.append("\n↻ ", style="cyan")
        cell.append(f"attempt {remedy.get('attempt')}: {remedy.get('name')} ({remedy.get('change')}) after "
                    f"{remedy.get('after')}", style="cyan")
    return cell


def stage_table(run: dict[str, Any], width: int = 200) -> Table:
    """The run's stages; below ``NARROW`` columns without attempts and agent, to leave room for the details."""
    status = run.get("status", "")
    title = Text.assemble(f"{run.get('pipeline', '')} · {run.get('run_id', '')} · ", (status, STYLE.get(status, "")))
    wide = width >= NARROW
    table = Table(title=title)
    table.add_column("stage", overflow="fold")
    table.add_column("status", no_wrap=True)
    if wide:
        table.add_column("attempts", no_wrap=True)
        table.add_column("agent", overflow="fold")
    table.add_column("details", overflow="fold", ratio=1)
    for s in run.get("stages") or []:
        attempts = str(s.get("attempts") or len(s.get("attempt_log") or []) or "")
        agent = Text(stage_details.result_of(s).get("agent") or "")
        table.add_row(
            Text(s.get("name", "")),
            Text(s.get("status", ""), style=STYLE.get(s.get("status", ""), "")),
            *((attempts, agent) if wide else ()),
            stage_details_cell(s),
        )
    return table


def print_results(console: Console, run: dict[str, Any], *, logs: str = "none", log_lines: int = LOG_LINES) -> None:
    """The final view of a run: table, figures and findings, log tails (``logs``: none, failed or all), link.

    The Web UI link is printed with ``soft_wrap`` so that a narrow terminal never breaks it: a broken link cannot
    be clicked or copied.
    """
    console.print(stage_table(run, console.width))
    for s in run.get("stages") or []:
        output = stage_details.result_of(s).get("output") or {}
        figures = {k: v for k, v in output.items() if isinstance(v, int | float | str) and k != "attempt"}
        if figures:
            shown = ", ".join(f"{k}={v}" for k, v in list(figures.items())[:8])
            console.print(Text.assemble((s.get("name", ""), "bold"), ": ", shown))
        for finding in (output.get("findings") or [])[:10]:
            console.print(
                Text(f"   {finding.get('file')}:{finding.get('line')} [{finding.get('severity')}] "
                     f"{finding.get('rule', '')} {finding.get('message', '')}")
            )
    if logs != "none":
        print_log_tails(console, run, everything=logs == "all", lines=log_lines)
    if run.get("error"):
        console.print(Text(str(run["error"]), style="red"))
    console.print(f"Web UI: {run.get('ui_url', '')}", soft_wrap=True, markup=False, highlight=False)


def print_log_tails(console: Console, run: dict[str, Any], *, everything: bool, lines: int) -> None:
    """Each failed stage's log tail (every stage's with ``everything``), under a rule naming the stage."""
    for s in run.get("stages") or []:
        if not everything and s.get("status") != "failed":
            continue
        tail = stage_details.log_tail(s, lines)
        if not tail:
            if s.get("status") == "failed":
                console.print(Text(f"{s.get('name', '')}: no log tail (the agent sent no output)", style="dim"))
            continue
        console.print(Rule(Text(f"{s.get('name', '')} · log tail, last {len(tail)} lines"), align="left"))
        for line in tail:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
