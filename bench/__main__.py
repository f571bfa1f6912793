"""``python -m bench [--quick]``: devart's pipeline overhead against bare Temporal and RabbitMQ, in one run.

Starts a stack of its own (``bench.stack``), then measures, in alternated rounds so every side sees the same
machine load:

1. the floor ladder (``bench.floor``): (a) a bare workflow with one in-process no-op activity, (b) + a confirmed
   quorum-queue hop completed by task token from another process, (c) + the claim's heartbeat by token, (d)
   devart's one-stage noop pipeline; each step's throughput, p50/p99, per-round ratios to (a) with their median
   and spread (``bench.rounds``), and the CPU each process spends per run; then a three-stage devart chain;
2. latency at 1 in flight: (a) against (d) in alternated rounds;
3. dispatch: queued → claimed at 100 runs in flight, devart (from the task rows; the judged figure) against the
   ladder's (c) (the same hand-over and claim without devart's code) in alternated rounds, beside publish → agent
   receives on a devart lane and on raw aio-pika, paced (``bench.fleet.dispatch``);
4. the API: ``POST /v1/runs`` under concurrent clients (``bench.api_load``);
5. the scale sweep: 1 … 5,000 runs in flight, errors and memory per in-flight run (``bench.scale``);
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

from bench import api_load, fleet, report, rounds, scale
from bench import stack as bench_stack
from bench.floor import Floor, Step, alternate, floor
from bench.pipeline import noop_pipeline
from bench.scale import One, baseline_run, baseline_worker, closed_loop, devart_run
from bench.scale import publish as publish_pipeline
from bench.timeline import breakdown, claim_seconds
from devart.core.database import db
from devart.core.devstack import services
from devart.core.telemetry import tracing as telemetry
from devart.core.temporal import connect

#: The issue's goals, as ratios to the baseline measured in the same run.
GOAL_THROUGHPUT_RATIO, GOAL_P50_RATIO, GOAL_DISPATCH_P99_MS = 0.75, 1.5, 25.0
#: "Bounded memory": the stack's peak growth per in-flight run at the top of the sweep stays under this.
GOAL_KIB_PER_RUN = 512.0

#: ``concurrency`` runs in flight for the ladder (``ladder_rounds`` rounds of ``ladder_runs`` runs per step);
#: ``latency_rounds`` × ``latency_runs`` runs per side at 1 in flight; the sweep's ``levels``, each of at least
#: ``minimum`` runs; dispatch at ``dispatch_in_flight`` in flight, ``dispatch_rounds`` alternated rounds of
#: ``dispatch_runs`` runs per side; ``deadline``: seconds one run may take (5,000 runs in flight at ~17 runs/s
#: take ~5 minutes on 2 CPUs, so the last of them needs several times that on a busy machine).
FULL = {"concurrency": 10, "ladder_rounds": 4, "ladder_runs": 100, "latency_rounds": 4, "latency_runs": 30,
        "runs_3": 60, "concurrency_3": 10, "dispatch_in_flight": 100, "dispatch_rounds": 3, "dispatch_runs": 100,
        "levels": [1, 10, 100, 1000, 5000], "minimum": 100, "deadline": 2400.0,
        "api_clients": 16, "api_seconds": 10.0, "api_max": 500, "agents": 4, "agent_concurrency": 32,
        "fleet_per_run": 20, "fleet_rounds": 3, "fleet_deadline": 180.0}
#: Sized to stay under two minutes on a busy 2-CPU machine: a smoke check of the benchmark, not of the figures.
QUICK = {"concurrency": 10, "ladder_rounds": 3, "ladder_runs": 10, "latency_rounds": 3, "latency_runs": 4,
         "runs_3": 2, "concurrency_3": 2, "dispatch_in_flight": 20, "dispatch_rounds": 1, "dispatch_runs": 20,
         "levels": [1, 10, 100], "minimum": 10, "deadline": 90.0,
         "api_clients": 16, "api_seconds": 2.0, "api_max": 24, "agents": 2, "agent_concurrency": 32,
         "fleet_per_run": 3, "fleet_rounds": 1, "fleet_deadline": 30.0}
#: The sweep levels the scale goal is judged at.
SCALE_LEVELS = (1000, 5000)


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    temporal = subprocess.run([services.temporal_binary(), "--version"], capture_output=True, text=True).stdout.strip()
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_gib, 1), "kernel": platform.release(),
            "python": sys.version.split()[0], "temporal": temporal,
            "load_average_start": [round(x, 2) for x in os.getloadavg()]}


#: Runs per side whose histories ``breakdown`` reads at 1 in flight.
BREAKDOWN_RUNS = 60


async def claims_under_load(stack: bench_stack.BenchStack, hop: Floor, devart: One, cfg: dict[str, Any],
                            pids: dict[str, list[int]]) -> dict[str, Any]:
    """Queued → claimed at ``dispatch_in_flight`` runs in flight: the ladder's (c) (a confirmed quorum-queue hop and
    a claim by heartbeat from another process, nothing of devart) against devart, in alternated rounds.

    Both sides are timed from the same point (the activity's start, where devart writes the attempt's row before
    it publishes) to the same point (the claim's heartbeat answered; devart's claimed_at is written after it), so
    (c)'s figure is what any design that hands a task over and checks it with Temporal before work starts pays on
    this machine at this load, and the gap to devart is devart's own."""
    n = cfg["dispatch_in_flight"]
    steps = [Step("c", "the floor's hand-over and claim", hop.run(True)), Step("d", "devart, 1 noop stage", devart)]
    measured = await alternate(steps, rounds_=cfg["dispatch_rounds"], per_round=cfg["dispatch_runs"], concurrency=n,
                               deadline=cfg["deadline"], pids=pids, own_only={"bench process"},
                               alive=[stack, hop.consumer], name=f"dispatch at {n} in flight")
    floor_s = [[hop.claimed_ms[i] / 1e3 for i in r.ids] for r in steps[0].rounds]
    devart_s = [await claim_seconds(r.ids) for r in steps[1].rounds]
    return {"in_flight": n, "rounds": cfg["dispatch_rounds"], "runs_per_round": cfg["dispatch_runs"],
            "floor": report.latency([x for r in floor_s for x in r]),
            "devart": report.latency([x for r in devart_s for x in r]),
            "floor_rounds": [report.latency(r) for r in floor_s],
            "devart_rounds": [report.latency(r) for r in devart_s],
            "throughput": {s["key"]: s["per_s"] for s in measured["steps"]}}


async def ladder(stack: bench_stack.BenchStack, api: httpx.AsyncClient, client: Any, cfg: dict[str, Any], *,
                 queue: str, pipeline: str, repo: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The floor ladder at ``concurrency`` in flight, dispatch under load (``claims_under_load``), then (a) against
    (d) at 1 in flight; all in alternated rounds, the ladder's CPU per run counted by process (the consumer's
    included)."""
    async with floor(stack, client) as hop:
        pids = {"bench process": [os.getpid()], **stack.server_pids(), **stack.pids(),
                "floor consumer": [hop.consumer.proc.pid]}
        await closed_loop(hop.run(False), 10, 5)  # warm-up: the queue's leader, the consumer's connections
        await closed_loop(hop.run(True), 10, 5)
        steps = [Step("a", "bare workflow, 1 in-process no-op activity", baseline_run(client, queue)),
                 Step("b", "+ confirmed quorum-queue hop, completed by token from another process", hop.run(False)),
                 Step("c", "+ the claim (heartbeat by token), then complete", hop.run(True)),
                 Step("d", "devart, 1 noop stage (API, worker, agents)", devart_run(api, client, pipeline, repo))]
        steps_at_10 = await alternate(steps, rounds_=cfg["ladder_rounds"], per_round=cfg["ladder_runs"],
                                      concurrency=cfg["concurrency"], deadline=cfg["deadline"], pids=pids,
                                      own_only={"bench process"}, alive=[stack, hop.consumer])
        under_load = await claims_under_load(stack, hop, devart_run(api, client, pipeline, repo), cfg, pids)
    sides = [Step("a", "bare workflow", baseline_run(client, queue)),
             Step("d", "devart, 1 noop stage", devart_run(api, client, pipeline, repo))]
    at_1 = await alternate(sides, rounds_=cfg["latency_rounds"], per_round=cfg["latency_runs"], concurrency=1,
                           deadline=cfg["deadline"], pids={"bench process": [os.getpid()]},
                           own_only={"bench process"}, alive=[stack], name="1 in flight")
    # Where a run's time goes at 1 in flight, where no step waits behind another run.
    at_1["breakdown"] = {side.key: await breakdown(client, [i for r in side.rounds for i in r.ids][:BREAKDOWN_RUNS])
                         for side in sides}
    return steps_at_10, under_load, at_1


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
    """The issue's goals, each judged on the figure it names (``met`` is None where quick mode cannot tell)."""
    a, d = r["ladder"]["steps"][0], r["ladder"]["steps"][-1]
    thr = d["throughput_ratio"]
    one = r["latency_1"]["steps"]
    p50_1 = report.ratio(one[-1]["p50_ms"], one[0]["p50_ms"])
    p50_10 = report.ratio(d["p50_ms"], a["p50_ms"])
    out = [{"key": "throughput", "goal": f"devart no-op throughput ≥ {GOAL_THROUGHPUT_RATIO}× (a), median of "
            f"rounds at {r['ladder']['concurrency']} in flight",
            "measured": f"{rounds.describe(thr)}; pooled {report.ratio(d['per_s'], a['per_s'])}×",
            "met": thr["median"] is not None and thr["median"] >= GOAL_THROUGHPUT_RATIO},
           {"key": "latency", "goal": f"devart no-op latency p50 ≤ {GOAL_P50_RATIO}× (a) at 1 in flight",
            "measured": f"{p50_1}× ({one[-1]['p50_ms']} against {one[0]['p50_ms']} ms, {one[0]['n']} / "
                        f"{one[-1]['n']} samples; rounds {rounds.describe(one[-1]['p50_ratio'])}); at "
                        f"{r['ladder']['concurrency']} in flight {p50_10}×, which restates throughput",
            "met": p50_1 is not None and p50_1 <= GOAL_P50_RATIO}]
    dispatch_ = r["dispatch"]
    in_stack, at = dispatch_.get("in_stack", {}).get("p99"), dispatch_.get("in_stack_in_flight")
    load = dispatch_["under_load"]
    paced_p99 = dispatch_["fleet"].get("devart_ms", {}).get("p99")
    out.append({"key": "dispatch", "goal": f"dispatch p99 ≤ {GOAL_DISPATCH_P99_MS:g} ms at 100 runs in flight, "
                "queued → claimed in the stack",
                "measured": f"{in_stack} ms at {at} in flight, {load['devart'].get('n')} claims over {load['rounds']} "
                            f"rounds (per round {', '.join(str(x.get('p99')) for x in load['devart_rounds'])}); the "
                            f"floor's (c) at the same load, alternated: {load['floor'].get('p99')} ms; paced, "
                            f"publish → agent receives on a devart lane: {paced_p99} ms",
                "met": None if at != 100 or in_stack is None else in_stack <= GOAL_DISPATCH_P99_MS})
    top = [p for p in r["sweep"] if p["in_flight"] in SCALE_LEVELS] or r["sweep"][-1:]
    measured = "; ".join(f"{p['in_flight']} in flight: {p['devart']['errors']} errors of {p['runs']}, "
                         f"{p['memory']['total']['per_run_kib']} KiB per in-flight run" for p in top)
    out.append({"key": "scale", "goal": "0 errors at 1,000 and 5,000 in flight, memory bounded "
                f"(≤ {GOAL_KIB_PER_RUN:g} KiB per in-flight run)" + (" (quick mode: smaller levels)" if quick else ""),
                "measured": measured,
                "met": None if quick or {p["in_flight"] for p in top} != set(SCALE_LEVELS) else all(
                    p["devart"]["errors"] == 0 and p["memory"]["total"]["per_run_kib"] <= GOAL_KIB_PER_RUN
                    for p in top)})
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
    # More connections than starts in flight (``scale.STARTS_IN_FLIGHT``), so no request waits for one; a slow
    # answer under 5,000 runs in flight is the API's figure, and the run's deadline bounds it, not the client.
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    timeout = httpx.Timeout(120.0, pool=None)
    try:
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=timeout, limits=limits,
                                     headers=bench_stack.bearer()) as api, \
                baseline_worker(client, queue):
            await publish_pipeline(api, noop_pipeline(one, stack.capability, 1))
            await publish_pipeline(api, noop_pipeline(three, stack.capability, 3))
            # Warm-up: the first dispatch declares the lane and the agents start consuming it.
            await closed_loop(devart_run(api, client, one, str(repo)), 4, 2)
            await closed_loop(baseline_run(client, queue), 10, 5)
            if cfg.get("sweep_levels"):
                r["sweep"] = []
                await scale.sweep(stack, api, client, pipeline=one, repo=str(repo), baseline_queue=queue,
                                  levels=cfg["sweep_levels"], minimum=cfg["minimum"], deadline=cfg["deadline"],
                                  points=r["sweep"])
                return
            r["ladder"], under_load, r["latency_1"] = await ladder(stack, api, client, cfg, queue=queue,
                                                                   pipeline=one, repo=str(repo))
            r["dispatch"] = {"concurrent_runs": fleet.CONCURRENT_RUNS, "under_load": under_load,
                             "in_stack": under_load["devart"], "in_stack_in_flight": under_load["in_flight"]}
            a, d = r["ladder"]["steps"][0], r["ladder"]["steps"][-1]
            r["baseline"], r["devart"] = a, d
            r["ratios"] = {"throughput": d["throughput_ratio"]["median"],
                           "throughput_pooled": report.ratio(d["per_s"], a["per_s"]),
                           "p50_at_1": report.ratio(r["latency_1"]["steps"][-1]["p50_ms"],
                                                    r["latency_1"]["steps"][0]["p50_ms"]),
                           "p50": report.ratio(d["p50_ms"], a["p50_ms"]), "p99": report.ratio(d["p99_ms"], a["p99_ms"])}
            if cfg.get("ladder_only"):
                return
            r["devart_3"] = report.stats(await closed_loop(devart_run(api, client, three, str(repo)), cfg["runs_3"],
                                                           cfg["concurrency_3"], cfg["deadline"]))
            report.progress(f"three stages: {r['devart_3']['per_s']}/s")
            r["dispatch"]["fleet"] = await dispatch(cfg)
            r["sweep"] = []
            await scale.sweep(stack, api, client, pipeline=one, repo=str(repo), baseline_queue=queue,
                              levels=cfg["levels"], minimum=cfg["minimum"], deadline=cfg["deadline"], points=r["sweep"])
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
    parser.add_argument("--ladder-only", action="store_true",
                        help="only the floor ladder, dispatch at 100 in flight and the latency at 1 in flight (a "
                             "few minutes; no goals judged)")
    parser.add_argument("--sweep", type=lambda v: [int(n) for n in v.split(",")], metavar="LEVELS",
                        help="only the scale sweep, at these levels (e.g. 5000): errors and memory per in-flight run")
    parser.add_argument("--keep-state", action="store_true", help="keep the stack's state folder (logs) afterwards")
    parser.add_argument("--name", help="results file name under bench/results (default: latest, or quick)")
    parser.add_argument("--results", type=Path, default=report.RESULTS, help="folder for the results files")
    args = parser.parse_args()
    args.name = args.name or ("quick" if args.quick else "latest")
    cfg = dict(QUICK if args.quick else FULL, ladder_only=args.ladder_only, sweep_levels=args.sweep)
    r: dict[str, Any] = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "quick": args.quick,
                         "command": shlex.join([".venv/bin/python", "-m", "bench", *sys.argv[1:]]),
                         "machine": machine(), "settings": cfg}
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the stack below is always taken down.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    args.results.mkdir(parents=True, exist_ok=True)  # before minutes of measuring, not when they are written
    report.progress("starting the stack (Temporal, PostgreSQL, API, worker)")
    stack = bench_stack.start(keep_state=args.keep_state)
    try:
        asyncio.run(run(stack, cfg, r))
    except BaseException:
        partial = args.results / f"{args.name}.partial.json"
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
    if args.sweep:
        for point in r["sweep"]:
            print(f"{point['in_flight']} in flight: baseline {point['baseline']['per_s']}/s, devart "
                  f"{point['devart']['per_s']}/s, errors {point['baseline']['errors']} / {point['devart']['errors']} "
                  f"{point['devart']['error_messages'][:1]}, {point['memory']['total']['per_run_kib']} KiB per "
                  f"in-flight run, dispatch {point['dispatch_ms']}")
    if args.ladder_only or args.sweep:
        for step in r.get("ladder", {}).get("steps", []) + r.get("latency_1", {}).get("steps", []):
            print(f"{step['key']} {step['label'][:40]:40} {step['per_s']:7.2f}/s p50 {step['p50_ms']:7.1f} ms "
                  f"throughput {rounds.describe(step['throughput_ratio'])} p50 {rounds.describe(step['p50_ratio'])}"
                  f" CPU ms/run {step.get('cpu_ms_per_run')}")
        if load := r.get("dispatch", {}).get("under_load"):
            print(f"dispatch at {load['in_flight']} in flight, queued → claimed: devart p50 "
                  f"{load['devart'].get('p50')} p99 {load['devart'].get('p99')} ms; floor (c) p50 "
                  f"{load['floor'].get('p50')} p99 {load['floor'].get('p99')} ms")
        for key, steps in r.get("latency_1", {}).get("breakdown", {}).items():
            print(f"at 1 in flight, ({key}), median ms: " + ", ".join(f"{k} {v}" for k, v in steps.items()))
        written = args.results / f"{args.name}.json"
        written.write_text(json.dumps(r, indent=2, default=str) + "\n")
        print(f"\nwrote {written}")
        return
    r["goals"] = goals(r, args.quick)
    paths = report.write(r, args.name, args.results)
    print(report.markdown(r))
    shown = [str(p.relative_to(Path.cwd())) if p.is_relative_to(Path.cwd()) else str(p) for p in paths]
    print(f"\nwrote {', '.join(shown)}")


if __name__ == "__main__":
    main()
