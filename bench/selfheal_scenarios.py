"""The self-healing benchmark's failure scenarios: small real repositories that fail in one stage, by kind.

Each kind writes a repository whose stage fails on its first attempt the way real projects do (a test fixture that
needs more memory than the stage's sandbox gives, a test harness that forks more workers than its process limit, a
step slower than the stage's command limit, a test that fails only on a cold cache, an unused import under a lint
stage that fails on findings, a build backend the offline sandbox cannot fetch), and two controls no remedy can
fix: a check with a real bug, and a test with one (which re-running the failed tests must not pass). Names,
sizes, counts, paths and texts come from a seeded ``random.Random``, so two scenarios of one kind fail with
signatures that differ but read alike, and a seed gives the same set again.

A kind names the remedy that is right for it. Whether devart has that remedy yet is read from ``domain.remedies``
at run time (``available``), so a kind whose remedy lands later is measured as it is, without changing this file:
until then both modes are expected to fail it, and the report says so.
"""

from __future__ import annotations

import random
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devart.domain import remedies

WORDS = ["slugify", "invoice", "tokenizer", "scheduler", "billing", "render", "geocode", "thumbnail", "ledger",
         "payload", "catalog", "cursor", "webhook", "quota", "session", "archive", "mailer", "sitemap", "pricing",
         "search", "upload", "router", "metrics", "locale", "digest", "profile", "ingest", "report", "cache",
         "ticket", "shipping", "inventory", "checkout", "audit", "backlog", "calendar"]
MODULES = ["core", "models", "service", "api", "storage", "jobs", "util", "views"]
#: Backends the agent's own environment has: an isolated build cannot fetch them offline, a build without isolation
#: finds them. (A backend the agent lacks too is out of any remedy's reach: the build fails naming it, a control in
#: all but name, so the benchmark leaves it to the remedy's own test.)
BACKENDS = [("hatchling", "hatchling.build"), ("setuptools>=61", "setuptools.build_meta")]


@dataclass(frozen=True)
class Scenario:
    """One failing repository and the stage that runs on it."""

    id: str
    kind: str
    repo: Path
    skill: str
    inputs: dict[str, Any]
    sandbox: dict[str, Any]
    expected_remedy: str | None  #: None: the control, which nothing should fix
    detail: str  #: what makes this one differ from its kind's others, for the report


@dataclass(frozen=True)
class Kind:
    """A failure kind: the remedy right for it and how to write one of its repositories."""

    name: str
    expected_remedy: str | None
    skill: str
    make: Callable[[random.Random, Path, str], tuple[dict[str, Any], dict[str, Any], str]]
    needs_packages: bool = False  #: the stage installs from the package index (slower; the test skill)
    notes: str = field(default="")

    @property
    def available(self) -> bool:
        """Whether devart has this kind's remedy now (the control's answer, none, always is)."""
        return self.expected_remedy is None or self.expected_remedy in remedies.REMEDIES


def _write(root: Path, files: dict[str, str]) -> None:
    for name, body in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(body).lstrip())


def _python() -> str:
    """The interpreter the sandboxed commands use: the agent's own, which the sandbox sees."""
    return sys.executable


def memory(rng: random.Random, root: Path, word: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A fixture loader that needs 150-230 MiB in a 128 MiB sandbox: more_memory's doubling to 256 fits it."""
    size, module = rng.randint(150, 230), rng.choice(MODULES)
    _write(root, {f"tests/fixtures/load_{word}.py": f'''
        """Loads the {word} fixture the {module} tests compare against."""
        SIZE_MIB = {size}
        print("loading data/{word}_{rng.randint(1, 99)}.bin ({size} MiB) for {word}.{module}", flush=True)
        blob = bytearray(SIZE_MIB << 20)
        blob[::4096] = b"\\x01" * len(range(0, len(blob), 4096))
        print("{word}: fixture of", len(blob) >> 20, "MiB ready")
        '''})
    return ({"sandbox_command": f"{_python()} tests/fixtures/load_{word}.py"}, {"memory_mb": 128},
            f"{size} MiB in 128")


def processes(rng: random.Random, root: Path, word: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A test harness starting 36-56 workers at once under a limit of 32 processes: doubling it to 64 fits."""
    workers, module = rng.randint(36, 56), rng.choice(MODULES)
    _write(root, {f"tests/run_{word}_workers.py": f'''
        """Starts one worker per {word} shard, as the {module} integration tests do, and waits for them."""
        import subprocess
        WORKERS = {workers}
        print("starting", WORKERS, "{word} workers for {module}", flush=True)
        procs = [subprocess.Popen(["sleep", "1"]) for _ in range(WORKERS)]
        print("{word}: all", sum(p.wait() == 0 for p in procs), "workers done")
        '''})
    return ({"sandbox_command": f"{_python()} tests/run_{word}_workers.py"}, {"pids": 32},
            f"{workers} workers under 32 processes")


def slow(rng: random.Random, root: Path, word: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A step taking 2.6-3.6 s under a command limit of 2 s: longer_timeout's doubling to 4 s fits it."""
    seconds, shards = round(rng.uniform(2.6, 3.6), 1), rng.randint(4, 9)
    _write(root, {f"scripts/index_{word}.py": f'''
        """Rebuilds the {word} search index, shard by shard (slow on a cold machine)."""
        import time
        SHARDS, SECONDS = {shards}, {seconds}
        for shard in range(SHARDS):
            print(f"indexing {word} shard {{shard + 1}}/{{SHARDS}}", flush=True)
            time.sleep(SECONDS / SHARDS)
        print("{word} index rebuilt")
        '''})
    return ({"sandbox_command": f"{_python()} scripts/index_{word}.py"}, {"timeout": 2},
            f"{seconds} s under a 2 s limit")


def flaky(rng: random.Random, root: Path, word: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A test that fails on a cold cache only (the first run in a checkout); the other tests always pass."""
    got, want = rng.randint(0, 5), rng.randint(20, 80)
    _write(root, {f"tests/test_{word}.py": f'''
        from pathlib import Path


        def test_{word}_round_trip():
            assert "{word}".upper().lower() == "{word}"


        def test_{word}_cache_is_warm():
            marker = Path(__file__).with_name(".{word}-cache-warm")
            cold = not marker.exists()
            marker.write_text("warm")
            entries = {got} if cold else {want}
            assert entries == {want}, "{word} cache returned {{}} entries".format(entries)
        '''})
    return {}, {"network": "packages"}, f"test_{word}_cache_is_warm fails on a cold cache"


def lint(rng: random.Random, root: Path, word: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A module with unused imports (F401, fixable) under a lint stage that fails on findings."""
    module = rng.choice(MODULES)
    unused = rng.sample(["os", "sys", "json", "re", "typing", "pathlib", "itertools", "functools"], rng.randint(1, 3))
    imports = "\n".join(f"import {name}" for name in sorted(unused))
    _write(root, {f"{word}/{module}.py": f'''
{imports}


def {word}_{module}(value: str) -> str:
    return value.strip().lower()
'''})
    return {"fail_on_findings": True}, {}, f"{len(unused)} unused import(s) in {word}/{module}.py"


def build_offline(rng: random.Random, root: Path, word: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A project whose declared build backend must be fetched, built in a sandbox with no network."""
    backend, api = rng.choice(BACKENDS)
    package = f"{word}_{rng.choice(MODULES)}"
    _write(root, {"pyproject.toml": f'''
        [build-system]
        requires = ["{backend}"]
        build-backend = "{api}"

        [project]
        name = "{package.replace("_", "-")}"
        version = "0.{rng.randint(1, 9)}.{rng.randint(0, 20)}"
        ''', f"src/{package}/__init__.py": f'"""The {word} package."""\n'})
    return {}, {"network": "none"}, f"{backend} offline"


def broken_test(rng: random.Random, root: Path, word: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A control: a test with a real bug, failing on every run; re-running it (rerun_failed_tests) must not pass
    the stage."""
    rate, cents = rng.choice([7, 13, 19, 21]), rng.randint(101, 999)
    _write(root, {f"tests/test_{word}_totals.py": f'''
        def {word}_tax(cents: int) -> int:
            return cents * {rate} // 100  # the bug: rounds down where the ledger rounds half up


        def test_{word}_tax_is_rounded_half_up():
            assert {word}_tax({cents}) == round({cents} * {rate} / 100 + 0.5)


        def test_{word}_tax_of_nothing():
            assert {word}_tax(0) == 0
        '''})
    return {}, {"network": "packages"}, f"a real bug in tests/test_{word}_totals.py"


def broken(rng: random.Random, root: Path, word: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A control: a check that fails on every attempt whatever its limits; no remedy may make it pass."""
    want, got = rng.randint(10, 99), rng.randint(100, 999)
    _write(root, {f"checks/verify_{word}.py": f'''
        """Checks the {word} totals against the ledger: a real bug, wrong on every run."""
        total = sum(range({got}))
        print("{word} total", total)
        assert total % {want} == {want}, "{word}: total " + str(total) + " does not reconcile"
        '''})
    return ({"sandbox_command": f"{_python()} checks/verify_{word}.py"}, {},
            f"a real bug in checks/verify_{word}.py")


#: Every kind, the controls (no right remedy) last. The remedy names of kinds not built yet are the ones the issue
#: asks for.
KINDS: dict[str, Kind] = {k.name: k for k in [
    Kind("memory", "more_memory", "noop", memory),
    Kind("processes", "more_processes", "noop", processes),
    Kind("timeout", "longer_timeout", "noop", slow),
    Kind("flaky", "rerun_failed_tests", "test", flaky, needs_packages=True),
    Kind("lint", "ruff_fix", "lint", lint),
    Kind("build", "build_without_isolation", "build", build_offline),
    Kind("control", None, "noop", broken),
    Kind("broken_test", None, "test", broken_test, needs_packages=True),
]}


def is_control(kind: str) -> bool:
    """Whether ``kind`` is a control: a failure no remedy is right for, which must fail in both modes."""
    return KINDS[kind].expected_remedy is None


def scenarios(seed: int, root: Path, kinds: list[str], per_kind: int, warmup: int) -> list[Scenario]:
    """``per_kind`` scenarios of each of ``kinds`` (of a control, only the ``per_kind - warmup`` a kind holds out:
    a control has nothing to teach), their repositories written under ``root``; a seed gives the same set again."""
    rng = random.Random(seed)
    words = rng.sample(WORDS, len(WORDS))
    made: list[Scenario] = []
    for name in kinds:
        kind = KINDS[name]
        for i in range(max(1, per_kind - warmup) if is_control(name) else per_kind):
            word = words[len(made) % len(words)]
            if len(made) >= len(words):
                word = f"{word}{len(made) // len(words)}"
            sid = f"{name}-{i + 1}-{word}"
            repo = root / sid
            repo.mkdir(parents=True)
            inputs, sandbox, detail = kind.make(rng, repo, word)
            made.append(Scenario(sid, name, repo, kind.skill, inputs, sandbox, kind.expected_remedy, detail))
    return made


def split(made: list[Scenario], warmup: int) -> tuple[list[Scenario], list[Scenario]]:
    """The first ``warmup`` scenarios of each kind fill the knowledge base; the rest are held out. A control is
    held out whole: it teaches nothing (no remedy succeeds for it) and is there to fail."""
    seen: dict[str, int] = {}
    warm: list[Scenario] = []
    held: list[Scenario] = []
    for scenario in made:
        seen[scenario.kind] = seen.get(scenario.kind, 0) + 1
        (warm if not is_control(scenario.kind) and seen[scenario.kind] <= warmup else held).append(scenario)
    return warm, held
