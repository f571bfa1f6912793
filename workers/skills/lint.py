"""The ``lint`` skill: ``ruff check`` with the repository's own configuration.

A self-healing stage (``self_heal: apply``) that fails on findings ruff can fix is retried with the ``ruff_fix``
remedy (``propose_fix: true``): the retry attaches ``ruff check --fix``'s changes, made on a copy, as a proposed
patch (``workers/skills/lint_fix.py``). The rule: a proposal never changes the verdict. The stage judges the
repository as given, so it still fails while findings remain there, with the patch in its output for a person to
apply; nothing is written to the repository or pushed.

Inputs: ``fail_on_findings`` (default false): fail the stage when ruff reports anything; ``propose_fix`` (default
false): attach ruff's safe fixes as a patch.
"""

from __future__ import annotations

import json
import posixpath
import shlex
from collections import Counter
from typing import Any

from devart.core.contracts import StageResult
from devart.core.errors import SkillError
from devart.workers.skills.base import SkillContext
from devart.workers.skills.common import DATA_OUTPUT_CAP, Commands, input_bool, input_float, tail
from devart.workers.skills.lint_fix import propose_fix

#: Directories devart itself writes into a workspace; they are never the repository's code.
DEVART_DIRS = ".devart,.devart-venv"
#: Rule prefixes that point at code which fails at runtime (flake8's classic "E9,F63,F7,F82" selection).
ERROR_PREFIXES = ("E9", "F63", "F7", "F82")
#: Rule prefixes about layout and whitespace only.
INFO_PREFIXES = ("W", "E1", "E2", "E3", "E501")


async def ruff_findings(ctx: SkillContext, cmd: Commands | None = None) -> list[dict[str, Any]]:
    """Ruff's findings on the workspace as ``{file, line, column, code, message, severity}``, in file order.

    Raises:
        SkillError: ``LintError`` (retryable) when ruff itself fails, e.g. on an invalid configuration.
    """
    cmd = cmd or Commands(ctx)
    timeout = input_float(ctx, "timeout", 300.0)
    argv = [ctx.python, "-m", "ruff", "check", "--output-format", "json", "--exit-zero", "--quiet", "--no-cache",
            "--extend-exclude", DEVART_DIRS, "."]
    # The JSON report is data, not a log: the log gets ruff's findings one per line instead.
    result = await cmd.run("ruff", argv, timeout=timeout, logged=False, output_cap=DATA_OUTPUT_CAP)
    cmd.note(f"$ {shlex.join(argv)}")
    if result.exit_code != 0 or result.timed_out or result.truncated:
        cmd.note(f"{tail(result.output)}\n[exit code {result.exit_code}]")
        raise SkillError(f"ruff could not check the repository (exit code {result.exit_code})",
                         error_type="LintError", log_tail=cmd.log_tail)
    try:
        raw, _ = json.JSONDecoder().raw_decode(result.output, result.output.index("["))
    except ValueError:
        cmd.note(tail(result.output))
        raise SkillError("ruff printed no JSON report", error_type="LintError", log_tail=cmd.log_tail) from None
    findings = sorted((_finding(item, ctx.workspace) for item in raw),
                      key=lambda f: (f["file"], f["line"], f["column"]))
    cmd.note("".join(f"{f['file']}:{f['line']}:{f['column']}: {f['code']} {f['message']}\n" for f in findings)
             + f"{len(findings)} findings")
    return findings


async def run(ctx: SkillContext) -> StageResult:
    fail_on_findings = input_bool(ctx, "fail_on_findings")
    cmd = Commands(ctx)
    findings = await ruff_findings(ctx, cmd)
    by_code = dict(sorted(Counter(f["code"] for f in findings).items()))
    by_severity = dict(Counter(f["severity"] for f in findings))
    codes = ", ".join(f"{code} x{count}" if count > 1 else code for code, count in by_code.items())
    summary = f"{len(findings)} ruff findings ({codes})" if findings else "no ruff findings"
    fixable = sum(f["fixable"] for f in findings)
    output: dict[str, Any] = {"findings": findings, "counts": by_code, "by_severity": by_severity,
                              "total": len(findings), "fixable": fixable}
    proposed = input_bool(ctx, "propose_fix") and fixable > 0
    if proposed:
        patch = output["proposed_patch"] = await propose_fix(ctx, cmd, DEVART_DIRS)
        summary += (f"; ruff --fix proposes a patch to {len(patch['files'])} files leaving {patch['remaining']} "
                    "findings (not applied)")
    if fail_on_findings and findings:
        # Worth a retry only to propose the fixes (the retry still fails: the repository is judged as given).
        healable = ctx.task.self_heal == "apply" and fixable and not proposed
        raise SkillError(f"lint failed: {summary}", error_type="LintFailed", non_retryable=not healable,
                         output=output, log_tail=cmd.log_tail)
    return StageResult(status="succeeded", summary=summary, output=output, log_tail=cmd.log_tail,
                       usage=cmd.usage())


def severity(code: str) -> str:
    """``error`` for code that breaks at runtime, ``info`` for layout, ``warning`` for the rest."""
    if code == "syntax-error" or code.startswith(ERROR_PREFIXES):
        return "error"
    if code.startswith(INFO_PREFIXES):
        return "info"
    return "warning"


def _finding(item: dict[str, Any], workspace: str) -> dict[str, Any]:
    code = item.get("code") or "syntax-error"
    filename = item.get("filename") or ""
    if posixpath.isabs(filename):
        filename = posixpath.relpath(filename, workspace)
    location = item.get("location") or {}
    fix = item.get("fix") or {}
    return {"file": filename, "line": location.get("row", 0), "column": location.get("column", 0),
            "code": code, "message": item.get("message", ""), "severity": severity(code),
            "fixable": fix.get("applicability") == "safe"}  # what ``ruff check --fix`` applies
