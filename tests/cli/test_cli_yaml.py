"""Hostile YAML gets one error line naming the limit and exit 1, quickly: no hang, no memory blow-up, no traceback.

``publish`` is pointed at an API that does not exist: had it sent anything, it would exit 2 saying so.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from devart.core import bounds, yaml_safe
from devart.core.devstack.services import free_port
from tests.cli.test_cli import devart

#: The classic: nine levels of nine aliases each, a few hundred bytes that expand to 9^9 (387 million) strings.
BILLION_LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{c}: &{c} [" + ", ".join([f"*{p}"] * 9) + "]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))

NOWHERE = {"DEVART_API_URL": f"http://127.0.0.1:{free_port()}"}


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return path


def _refused(tmp_path: Path, text: str, needle: str) -> None:
    path = _file(tmp_path, text)
    for command in ("validate", "publish"):
        done = devart("pipelines", command, str(path), env=NOWHERE)
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert needle in done.stderr, (command, done.stderr)
        assert "Traceback" not in done.stderr and "RecursionError" not in done.stderr, done.stderr


def test_billion_laughs_is_refused_in_under_a_second(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(yaml_safe.YamlRefused, match=f"more than {bounds.MAX_YAML_NODES} values"):
        yaml_safe.load(BILLION_LAUGHS)
    assert time.monotonic() - started < 1.0
    _refused(tmp_path, BILLION_LAUGHS, f"expands to more than {bounds.MAX_YAML_NODES} values")


def test_deep_nesting_is_an_error_line_not_a_recursion_error(tmp_path: Path) -> None:
    _refused(tmp_path, "name: deep\nx: " + "[" * 50_000 + "]" * 50_000 + "\n",
             f"nested deeper than {bounds.MAX_DEPTH} levels")
    block = "name: deep\n" + "".join(f"{'  ' * i}k{i}:\n" for i in range(200)) + "  " * 200 + "v: 1\n"
    _refused(tmp_path, block, f"nested deeper than {bounds.MAX_DEPTH} levels")


def test_aliases_that_nest_past_the_depth_limit_are_refused(tmp_path: Path) -> None:
    # Each anchor is shallow, but expanded they are 40 levels deep.
    text = "a0: &a0 [x]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 40))
    _refused(tmp_path, text, "once aliases are expanded")


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path: Path) -> None:
    _refused(tmp_path, "name: loop\nstages: &s [*s]\n", "refers to a node that contains it")


def test_too_many_aliases_are_refused(tmp_path: Path) -> None:
    text = "a: &a 1\nb: [" + ", ".join(["*a"] * (bounds.MAX_YAML_ALIASES + 1)) + "]\n"
    _refused(tmp_path, text, f"more than {bounds.MAX_YAML_ALIASES} aliases")


def test_a_file_past_the_size_limit_is_refused_before_parsing(tmp_path: Path) -> None:
    text = "name: big\ndescription: '" + "x" * bounds.MAX_YAML_BYTES + "'\n"
    _refused(tmp_path, text, f"at most {bounds.size(bounds.MAX_YAML_BYTES)}")


def test_a_pipeline_past_the_limits_is_invalid(tmp_path: Path) -> None:
    stage = "  - {name: s, skill: shell, inputs: {script: 'x'}}\n"
    path = _file(tmp_path, "name: many\nstages:\n" + stage * (bounds.MAX_STAGES + 1))
    done = devart("pipelines", "validate", str(path))
    assert done.returncode == 1 and f"at most {bounds.MAX_STAGES}" in done.stderr, done.stderr
    path = _file(tmp_path, "name: nul\nstages:\n  - {name: s, skill: shell, inputs: {script: \"a\\0b\"}}\n")
    done = devart("pipelines", "validate", str(path))
    assert done.returncode == 1 and "stages[0].inputs.script contains a NUL byte" in done.stderr, done.stderr


def test_anchors_within_the_limits_still_load(tmp_path: Path) -> None:
    retry = "retry: &retry {initial_interval: 1, maximum_interval: 5, maximum_attempts: 2}"
    text = f"name: shared\nstages:\n  - {{name: s0, skill: shell, {retry}}}\n" + "".join(
        f"  - {{name: s{i}, skill: shell, retry: *retry}}\n" for i in range(1, 20))
    done = devart("pipelines", "validate", str(_file(tmp_path, text)))
    assert done.returncode == 0, done.stderr
