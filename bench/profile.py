"""Where devart's CPU goes: py-spy samples both APIs, the pipeline worker and an agent under a no-op load.

    python -m bench.profile [--seconds 20] [--concurrency 10]

Starts the benchmark stack, keeps ``--concurrency`` one-stage no-op runs in flight for ``--seconds`` while
``py-spy record`` samples each devart process (idle time left out), then prints and writes
``bench/results/profiles/summary.md``: per process, the self time by library and the inclusive time of devart's
own functions. The raw collapsed stacks (flamegraph input) and speedscope files land beside it. py-spy needs
ptrace: run as root or with CAP_SYS_PTRACE.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx

from bench import report
from bench import stack as bench_stack
from bench.pipeline import noop_pipeline
from bench.scale import closed_loop, devart_run
from bench.scale import publish as publish_pipeline
from devart.core.database import db
from devart.core.temporal import connect

PROFILES = report.RESULTS / "profiles"
#: devart's own packages: their functions are shown with the share of samples spent in them and what they call.
OWN = ("api/", "activities/", "workflows/", "workers/", "core/", "sandboxes/", "devart_sdk/")
#: Libraries a sample's innermost frame is attributed to (self time); anything else counts under its file name.
LIBRARIES = ("sqlalchemy", "psycopg", "temporalio", "opentelemetry", "fastapi", "starlette", "uvicorn", "pydantic",
             "httpx", "httpcore", "h11", "aio_pika", "aiormq", "pamqp", "asyncio", "concurrent", "greenlet",
             "importlib", "shutil", "pathlib", "json", "selectors", "threading", "uvloop", "anyio", "logging")


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: pip install -e '.[profile]'")
    return found


def record(pid: int, seconds: float, out: Path, fmt: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([py_spy(), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200",
                             "--format", fmt, "--output", str(out), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _samples(collapsed: Path) -> list[tuple[list[str], int]]:
    out = []
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        out.append((stack.split(";"), int(count)))
    return out


def _library(frame: str) -> str:
    where = frame.rpartition(" (")[2]
    for library in (*LIBRARIES, *OWN):
        if library in where:
            return library.rstrip("/")
    return where.split(":")[0].rstrip(")") or "(no Python frame: native code, the GIL)"


#: The process's entry point: on every stack, so it says nothing.
_ENTRY = "run (core/eventloop.py)"
#: py-spy names a file by its path under the import root: devart's files come as ``devart/api/…`` where the
#: package is installed under that name, as ``api/…`` where the checkout itself is the import root.
_PACKAGE = "devart/"


def _function(frame: str) -> str:
    """``name (file:line)`` → ``name (file)``: a function's samples counted together across its lines."""
    name, _, where = frame.rpartition(" (")
    where = where.removeprefix(_PACKAGE)
    return f"{name} ({where.rpartition(':')[0] or where.rstrip(')')})"


def _own(frame: str) -> bool:
    """Whether ``frame`` is in one of devart's own packages."""
    where = frame.rpartition(" (")[2].removeprefix(_PACKAGE)
    return where.startswith(OWN)


def summary(collapsed: Path, limit: int) -> dict[str, list[tuple[str, float]]]:
    """Self time by library (innermost frame) and inclusive time of devart's own functions, as sample shares."""
    samples = _samples(collapsed)
    total = sum(n for _, n in samples) or 1
    by_library: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for frames, n in samples:
        by_library[_library(frames[-1])] += n
        for function in {_function(f) for f in frames if _own(f)} - {_ENTRY}:
            own[function] += n
    return {"self time by library": [(k, n / total) for k, n in by_library.most_common(limit)],
            "devart functions, inclusive": [(k, n / total) for k, n in own.most_common(limit)]}


async def load(stack: bench_stack.BenchStack, seconds: float, concurrency: int) -> int:
    """Keep ``concurrency`` runs in flight for ``seconds``; returns how many completed."""
    client = await connect(stack.temporal_address)
    await bench_stack.start_agents(stack, 1, 64)
    repo = stack.state / "repo"
    repo.mkdir(exist_ok=True)
    (repo / "README").write_text("profiled repository\n")
    pipeline = f"profile-noop-{uuid.uuid4().hex[:6]}"
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=60.0, headers=bench_stack.bearer()) as api:
        await publish_pipeline(api, noop_pipeline(pipeline, stack.capability, 1))
        await closed_loop(devart_run(api, client, pipeline, str(repo)), 10, 5)  # warm-up
        targets = {"api": stack.api.proc.pid, "agents-api": stack.agents_api.proc.pid,
                   "worker": stack.worker.proc.pid, "agent": stack.agents[0].proc.pid}
        PROFILES.mkdir(parents=True, exist_ok=True)
        spies = [record(pid, seconds, PROFILES / f"{name}.txt", "raw") for name, pid in targets.items()]
        spies += [record(pid, seconds, PROFILES / f"{name}.speedscope.json", "speedscope")
                  for name, pid in targets.items()]
        done = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            done += len((await closed_loop(devart_run(api, client, pipeline, str(repo)), concurrency * 2,
                                           concurrency)).latencies)
        for spy in spies:
            _, err = spy.communicate()
            if spy.returncode:
                report.progress(f"py-spy failed: {err.decode()[-300:]}")
    await db.engine().dispose()
    return done


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--top", type=int, default=15, help="rows shown per table")
    args = parser.parse_args()
    py_spy()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    stack = bench_stack.start()
    try:
        done = asyncio.run(load(stack, args.seconds, args.concurrency))
    finally:
        bench_stack.stop(stack)
        asyncio.run(bench_stack.delete_broker_objects(stack))
    lines = [f"# Where devart's CPU goes ({done} runs in {args.seconds:g} s, {args.concurrency} in flight)", "",
             "Shares of py-spy samples (200 Hz, idle excluded) per process. Self time counts a sample once, under the",
             "library of its innermost frame; inclusive time counts it under every devart function on its stack.", ""]
    for name in ("api", "agents-api", "worker", "agent"):
        path = PROFILES / f"{name}.txt"
        if not path.exists():
            continue
        for title, rows in summary(path, args.top).items():
            lines += [f"## {name}: {title}", "", "| share | where |", "| ---: | --- |"]
            lines += [f"| {share:.1%} | `{where}` |" for where, share in rows] + [""]
    text = "\n".join(lines)
    (PROFILES / "summary.md").write_text(text + "\n")
    print(text)
    print(f"flamegraph input, speedscope files and this summary: {PROFILES}")

if __name__ == "__main__":
    main()
