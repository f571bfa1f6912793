"""``python -m bench [--quick]``: devart's pipeline overhead against bare Temporal and RabbitMQ, in one run.

Starts a stack of its own (``bench.stack``), then measures, alternating the baseline and devart so both see the
same machine load:

1. baseline: a bare Temporal workflow with one no-op activity, on an in-process worker (``bench.pipeline``);
2. devart: a one-stage and a three-stage noop pipeline through ``POST /v1/runs``, RabbitMQ, the agents and the
   API's completion, the ratios to the baseline, and the CPU each process spends per run on either path;
3. dispatch: publish → agent receives on a devart lane against raw aio-pika (``bench.fleet.dispatch``), plus
   queued → claimed in the stack;
4. the API: ``POST /v1/runs`` under concurrent clients (``bench.api_load``);
5. the scale sweep: 1 … 1,000 runs in flight, with memory (``bench.scale``);
6. where a run's time goes, step by step, from the Temporal histories (``bench.timeline.breakdown``);

and writes ``bench/results/latest.{json,md,png}`` (``bench.report``). ``--quick`` (under two minutes; writes
``quick.*``) is the smoke check CI runs: it proves the benchmark runs and reports, its figures are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench import api_load, fleet, report, scale
from bench import stack as bench_stack
from bench.meters import CpuMeter
from bench.pipeline import noop_pipeline
from bench.scale import Sample, baseline_run, baseline_worker, closed_loop, devart_run
from bench.scale import publish as publish_pipeline
from bench.timeline import breakdown
from devart.core.database import db
from devart.core.devstack import services
from devart.core.telemetry import tracing as telemetry
from devart.core.temporal import connect

#: The issue's goals, as ratios to the baseline measured in the same run.
GOAL_THROUGHPUT_RATIO, GOAL_P50_RATIO, GOAL_DISPATCH_P99_MS = 0.75, 1.5, 25.0
#: "Bounded memory": the stack's peak growth per in-flight run at the top of the sweep stays under this.
GOAL_KIB_PER_RUN = 512.0

FULL = {"concurrency": 10, "runs": 300, "rounds": 3, "runs_3": 60, "concurrency_3": 10,
        "levels": [1, 10, 100, 1000], "minimum": 20, "deadline": 1800.0,
        "api_clients": 16, "api_seconds": 10.0, "api_max": 500, "agents": 4, "agent_concurrency": 32,
        "fleet_per_run": 20, "fleet_rounds": 3, "fleet_deadline": 180.0}
#: Sized to stay under two minutes on a busy 2-CPU machine: a smoke check of the benchmark, not of the figures.
QUICK = {"concurrency": 5, "runs": 12, "rounds": 2, "runs_3": 2, "concurrency_3": 2,
         "levels": [1, 10, 50], "minimum": 5, "deadline": 90.0,
         "api_clients": 16, "api_seconds": 2.0, "api_max": 24, "agents": 2, "agent_concurrency": 32,
         "fleet_per_run": 3, "fleet_rounds": 1, "fleet_deadline": 30.0}


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    temporal = subprocess.run([services.temporal_binary(), "--version"], capture_output=True, text=True).stdout.strip()
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_gib, 1), "kernel": platform.release(),
            "python": sys.version.split()[0], "temporal": temporal,
            "load_average_start": [round(x, 2) for x in os.getloadavg()]}


async def headline(stack: bench_stack.BenchStack, api: httpx.AsyncClient, client: Any, cfg: dict[str, Any], *,
                   queue: str, pipeline: str, repo: str) -> tuple[Sample, Sample, dict[str, dict[str, float]]]:
    """Alternate baseline and devart rounds at the same concurrency; returns both (rounds added up) and the CPU
    milliseconds each process spent per run, by path."""
    base, devart = Sample(), Sample()
    pids = {"bench process": [os.getpid()], **stack.server_pids(), **stack.pids()}
    cpu = {path: CpuMeter(pids, own_only={"bench process"}) for path in ("baseline", "devart")}
    per_round = cfg["runs"] // cfg["rounds"]
    for i in range(cfg["rounds"]):
        cpu["baseline"].start()
        base.add(await closed_loop(baseline_run(client, queue), per_round, cfg["concurrency"], cfg["deadline"]))
        cpu["baseline"].stop()
        cpu["devart"].start()
        devart.add(await closed_loop(devart_run(api, client, pipeline, repo), per_round, cfg["concurrency"],
                                     cfg["deadline"]))
        cpu["devart"].stop()
        report.progress(f"round {i + 1}/{cfg['rounds']}: baseline {report.stats(base)['per_s']}/s, devart "
                        f"{report.stats(devart)['per_s']}/s so far")
    return base, devart, {"baseline": cpu["baseline"].per_run_ms(len(base.latencies)),
                          "devart": cpu["devart"].per_run_ms(len(devart.latencies))}


async def dispatch(cfg: dict[str, Any]) -> dict[str, Any]:
    """``bench.fleet.dispatch``, paced, bounded in time: a stalled broker fails this measure, not the benchmark."""
    try:
        result = await asyncio.wait_for(
            fleet.dispatch(cfg["fleet_per_run"], cfg["fleet_rounds"], fleet.PACED_STAGE_S), cfg["fleet_deadline"])
    except Exception as exc:
        report.progress(f"dispatch: failed ({type(exc).__name__}: {exc})")
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}
    report.progress(f"dispatch: devart lane p99 {result['devart_ms']['p99']} ms, raw {result['raw_ms']['p99']} ms")
    return dict(result)


def goals(r: dict[str, Any], quick: bool) -> list[dict[str, Any]]:
    thr = report.ratio(r["devart"]["per_s"], r["baseline"]["per_s"])
    p50 = report.ratio(r["devart"]["p50_ms"], r["baseline"]["p50_ms"])
    top = r["sweep"][-1]
    out = [{"goal": f"devart no-op throughput ≥ {GOAL_THROUGHPUT_RATIO}× baseline", "measured": f"{thr}×",
            "met": thr is not None and thr >= GOAL_THROUGHPUT_RATIO},
           {"goal": f"devart no-op latency p50 ≤ {GOAL_P50_RATIO}× baseline", "measured": f"{p50}×",
            "met": p50 is not None and p50 <= GOAL_P50_RATIO}]
    fleet_p99 = r["dispatch"]["fleet"].get("devart_ms", {}).get("p99")
    out.append({"goal": f"dispatch p99 ≤ {GOAL_DISPATCH_P99_MS:g} ms at 100 concurrent runs",
                "measured": f"{fleet_p99} ms (publish → agent receives; in the stack queued → claimed: "
                            f"{r['dispatch'].get('in_stack', {}).get('p99')} ms)",
                "met": fleet_p99 is not None and fleet_p99 <= GOAL_DISPATCH_P99_MS})
    kib = top["memory"]["total"]["per_run_kib"]
    out.append({"goal": "1,000 concurrent runs: 0 errors, bounded memory"
                        + (f" (quick mode: {top['in_flight']} in flight)" if quick else ""),
                "measured": f"{top['devart']['errors']} errors of {top['runs']}, {kib} KiB per in-flight run "
                            f"(bound {GOAL_KIB_PER_RUN:g})",
                "met": None if quick else (top["in_flight"] >= 1000 and top["devart"]["errors"] == 0
                                           and kib <= GOAL_KIB_PER_RUN)})
    return out


async def rabbitmq_version() -> str:
    try:
        return await asyncio.wait_for(fleet.broker_version(), 15)
    except Exception as exc:
        return f"unknown ({type(exc).__name__})"


async def run(stack: bench_stack.BenchStack, cfg: dict[str, Any], r: dict[str, Any]) -> None:
    """Every measurement, in order; each one's figures land in ``r`` as soon as they exist."""
    telemetry.setup("devart-bench")  # the same tracing as devart's processes, so the baseline pays it too
    r["machine"]["rabbitmq"] = await rabbitmq_version()
    client = await connect(stack.temporal_address)
    await bench_stack.start_agents(stack, cfg["agents"], cfg["agent_concurrency"])
    report.progress(f"stack up: API {stack.api_url}, Temporal {stack.temporal_address}, {cfg['agents']} agents")
    repo = stack.state / "repo"
    repo.mkdir()
    (repo / "README").write_text("benchmark repository\n")
    one, three = f"bench-noop-{uuid.uuid4().hex[:6]}", f"bench-noop3-{uuid.uuid4().hex[:6]}"
    queue = f"bench-baseline-{uuid.uuid4().hex[:6]}"
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    try:
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=60.0, limits=limits,
                                     headers=bench_stack.bearer()) as api, \
                baseline_worker(client, queue):
            await publish_pipeline(api, noop_pipeline(one, stack.capability, 1))
            await publish_pipeline(api, noop_pipeline(three, stack.capability, 3))
            # Warm-up: the first dispatch declares the lane and the agents start consuming it.
            await closed_loop(devart_run(api, client, one, str(repo)), 4, 2)
            await closed_loop(baseline_run(client, queue), 10, 5)
            base, devart, r["cpu_ms_per_run"] = await headline(stack, api, client, cfg, queue=queue, pipeline=one,
                                                               repo=str(repo))
            r["baseline"], r["devart"] = report.stats(base), report.stats(devart)
            r["ratios"] = {"throughput": report.ratio(r["devart"]["per_s"], r["baseline"]["per_s"]),
                           "p50": report.ratio(r["devart"]["p50_ms"], r["baseline"]["p50_ms"]),
                           "p99": report.ratio(r["devart"]["p99_ms"], r["baseline"]["p99_ms"])}
            r["devart_3"] = report.stats(await closed_loop(devart_run(api, client, three, str(repo)), cfg["runs_3"],
                                                           cfg["concurrency_3"], cfg["deadline"]))
            report.progress(f"three stages: {r['devart_3']['per_s']}/s")
            r["dispatch"] = {"concurrent_runs": fleet.CONCURRENT_RUNS, "fleet": await dispatch(cfg)}
            r["sweep"] = await scale.sweep(stack, api, client, pipeline=one, repo=str(repo), baseline_queue=queue,
                                           levels=cfg["levels"], minimum=cfg["minimum"], deadline=cfg["deadline"])
            in_stack = next((p for p in r["sweep"] if p["in_flight"] >= 100), r["sweep"][-1])
            r["dispatch"].update(in_stack=in_stack["dispatch_ms"], in_stack_in_flight=in_stack["in_flight"])
            r["api"] = await api_load.measure(stack.api_url, client, pipeline=one, repo=str(repo),
                                              clients=cfg["api_clients"], seconds=cfg["api_seconds"],
                                              max_requests=cfg["api_max"])
            report.progress(f"drained the API's runs in {r['api']['drain']['seconds']} s")
            r["breakdown"] = await breakdown(client, r["sweep"][0]["devart_run_ids"])
            r["baseline_breakdown"] = await breakdown(client, r["sweep"][0]["baseline_run_ids"])
    finally:
        await db.engine().dispose()


async def clean_broker(stack: bench_stack.BenchStack) -> None:
    """Remove the stack's exchanges and queues, once nothing of the stack is left to declare them again."""
    try:
        left = await asyncio.wait_for(bench_stack.delete_broker_objects(stack), 60)
    except Exception as exc:
        left = [f"everything ({type(exc).__name__})"]
    for item in left:
        report.progress(f"could not remove {item} from RabbitMQ (prefix {stack.env['AMQP_PREFIX']})")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke check in under two minutes (noisy figures)")
    parser.add_argument("--keep-state", action="store_true", help="keep the stack's state folder (logs) afterwards")
    parser.add_argument("--name", help="results file name under bench/results (default: latest, or quick)")
    parser.add_argument("--results", type=Path, default=report.RESULTS, help="folder for the results files")
    args = parser.parse_args()
    args.name = args.name or ("quick" if args.quick else "latest")
    cfg = QUICK if args.quick else FULL
    r: dict[str, Any] = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "quick": args.quick,
                         "command": shlex.join([".venv/bin/python", "-m", "bench", *sys.argv[1:]]),
                         "machine": machine(), "settings": cfg}
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the stack below is always taken down.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    report.progress("starting the stack (Temporal, PostgreSQL, API, worker)")
    stack = bench_stack.start(keep_state=args.keep_state)
    try:
        asyncio.run(run(stack, cfg, r))
    except BaseException:
        partial = args.results / f"{args.name}.partial.json"
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(r, indent=2, default=str) + "\n")
        report.progress(f"failed; the figures measured so far are in {partial}")
        raise
    finally:
        report.progress("stopping the stack")
        bench_stack.stop(stack)
        asyncio.run(clean_broker(stack))
    info = r["machine"]
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    info["summary"] = (f"{info['cpus']} CPUs ({info['cpu']}), {info['memory_gib']} GiB, Linux {info['kernel']}, "
                       f"Python {info['python']}, RabbitMQ {info['rabbitmq']}, {info['temporal']}; load average "
                       f"{info['load_average_start'][0]} at start, {info['load_average_end'][0]} at end")
    r["goals"] = goals(r, args.quick)
    paths = report.write(r, args.name, args.results)
    print(report.markdown(r))
    shown = [str(p.relative_to(Path.cwd())) if p.is_relative_to(Path.cwd()) else str(p) for p in paths]
    print(f"\nwrote {', '.join(shown)}")


if __name__ == "__main__":
    main()
