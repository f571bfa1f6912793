"""Runs pytest in the project's environment and writes its own outcome counts; runs inside the sandbox.

The test skill sends this module's source to the sandbox and runs it with the *project's* interpreter
(``python -P -c``: nothing from the working directory is put on ``sys.path``, so the tests import the installed
package, as they do when run through the ``pytest`` script). The plugin counts outcomes from pytest's own
terminal statistics, the same figures pytest prints in its closing line (passed, failed, errors including
collection errors, skipped, xfailed, xpassed), and names each failed or erroring test with the first line of
its reason. JUnit XML cannot tell an xpass from a pass, nor count a collection error the way pytest does.

Arguments: the report's path, the project folder, then pytest's own arguments. The exit code is pytest's.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

#: pytest's statistics keys and the names the report gives them.
OUTCOMES = {"passed": "passed", "failed": "failed", "error": "errors", "skipped": "skipped",
            "xfailed": "xfailed", "xpassed": "xpassed"}
#: Failed and erroring tests listed by name; the counts always cover all of them.
MAX_LISTED = 50
_EXCEPTION_LINE = re.compile(r"^E\s+(\w[\w.]*(?:Error|Exception|Exit|Interrupt)\b.*)$", re.MULTILINE)


def reason(report: Any) -> str:
    """The first line that says why a test failed: pytest's crash message, else the last ``E`` line."""
    crash = getattr(getattr(report, "longrepr", None), "reprcrash", None)
    message = str(getattr(crash, "message", None) or "").strip()
    if message:
        return message.splitlines()[0]
    text = str(getattr(report, "longreprtext", "") or "")
    found = _EXCEPTION_LINE.findall(text)
    if found:
        return str(found[-1]).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


class Report:
    """A pytest plugin that writes the session's outcome counts and failures as JSON when the session ends."""

    def __init__(self, path: str) -> None:
        self.path = path

    def pytest_sessionfinish(self, session: Any, exitstatus: int) -> None:
        terminal = session.config.pluginmanager.get_plugin("terminalreporter")
        stats: dict[str, list[Any]] = getattr(terminal, "stats", {}) if terminal is not None else {}
        counts = {name: 0 for name in OUTCOMES.values()}
        failures: list[dict[str, str]] = []
        for key, name in OUTCOMES.items():
            for report in stats.get(key, []):
                if not getattr(report, "count_towards_summary", True):
                    continue
                counts[name] += 1
                if key in ("failed", "error") and len(failures) < MAX_LISTED:
                    collecting = getattr(report, "when", None) in (None, "collect")
                    outcome = "failed" if key == "failed" else ("collection error" if collecting else "error")
                    failures.append({"test": str(getattr(report, "nodeid", "")) or "<session>",
                                     "outcome": outcome, "message": reason(report)[:500]})
        data = {**counts, "total": sum(counts.values()), "exit_code": int(exitstatus), "failures": failures,
                "pytest": __import__("pytest").__version__}
        with open(self.path, "w", encoding="utf-8") as f:
            json.dump(data, f)


def activate() -> None:
    """Make this interpreter's environment the active one, as ``activate`` (and tox, and nox) do: its scripts first
    on ``PATH``, its folder in ``VIRTUAL_ENV``. Suites that run a tool their test dependencies install (mypy through
    pytest-mypy-plugins, a project's own console script) find this environment's, as they do when a developer runs
    them; without it they found the host's tools, or none ("mypy executable is not found")."""
    import os

    os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]).rstrip(":")
    if sys.prefix != sys.base_prefix:
        os.environ["VIRTUAL_ENV"] = sys.prefix
    os.environ.pop("PYTHONHOME", None)


def main(argv: list[str]) -> int:
    """``argv``: the report's path, the project folder (pytest starts there, to find its configuration), then
    pytest's arguments."""
    import os

    import pytest

    activate()
    report, project = os.path.abspath(argv[0]), argv[1]
    os.chdir(project)
    return int(pytest.main(argv[2:], plugins=[Report(report)]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
