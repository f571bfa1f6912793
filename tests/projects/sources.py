"""Real public Python projects for the verdict tests, taken from their source distributions on the package index.

Each is pinned by version and SHA-256 and resolved as the index was on a fixed date (``exclude_newer``), so a
new release of a dependency cannot change the figures. Between them they cover the build backends devart must
handle and the places projects declare their test dependencies; the sdists ship their test suites.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import ssl
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.helpers import download_cache

#: Where downloaded sdists are kept between sessions (they never change: pinned by hash).
CACHE = download_cache("sdists")
INDEX = os.environ.get("DEVART_PACKAGE_INDEX_URL", "https://pypi.org/simple").rstrip("/")
_COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)\b")


@dataclass(frozen=True)
class Project:
    name: str
    version: str
    sha256: str
    exclude_newer: str
    covers: str
    #: Where devart must find the test dependencies (the skill's ``sources``).
    sources: tuple[str, ...]
    #: Part of the node id of a test that genuinely fails at this date, if one does.
    failing: str = ""
    #: Its source distribution ships no tests: the test stage must fail saying so, not pass on nothing.
    no_tests: bool = False

    @property
    def id(self) -> str:
        return f"{self.name}-{self.version}@{self.exclude_newer}"


PROJECTS = [
    Project("flask", "3.1.1", "284c7b8f2f58cb737f0cf1c30fd7eaf0ccfcde196099d24ecede3fc2005aa59e", "2025-05-14",
            "flit_core; PEP 735 dependency group 'tests' (asgiref, python-dotenv)", ("dependency group 'tests'",)),
    Project("platformdirs", "4.3.6", "357fb2acbc885b0419afd3ce3ed34564c13c9b95c89360cd9563f73aa5e2b907",
            "2024-09-18", "hatchling with hatch-vcs; extra 'test' (appdirs, pytest-mock)", ("extra 'test'",)),
    Project("pluggy", "1.6.0", "7dcc130b76258d33b90f61b658791dede3486c3e6bfb003ee5c9bfb396dd22f3", "2025-05-16",
            "setuptools with setuptools-scm; extra 'testing' (pytest-benchmark)", ("extra 'testing'",)),
    Project("markupsafe", "3.0.2", "ee55d3edf80167e48ea11a923c7386f4669df67d7994554387f84e7d8b0a2bf0",
            "2024-10-19", "setuptools with a C extension; requirements/tests.txt",
            ("requirements file requirements/tests.txt",)),
    Project("dep-logic", "0.4.11", "6084c81ce683943a60394ca0f8531ff803dfd955b5d7f52fb0571b53b930a182",
            "2025-02-26", "pdm-backend; PDM dev group", ("PDM dev group 'dev'",)),
    Project("tomlkit", "0.13.2", "fff5fe59a87295b278abd31bec92c15d9bc4a06885ab12bcea52c71119392e79",
            "2024-08-15", "poetry-core; Poetry dev-dependencies (PyYAML)", ("Poetry group 'dev'",)),
    # The same dep-logic resolved today: a newer packaging release breaks one of its tests, a genuine failure.
    Project("dep-logic", "0.4.11", "6084c81ce683943a60394ca0f8531ff803dfd955b5d7f52fb0571b53b930a182",
            "2026-11-30", "pdm-backend, resolved later: one genuinely failing test", ("PDM dev group 'dev'",),
            failing="tests/specifier/test_arbitrary.py::test_arbitrary_unsupported"),
    Project("simplejson", "3.19.3", "8e086896c36210ab6050f2f9f095a5f1e03c83fa0e7f296d6cba425411364680",
            "2024-08-15", "setup.py alone (no pyproject.toml) with an optional C extension; unittest tests inside the "
            "package", ()),
    Project("wrapt", "1.16.0", "5f370f952971e7d17c7d1ead40e49f32345a7f7a5373571ef44d800d06b1899d", "2023-11-10",
            "setup.py with a C extension; tests/requirements.txt", ("requirements file tests/requirements.txt",)),
    # Its sdist holds the package and nothing else: pytest collects nothing, and the verdict must not be green.
    Project("iniconfig", "2.0.0", "2d91e135bf72d31a410b17c16da610a82cb55f6b0477d1a902134b24a455b8b3", "2023-01-10",
            "hatchling with hatch-vcs; no tests in the sdist", (), no_tests=True),
]

#: More projects, run by ``scripts/projects`` (``DEVART_PROJECTS=all``) and not by the test command, which keeps to
#: ``PROJECTS``: each adds up to a minute, and what they cover is covered there or in the skills' own tests (the
#: environment's scripts on ``PATH``: ``tests/workers/test_skills.py``).
EXTENDED = [
    Project("attrs", "24.2.0", "5cfb1b9148b5b086569baec03f20d7b6bf3bcacc9a42bebf87ffaaca362f6346", "2024-08-07",
            "hatchling with hatch-vcs and hatch-fancy-pypi-readme; extra 'tests' with pytest-mypy-plugins, whose YAML "
            "cases run the environment's mypy; one test failing at this date", ("extra 'tests'",),
            failing="tests/test_converters.py::TestPipe::test_wrapped_annotation"),
    Project("more-itertools", "10.5.0", "5482bfef7849c25dc3c6dd53a6173ae4795da2a41a80faea6700d9f5846c5da6",
            "2024-09-06", "flit_core; unittest test cases and no test dependencies", ()),
    Project("msgpack", "1.1.0", "dd432ccc2c72b914e4cb77afce64aab761c1137cc698be3984eee260bcb2896e", "2024-09-11",
            "setuptools with a Cython extension compiled at build time", ()),
    Project("python-dateutil", "2.9.0.post0", "37dd54208da7e1cd875388217d5e00ebd4179249f90fb72437e91a35459a0ad3",
            "2024-03-02", "setuptools with setuptools-scm and setup.cfg; requirements-dev.txt (hypothesis, freezegun)",
            ("requirements file requirements-dev.txt",)),
    Project("pyyaml", "6.0.2", "d584d9ec91ad65861cc08d42e834324ef890a082e591037abe114850ff7bbc3e", "2024-08-07",
            "setuptools with an optional Cython extension for libyaml; tests collected by a pytest plugin of its own",
            ()),
]


def selected() -> list[Project]:
    """``PROJECTS``, and ``EXTENDED`` too when ``DEVART_PROJECTS=all`` (``scripts/projects``)."""
    wanted = os.environ.get("DEVART_PROJECTS", "")
    if wanted not in ("", "all"):
        raise ValueError(f"DEVART_PROJECTS is {wanted!r}: leave it unset for the test command's projects, or 'all'")
    return PROJECTS + EXTENDED if wanted == "all" else PROJECTS


def _client() -> httpx.Client:
    return httpx.Client(verify=ssl.create_default_context(), timeout=60.0, follow_redirects=True)


def fetch_sdist(project: Project) -> Path:
    """The project's sdist, downloaded once and checked against its pinned hash."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with _client() as client:
        cached = [p for p in CACHE.glob(f"*-{project.version}.tar.gz")
                  if hashlib.sha256(p.read_bytes()).hexdigest() == project.sha256]
        if cached:
            return cached[0]
        page = client.get(f"{INDEX}/{project.name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        page.raise_for_status()
        found = [f for f in page.json()["files"] if f.get("hashes", {}).get("sha256") == project.sha256]
        assert found, f"{project.name} {project.version}: no file with the pinned hash on the index"
        data = client.get(found[0]["url"]).content
    assert hashlib.sha256(data).hexdigest() == project.sha256
    target = CACHE / found[0]["filename"]
    target.write_bytes(data)
    return target


def unpack(sdist: Path, into: Path) -> Path:
    """The sdist's top folder, unpacked under ``into``."""
    with tarfile.open(sdist) as archive:
        archive.extractall(into, filter="data")
    (top,) = [p for p in into.iterdir() if p.is_dir()]
    return top


def pytest_counts(closing_line: str) -> dict[str, int]:
    """pytest's closing line ("1 failed, 2457 passed in 1.38s") as counts under the skill's names."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "xfailed": 0, "xpassed": 0}
    for number, word in _COUNT.findall(closing_line):
        counts["errors" if word.startswith("error") else word] += int(number)
    return counts


def run_pytest_directly(source: Path, installed: list[str], exclude_newer: str, python: str) -> dict[str, int]:
    """pytest as a developer runs it: a fresh virtualenv with the same packages, the project installed from its
    folder, the virtualenv activated (its scripts first on ``PATH``: a suite may run a tool its test dependencies
    install, as attrs runs mypy), ``pytest`` from the project folder; the counts of its closing line."""
    from uv import find_uv_bin

    uv = str(find_uv_bin())
    env = {**os.environ, "UV_NATIVE_TLS": "1", "UV_EXCLUDE_NEWER": exclude_newer, "UV_PYTHON_DOWNLOADS": "never",
           "NO_COLOR": "1"}
    venv = source / ".baseline-venv"
    subprocess.run([uv, "venv", "--quiet", "--python", python, str(venv)], check=True, env=env, timeout=120)
    pins = [line for line in installed if " @ " not in line]  # the project itself is installed from its folder
    requirements = source / ".baseline-requirements.txt"
    requirements.write_text("\n".join(pins) + "\n")
    subprocess.run([uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), str(source),
                    "-r", str(requirements)], check=True, env=env, timeout=600, capture_output=True)
    baseline_tmp = source / ".baseline-tmp"
    baseline_tmp.mkdir(exist_ok=True)
    done = subprocess.run([str(venv / "bin" / "pytest"), "-p", "no:cacheprovider"], cwd=source,
                          capture_output=True, text=True, timeout=900,
                          # A temporary folder of its own: pytest run as root makes /tmp/pytest-of-root 0700,
                          # which would cut the suite's own PostgreSQL off from its data folder.
                          env={"PATH": os.pathsep.join([str(venv / "bin"), os.environ["PATH"]]),
                               "VIRTUAL_ENV": str(venv), "HOME": str(source), "TMPDIR": str(baseline_tmp)})
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines, done.stderr[-2000:]
    return pytest_counts(lines[-1])


def describe(run: dict) -> str:
    return json.dumps(run, indent=1, default=str)[:6000]
