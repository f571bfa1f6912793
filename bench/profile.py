"""Where devart's CPU goes: py-spy samples the API, the pipeline worker and an agent under a no-op load.

    python -m bench.profile [--seconds 20] [--concurrency 10]

Starts the benchmark stack, keeps ``--concurrency`` one-stage no-op runs in flight for ``--seconds`` while
``py-spy record`` samples each devart process (native Python frames, idle time left out), then prints, per
process, the functions with the most samples inclusive of what they call, restricted to frames of devart's
own packages and of the libraries they spend it in. The raw collapsed stacks (flamegraph input) and speedscope
files land in ``bench/results/profiles/``. py-spy needs ptrace: run as root or with CAP_SYS_PTRACE.
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
from core import db
from core.temporal import connect

PROFILES = report.RESULTS / "profiles"
#: Frames worth showing: devart's packages plus the libraries a run's time is spent in.
INTERESTING = ("api/", "activities/", "workflows/", "workers/", "core/", "sandboxes/", "devart_sdk/", "temporalio/",
               "sqlalchemy/", "psycopg/", "aio_pika/", "aiormq/", "pamqp/", "fastapi/", "starlette/", "pydantic/",
               "httpx/", "httpcore/", "opentelemetry/", "uvicorn/", "asyncio/")


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: pip install -e '.[profile]'")
    return found


def record(pid: int, seconds: float, out: Path, fmt: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([py_spy(), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200",
                             "--format", fmt, "--output", str(out), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def top(collapsed: Path, limit: int) -> list[tuple[str, int, float]]:
    """The most-sampled frames, inclusive: (frame, samples, share of the process's samples)."""
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        seen = set()
        for frame in stack.split(";"):
            if any(part in frame for part in INTERESTING) and frame not in seen:
                seen.add(frame)
                inclusive[frame] += n
    return [(frame, n, n / total if total else 0.0) for frame, n in inclusive.most_common(limit)]


async def load(stack: bench_stack.BenchStack, seconds: float, concurrency: int) -> int:
    """Keep ``concurrency`` runs in flight for ``seconds``; returns how many completed."""
    client = await connect(stack.temporal_address)
    await bench_stack.start_agents(stack, 1, 64)
    repo = stack.state / "repo"
    repo.mkdir(exist_ok=True)
    (repo / "README").write_text("profiled repository\n")
    pipeline = f"profile-noop-{uuid.uuid4().hex[:6]}"
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=60.0) as api:
        await publish_pipeline(api, noop_pipeline(pipeline, stack.capability, 1))
        await closed_loop(devart_run(api, client, pipeline, str(repo)), 10, 5)  # warm-up
        targets = {"api": stack.api.proc.pid, "worker": stack.worker.proc.pid, "agent": stack.agents[0].proc.pid}
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
    parser.add_argument("--top", type=int, default=25, help="frames shown per process")
    args = parser.parse_args()
    py_spy()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    stack = bench_stack.start()
    try:
        done = asyncio.run(load(stack, args.seconds, args.concurrency))
    finally:
        bench_stack.stop(stack)
        asyncio.run(bench_stack.delete_broker_objects(stack))
    print(f"{done} runs in {args.seconds:g} s at {args.concurrency} in flight; inclusive samples per process:")
    for name in ("api", "worker", "agent"):
        path = PROFILES / f"{name}.txt"
        if not path.exists():
            continue
        print(f"\n## {name}")
        for frame, _, share in top(path, args.top):
            print(f"{share:6.1%}  {frame}")
    print(f"\nflamegraph input and speedscope files: {PROFILES}")


if __name__ == "__main__":
    main()
