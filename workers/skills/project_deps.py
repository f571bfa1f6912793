"""Finds what a project's test suite needs, where Python projects declare it; runs inside the sandbox.

The test skill sends this module's source to the sandbox (``python -c``) with the project folder as argument, so
it imports only the standard library (``packaging`` is used when the interpreter has it). It prints one JSON
object: the project's name, the extras to install with it, the extra requirements (written, filtered, to a
requirements file in the workspace), where each came from, and the wheels earlier stages handed on.

Where projects declare test dependencies, in the order they are looked for: PEP 735 dependency groups, extras
(``[project.optional-dependencies]`` or ``setup.cfg``), PDM's and Poetry's development groups, and
``requirements*test*.txt``-style files. Groups, extras and files named for tests (``test``, ``tests``,
``testing``) are all taken; only when none exists are the ones named ``dev`` taken instead; only when neither
exists are tox's and nox's configurations read. A requirement that points at the project itself (``-e .``) is
dropped: the skill installs the project (or the wheel built from it) on its own.
"""

from __future__ import annotations

import configparser
import email.parser
import json
import os
import re
import sys
import zipfile
from typing import Any

try:
    import tomllib
except ImportError:  # Python < 3.11: no pyproject.toml support, the other sources still work
    tomllib = None  # type: ignore[assignment]

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


def normalize(name: str) -> str:
    """PEP 503 / 685 normalized name of a project, group or extra."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _read_toml(path: str) -> dict[str, Any]:
    if tomllib is None or not os.path.isfile(path):
        return {}
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, ValueError):
        return {}


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


def _poetry_requirement(name: str, value: Any) -> str | None:
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


def _setup_cfg_extras(project: str) -> dict[str, list[str]]:
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


def _tox(project: str) -> tuple[list[str], list[str]]:
    """``deps`` and ``extras`` of tox's ``[testenv]`` (tox.ini, or the legacy ini in pyproject.toml)."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(os.path.join(project, "tox.ini"))
        if not parser.has_section("testenv"):
            legacy = _read_toml(os.path.join(project, "pyproject.toml")).get("tool", {}).get("tox", {})
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


def _nox(project: str) -> list[str]:
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
    pyproject = _read_toml(os.path.join(project, "pyproject.toml"))
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
    declared_extras.update({k: [] for k in _setup_cfg_extras(project)})
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
        reqs = [r for n, v in poetry_groups[group].items() if (r := _poetry_requirement(n, v))]
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
        deps, tox_extras = _tox(project)
        if deps or tox_extras:
            requirements, extras, sources = deps, tox_extras, ["tox [testenv]"]
        elif nox := _nox(project):
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
