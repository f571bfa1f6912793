"""Finds what a project's test suite needs, where Python projects declare it; runs inside the sandbox.

The test skill runs ``script()`` (``python -c``) with the project folder as argument: this module's source after
``dependency_formats``'s, which reads each file format, so both import only the standard library (``packaging``
is used when the interpreter has it). It prints one JSON object: the project's name, the extras to install with
it, the extra requirements (written, filtered, to a requirements file in the workspace), where each came from,
and the wheels earlier stages handed on.

Where projects declare test dependencies, in the order they are looked for: PEP 735 dependency groups, extras
(``[project.optional-dependencies]`` or ``setup.cfg``), PDM's and Poetry's development groups, and
``requirements*test*.txt``-style files. Groups, extras and files named for tests (``test``, ``tests``,
``testing``) are all taken; only when none exists are the ones named ``dev`` taken instead; only when neither
exists are tox's and nox's configurations read. A requirement that points at the project itself (``-e .``) is
dropped: the skill installs the project (or the wheel built from it) on its own.
"""

from __future__ import annotations

import ast
import email.parser
import inspect
import json
import os
import re
import sys
import zipfile
from typing import Any

from devart.workers.skills import dependency_formats
from devart.workers.skills.dependency_formats import (
    normalize,
    nox_installs,
    poetry_requirement,
    read_toml,
    requirement_lines,
    setup_cfg_extras,
    tox_testenv,
)

#: Names that mean "what the tests need", in order of preference; "dev" only when none of them exists.
TEST_NAMES = ("tests", "test", "testing")
DEV_NAMES = ("dev", "develop", "development")
#: Requirements files looked for, relative to the project folder.
TEST_FILES = ("requirements-test.txt", "requirements-tests.txt", "requirements_test.txt", "requirements_tests.txt",
              "test-requirements.txt", "tests-requirements.txt", "test_requirements.txt", "requirements-testing.txt",
              "requirements/test.txt", "requirements/tests.txt", "requirements/testing.txt",
              "tests/requirements.txt", "test/requirements.txt")
DEV_FILES = ("requirements-dev.txt", "requirements_dev.txt", "dev-requirements.txt", "requirements/dev.txt")
#: Where the filtered requirements are written, relative to the workspace.
OUTPUT = ".devart/test-requirements.txt"
_NAME_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _pick(names: list[str]) -> tuple[list[str], str]:
    """The names that mean tests (all of them), else the dev ones; with which kind was found."""
    tests = [n for n in names if normalize(n) in TEST_NAMES]
    if tests:
        return tests, "test"
    dev = [n for n in names if normalize(n) in DEV_NAMES]
    return dev, ("dev" if dev else "")


def dependency_group(groups: dict[str, Any], name: str, seen: frozenset[str] = frozenset()) -> list[str]:
    """A PEP 735 group's requirements, with ``{include-group = ...}`` expanded (cycles are ignored)."""
    wanted = normalize(name)
    found: Any = next((v for k, v in groups.items() if normalize(k) == wanted), [])
    out: list[str] = []
    for item in found if isinstance(found, list) else []:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict) and isinstance(item.get("include-group"), str) and wanted not in seen:
            out += dependency_group(groups, item["include-group"], seen | {wanted})
    return out


def built_wheels(folder: str) -> list[dict[str, Any]]:
    """The wheels an earlier stage handed on (in ``folder``): file, normalized project name, declared extras."""
    found = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if not name.endswith(".whl"):
            continue
        try:
            with zipfile.ZipFile(os.path.join(folder, name)) as wheel:
                meta = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1]
                text = wheel.read(meta[0]).decode("utf-8", "replace") if meta else ""
        except (OSError, zipfile.BadZipFile):
            continue
        headers = email.parser.Parser().parsestr(text, headersonly=True)
        if headers.get("Name"):
            found.append({"file": name, "name": normalize(headers["Name"]),
                          "extras": headers.get_all("Provides-Extra") or []})
    return found


def discover(project: str, wheel_extras: list[str] | None = None) -> dict[str, Any]:
    """What the project's tests need: its name, the extras to install it with, extra requirements, sources."""
    pyproject = read_toml(os.path.join(project, "pyproject.toml"))
    meta = pyproject.get("project", {})
    tool = pyproject.get("tool", {})
    name = meta.get("name") or tool.get("poetry", {}).get("name") or ""
    sources: list[str] = []
    requirements: list[str] = []
    found: dict[str, tuple[list[str], list[str], list[str]]] = {}  # kind -> (requirements, extras, sources)

    def add(kind: str, reqs: list[str], extras: list[str], source: str) -> None:
        entry = found.setdefault(kind, ([], [], []))
        entry[0].extend(reqs)
        entry[1].extend(extras)
        entry[2].append(source)

    groups = pyproject.get("dependency-groups", {})
    if isinstance(groups, dict):
        names, kind = _pick(list(groups))
        for group in names:
            add(kind, dependency_group(groups, group), [], f"dependency group '{group}'")
    declared_extras = dict(meta.get("optional-dependencies", {}) or {})
    declared_extras.update({k: [] for k in setup_cfg_extras(project)})
    declared_extras.update({k: [] for k in wheel_extras or []})
    names, kind = _pick(list(declared_extras))
    for extra in dict.fromkeys(normalize(n) for n in names):
        add(kind, [], [extra], f"extra '{extra}'")
    pdm = tool.get("pdm", {}).get("dev-dependencies", {})
    if isinstance(pdm, dict):
        names, kind = _pick(list(pdm))
        for group in names:
            reqs = [r for r in pdm[group] if isinstance(r, str) and not r.startswith(("-e", ".", "file:"))]
            add(kind, reqs, [], f"PDM dev group '{group}'")
    poetry = tool.get("poetry", {})
    poetry_groups = {g: v.get("dependencies", {}) for g, v in (poetry.get("group", {}) or {}).items()}
    if isinstance(poetry.get("dev-dependencies"), dict):
        poetry_groups.setdefault("dev", poetry["dev-dependencies"])
    names, kind = _pick(list(poetry_groups))
    for group in names:
        reqs = [r for n, v in poetry_groups[group].items() if (r := poetry_requirement(n, v))]
        add(kind, reqs, [], f"Poetry group '{group}'")
    for kind, files in (("test", TEST_FILES), ("dev", DEV_FILES)):
        for rel in files:
            if os.path.isfile(os.path.join(project, rel)):
                add(kind, requirement_lines(os.path.join(project, rel)), [], f"requirements file {rel}")

    extras: list[str] = []
    for kind in ("test", "dev"):
        if kind in found:
            requirements, extras, sources = found[kind]
            break
    else:
        deps, tox_extras = tox_testenv(project)
        if deps or tox_extras:
            requirements, extras, sources = deps, tox_extras, ["tox [testenv]"]
        elif nox := nox_installs(project):
            requirements, sources = nox, ["noxfile.py session.install"]
    # The project itself may be listed in its own groups (e.g. "flask[async]"): its extras count, its name not.
    own = normalize(name) if name else None
    kept: list[str] = []
    for req in requirements:
        match = _NAME_RE.match(req)
        if own and match and normalize(match.group(1)) == own:
            extras += [normalize(e) for e in re.findall(r"\[([^\]]*)\]", req)[:1][0].split(",")] if "[" in req else []
            continue
        kept.append(req)
    installable = ("build-system" in pyproject or "project" in pyproject
                   or any(os.path.isfile(os.path.join(project, f)) for f in ("setup.py", "setup.cfg")))
    return {"name": name, "extras": sorted(set(e for e in extras if e)), "requirements": kept, "sources": sources,
            "installable": installable}


def script() -> str:
    """The program the test skill runs with ``python -c``: ``dependency_formats``'s source, then this module's
    without its devart imports (the names they bring are defined above) and its ``__future__`` import (one may
    only open a program; the formats' own stands for both)."""
    source = inspect.getsource(sys.modules[__name__])
    lines = source.splitlines(keepends=True)
    for node in ast.parse(source).body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("__future__", "devart"):
            end = node.end_lineno or node.lineno
            lines[node.lineno - 1 : end] = ["\n"] * (end - node.lineno + 1)
    return inspect.getsource(dependency_formats) + "".join(lines)


if __name__ == "__main__":
    project_dir, workspace, artifacts_dir = sys.argv[1], sys.argv[2], sys.argv[3]
    wheels = built_wheels(os.path.join(workspace, artifacts_dir))
    result = discover(project_dir, [extra for wheel in wheels for extra in wheel["extras"]])
    out = os.path.join(workspace, OUTPUT)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in result["requirements"]))
    result.update(requirements_file=OUTPUT, wheels=wheels)
    sys.stdout.write(json.dumps(result) + "\n")
