"""Local sandbox speed: provision + teardown latency, and what ``exec`` costs over a plain subprocess.

Run ``python -m bench.sandbox [--quick]``. Provisions from ``examples/sample-app`` (a small local directory) into
a fresh root, with the same backend the agents use (bubblewrap, cgroups when writable). Exec overhead runs
``true`` through ``LocalSandbox.exec`` and as a plain asyncio subprocess, interleaved in the same run so both
see the same machine load. Writes ``bench/results/sandbox.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import stats
from devart.core.contracts import SandboxSpec, Source
from devart.sandboxes.local import LocalSandbox

SOURCE = Path(__file__).resolve().parent.parent / "examples" / "sample-app"
RESULTS = Path(__file__).resolve().parent / "results" / "sandbox.json"
#: The issue's goal for a local provision followed by a teardown.
GOAL_P50_MS = 50.0


def percentile(samples: list[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``samples``, in milliseconds."""
    return round(stats.percentile(samples, q) * 1000, 2)


def summary(samples: list[float]) -> dict[str, float]:
    return {"p50_ms": percentile(samples, 50), "p99_ms": percentile(samples, 99),
            "mean_ms": round(statistics.fmean(samples) * 1000, 2), "n": len(samples)}


async def plain_true() -> None:
    proc = await asyncio.create_subprocess_exec("true", stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    await proc.communicate()


async def measure(iterations: int, execs: int, isolation: str) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="devart-bench-"))
    sandbox = LocalSandbox(root / "sandboxes", isolation=isolation)  # type: ignore[arg-type]
    source, spec = Source(repo=str(SOURCE)), SandboxSpec()
    provision, teardown, cycle = [], [], []
    try:
        for i in range(iterations + 3):  # the first few warm caches up and are dropped
            start = time.perf_counter()
            handle = await sandbox.provision("bench", "provision", source, spec)
            middle = time.perf_counter()
            await sandbox.teardown(handle)
            end = time.perf_counter()
            if i >= 3:
                provision.append(middle - start)
                teardown.append(end - middle)
                cycle.append(end - start)
        handle = await sandbox.provision("bench", "exec", source, spec)
        sandboxed, plain = [], []
        for _ in range(execs + 3):
            start = time.perf_counter()
            result = await sandbox.exec(handle, ["true"])
            middle = time.perf_counter()
            await plain_true()
            end = time.perf_counter()
            if result.exit_code != 0:
                raise SystemExit(f"`true` failed in the sandbox: {result.output}")
            sandboxed.append(middle - start)
            plain.append(end - middle)
        await sandbox.teardown(handle)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    sandboxed, plain = sandboxed[3:], plain[3:]
    return {
        "isolation": isolation, "limits": sandbox.limits,
        "provision_teardown": summary(cycle), "provision": summary(provision), "teardown": summary(teardown),
        "exec_sandbox": summary(sandboxed), "exec_plain": summary(plain),
        "exec_overhead_ratio_p50": round(percentile(sandboxed, 50) / percentile(plain, 50), 1),
        "exec_overhead_ms_p50": round(percentile(sandboxed, 50) - percentile(plain, 50), 2),
    }


def table(result: dict) -> str:
    rows = [("provision + teardown", result["provision_teardown"]), ("  provision", result["provision"]),
            ("  teardown", result["teardown"]), ("exec `true` in sandbox", result["exec_sandbox"]),
            ("exec `true` plain", result["exec_plain"])]
    lines = [f"{'local sandbox (' + result['isolation'] + ', ' + result['limits'] + ')':<34}"
             f"{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'n':>6}"]
    lines += [f"{name:<34}{s['p50_ms']:>9.2f}{s['p99_ms']:>9.2f}{s['mean_ms']:>9.2f}{s['n']:>6}" for name, s in rows]
    lines.append(f"exec overhead at p50: +{result['exec_overhead_ms_p50']} ms "
                 f"({result['exec_overhead_ratio_p50']}x a plain subprocess)")
    verdict = "meets" if result["provision_teardown"]["p50_ms"] <= GOAL_P50_MS else "MISSES"
    lines.append(f"provision + teardown p50 {verdict} the {GOAL_P50_MS:g} ms goal")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke test, noisier figures)")
    parser.add_argument("--isolation", choices=["bubblewrap", "none"], default="bubblewrap")
    args = parser.parse_args()
    iterations, execs = (30, 30) if args.quick else (300, 200)
    result = asyncio.run(measure(iterations, execs, args.isolation))
    result.update(when=datetime.now(UTC).isoformat(timespec="seconds"), quick=args.quick,
                  machine={"python": sys.version.split()[0], "kernel": platform.release(),
                           "cpus": os.cpu_count(), "uid": os.geteuid(),
                           "load_average": [round(x, 2) for x in os.getloadavg()]})
    print(table(result))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}")


if __name__ == "__main__":
    main()
