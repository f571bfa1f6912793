"""The profile's summary finds devart's own functions whether py-spy names them by package or by checkout path."""

from __future__ import annotations

from pathlib import Path

from bench import profile


def test_own_functions_are_counted_under_either_path(tmp_path: Path) -> None:
    collapsed = tmp_path / "worker.txt"
    collapsed.write_text(
        "run (devart/core/eventloop.py:28);prepare_stage (devart/activities/sandbox.py:72);"
        "execute (sqlalchemy/x.py:9) 3\n"
        "run (core/eventloop.py:28);prepare_stage (activities/sandbox.py:74) 1\n"
        "select (selectors.py:415) 4\n")
    found = dict(profile.summary(collapsed, 10)["devart functions, inclusive"])
    assert found == {"prepare_stage (activities/sandbox.py)": 0.5}
