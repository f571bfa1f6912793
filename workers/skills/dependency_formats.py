"""How each packaging tool writes a requirement down; ``project_deps`` decides where to look and what to take.

Kept apart from ``project_deps`` because reading a format (a requirements file with its ``-r`` and ``-c``, a
Poetry constraint such as ``^1.2``, setup.cfg's extras, tox's ``[testenv]``, nox's ``session.install``) is one
concern and choosing between the sources is another. Like ``project_deps`` this runs inside the sandbox, so it
imports only the standard library (``packaging`` is used when the interpreter has it): the test skill sends this
module's source ahead of ``project_deps``'s as one program (``project_deps.script``).
"""

from __future__ import annotations

import configparser
import os
import re
import sys
from typing import Any

try:
    import tomllib
except ImportError:  # Python < 3.11: no pyproject.toml support, the other sources still work
    tomllib = None  # type: ignore[assignment]


def normalize(name: str) -> str:
    """PEP 503 / 685 normalized name of a project, group or extra."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_toml(path: str) -> dict[str, Any]:
    """A TOML file's content; empty when it is missing, unreadable, or this Python cannot read TOML."""
    if tomllib is None or not os.path.isfile(path):
        return {}
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, ValueError):
        return {}


def _poetry_version(spec: str) -> str:
    """A Poetry version constraint as a PEP 440 specifier ("^1.2" -> ">=1.2,<2.0"); "" when it cannot be one."""
    spec = spec.strip()
    if spec in ("", "*") or "||" in spec or "|" in spec:
        return ""
    parts = [p for p in re.split(r"\s*,\s*|\s+(?=[<>=!~^])", spec) if p]
    out = []
    for part in parts:
        if part[0] in "^~" and not part.startswith("~="):
            nums = [int(x) for x in re.findall(r"\d+", part[1:])[:3]]
            if not nums:
                return ""
            if part[0] == "^":
                idx = next((i for i, n in enumerate(nums) if n != 0), len(nums) - 1)
            else:
                idx = 0 if len(nums) == 1 else 1
            upper = nums[: idx + 1]
            upper[-1] += 1
            out.append(f">={part[1:]},<{'.'.join(map(str, upper))}")
        elif part[0].isdigit():
            out.append(f"=={part}")
        else:
            out.append(part)
    return ",".join(out)


def poetry_requirement(name: str, value: Any) -> str | None:
    """A Poetry dependency entry as a PEP 508 requirement; None for the interpreter and for path/git/url sources."""
    if normalize(name) == "python":
        return None
    if isinstance(value, list):  # several constraints by Python version: take the one for this interpreter
        fitting = [v for v in value if isinstance(v, dict) and _python_fits(str(v.get("python", "")))]
        value = fitting[-1] if fitting else (value[-1] if value else "*")
    if isinstance(value, dict):
        if any(k in value for k in ("path", "git", "url", "file")):
            return None
        extras = value.get("extras") or []
        version = _poetry_version(str(value.get("version", "*")))
        extra = f"[{','.join(extras)}]" if extras else ""
        return f"{name}{extra}{version}"
    return f"{name}{_poetry_version(str(value))}"


def _python_fits(constraint: str) -> bool:
    """Whether this interpreter satisfies a Poetry ``python`` constraint (True when it cannot tell)."""
    specifier = _poetry_version(constraint)
    if not specifier:
        return True
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:
        return True
    return SpecifierSet(specifier).contains(".".join(map(str, sys.version_info[:3])))


def setup_cfg_extras(project: str) -> dict[str, list[str]]:
    """The extras ``[options.extras_require]`` of the project's setup.cfg declares, with their requirements."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(os.path.join(project, "setup.cfg"))
    except configparser.Error:
        return {}
    if not parser.has_section("options.extras_require"):
        return {}
    return {k: [r for r in v.splitlines() if r.strip()] for k, v in parser.items("options.extras_require")}


def requirement_lines(path: str, seen: set[str] | None = None) -> list[str]:
    """A requirements file's requirements with ``-r`` includes inlined, ``-c`` made absolute, and every line
    that installs the project itself or a local folder (``-e .``, ``.``, ``./x``) dropped."""
    seen = set() if seen is None else seen
    real = os.path.realpath(path)
    if real in seen or not os.path.isfile(real):
        return []
    seen.add(real)
    base = os.path.dirname(real)
    out: list[str] = []
    with open(real, encoding="utf-8", errors="replace") as f:
        for raw in f:
            line = raw.split(" #", 1)[0].strip()
            if not line or line.startswith("#"):
                continue
            option = re.match(r"^(-r|--requirement|-c|--constraint)\s*=?\s*(\S+)$", line)
            if option:
                target = os.path.join(base, option.group(2))
                if option.group(1) in ("-r", "--requirement"):
                    out += requirement_lines(target, seen)
                elif os.path.isfile(target):
                    out.append(f"-c {os.path.realpath(target)}")
                continue
            if line.startswith(("-e", "--editable", ".", "/", "file:")) or line.startswith("-"):
                continue  # the project itself, a local folder, or an index option the sandbox decides
            out.append(line)
    return out


def tox_testenv(project: str) -> tuple[list[str], list[str]]:
    """``deps`` and ``extras`` of tox's ``[testenv]`` (tox.ini, or the legacy ini in pyproject.toml)."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(os.path.join(project, "tox.ini"))
        if not parser.has_section("testenv"):
            legacy = read_toml(os.path.join(project, "pyproject.toml")).get("tool", {}).get("tox", {})
            if isinstance(legacy.get("legacy_tox_ini"), str):
                parser.read_string(legacy["legacy_tox_ini"])
    except configparser.Error:
        return [], []
    if not parser.has_section("testenv"):
        return [], []
    deps: list[str] = []
    for line in parser.get("testenv", "deps", fallback="").splitlines():
        line = line.strip()
        if not line or "{" in line or line.startswith("#"):
            continue
        if line.startswith("-r"):
            deps += requirement_lines(os.path.join(project, line[2:].strip()))
        elif not line.startswith(("-", ".")):
            deps.append(line)
    extras = [e.strip() for e in re.split(r"[,\s]+", parser.get("testenv", "extras", fallback="")) if e.strip()]
    return deps, [e for e in extras if "{" not in e]


def nox_installs(project: str) -> list[str]:
    """String literals passed to ``session.install(...)`` in noxfile.py (not ``.``, ``-e`` or options)."""
    path = os.path.join(project, "noxfile.py")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8", errors="replace") as f:
        source = f.read()
    found: list[str] = []
    for call in re.findall(r"session\.install\(([^)]*)\)", source):
        for literal in re.findall(r"""["']([^"']+)["']""", call):
            if not literal.startswith(("-", ".")) and literal not in found:
                found.append(literal)
    return found
