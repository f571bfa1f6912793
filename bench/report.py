"""Figures and their reports: percentiles, the Markdown table, ``latest.json`` / ``latest.md`` / ``latest.png``."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import rounds
from bench.stats import percentile as percentile

if TYPE_CHECKING:
    from bench.scale import Sample

RESULTS = Path(__file__).resolve().parent / "results"
_STARTED = time.monotonic()


def progress(message: str) -> None:
    """A progress line on stderr (stdout carries the table)."""
    print(f"[{time.monotonic() - _STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def latency(seconds: list[float]) -> dict[str, float]:
    """p50 / p99 / mean in milliseconds (empty when there is nothing to summarise)."""
    if not seconds:
        return {}
    return {"p50": round(percentile(seconds, 50) * 1e3, 2), "p99": round(percentile(seconds, 99) * 1e3, 2),
            "mean": round(statistics.fmean(seconds) * 1e3, 2), "n": len(seconds)}


def stats(sample: Sample) -> dict[str, Any]:
    """Throughput (successful runs over wall time), latency and errors of one measurement."""
    lat = latency(sample.latencies)
    return {"n": len(sample.latencies), "errors": sample.errors, "seconds": round(sample.seconds, 3),
            "per_s": round(len(sample.latencies) / sample.seconds, 2) if sample.seconds else 0.0,
            "p50_ms": lat.get("p50"), "p99_ms": lat.get("p99"), "mean_ms": lat.get("mean"),
            "error_messages": sample.error_messages}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


#: What the CPU table says of RabbitMQ: the stack shares the machine's broker, whose CPU cannot be split by vhost
#: or prefix from outside it.
RABBITMQ_NOTE = ("rabbitmq: the whole broker (beam.smp), which cannot be split by prefix; this stack is its only "
                 "user on a quiet machine, and anything else using it during a step is counted in that step")


def _ladder(lad: dict[str, Any]) -> list[str]:
    """The ladder: pooled figures, the per-round ratios to (a) with their median and spread, CPU per run."""
    steps = lad["steps"]
    out = [f"Floor ladder: {lad['concurrency']} runs in flight, {lad['rounds']} alternated rounds of "
           f"{lad['runs_per_round']} runs per step ({', '.join(s['key'] for s in steps)}, …). Ratios are the step's "
           "figure ÷ (a)'s in the same round; judged on their median, with the spread (min–max) beside it.", "",
           "| step | runs/s | p50 ms | p99 ms | n | errors | throughput ÷ (a), median of rounds (min–max) "
           "| pooled | p50 ÷ (a), median | CPU ms per run |",
           "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
    a = steps[0]
    for s in steps:
        first = s is a
        out.append(f"| ({s['key']}) {s['label']} | {s['per_s']} | {s['p50_ms']} | {s['p99_ms']} | {s['n']} "
                   f"| {s['errors']} | {'' if first else rounds.describe(s['throughput_ratio'])} "
                   f"| {'' if first else str(ratio(s['per_s'], a['per_s'])) + '×'} "
                   f"| {'' if first else str(s['p50_ratio']['median']) + '×'} | {s['cpu_ms_per_run']['total']} |")
    n = lad["rounds"]
    out += ["", "| step, per round: runs/s (throughput ÷ (a)) | " + " | ".join(f"round {i + 1}" for i in range(n))
            + " |", "| --- |" + " ---: |" * n]
    for s in steps:
        cells = [f"{rd['per_s']}" + ("" if s is a else f" ({s['throughput_ratio']['rounds'][i]}×)")
                 + (f", {rd['errors']} errors" if rd["errors"] else "") for i, rd in enumerate(s["rounds"])]
        out.append(f"| ({s['key']}) | " + " | ".join(cells) + " |")
    roles = list(a["cpu_ms_per_run"])
    out += ["", "CPU milliseconds per run, by process, during each step's rounds (the bench process hosts the "
            "in-process workers of (a), (b) and (c) and drives every step; the floor consumer is (b) and (c)'s "
            "other process):", "", "| step | " + " | ".join(roles) + " |", "| --- |" + " ---: |" * len(roles)]
    out += [f"| ({s['key']}) | " + " | ".join(str(s["cpu_ms_per_run"].get(role, "")) for role in roles) + " |"
            for s in steps]
    out += ["", f"<sub>{RABBITMQ_NOTE}.</sub>"]
    return out


def _latency_1(lat: dict[str, Any]) -> list[str]:
    a, d = lat["steps"][0], lat["steps"][-1]
    out = [f"Latency at 1 in flight: {lat['rounds']} alternated rounds of {lat['runs_per_round']} runs per side.", "",
           "| side | p50 ms | p99 ms | mean ms | n | errors | per-round p50 ms |",
           "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    out += [f"| ({s['key']}) {s['label']} | {s['p50_ms']} | {s['p99_ms']} | {s['mean_ms']} | {s['n']} | "
            f"{s['errors']} | {', '.join(str(rd['p50_ms']) for rd in s['rounds'])} |" for s in (a, d)]
    out += ["", f"p50 ratio (d) ÷ (a) at 1 in flight: **{ratio(d['p50_ms'], a['p50_ms'])}×** pooled; per round "
            f"{rounds.describe(d['p50_ratio'])}."]
    if steps := lat.get("breakdown"):
        names = list(dict.fromkeys(name for side in steps.values() for name in side))
        out += ["", "Where the time goes at 1 in flight (median ms per run, from the histories and the task rows):", "",
                "| step | (a) | (d) |", "| --- | ---: | ---: |"]
        out += [f"| {name} | {steps.get('a', {}).get(name, '')} | {steps.get('d', {}).get(name, '')} |"
                for name in names]
    return out


def _dispatch(d: dict[str, Any]) -> list[str]:
    out = ["", "| dispatch | p50 ms | p99 ms | n |", "| --- | ---: | ---: | ---: |"]
    if load := d.get("under_load"):
        s, f = load["devart"], load["floor"]
        rounds_ = f"{load['rounds']} alternated rounds of {load['runs_per_round']} runs per side"
        out += [f"| **judged**: devart in the stack, queued → claimed (the claim included), {load['in_flight']} runs "
                f"in flight, from the task rows ({rounds_}; p99 per round: "
                f"{', '.join(str(x.get('p99')) for x in load['devart_rounds'])}) | {s.get('p50')} | {s.get('p99')} | "
                f"{s.get('n')} |",
                f"| floor at the same load: the ladder's (c), activity start → claim's heartbeat answered (p99 per "
                f"round: {', '.join(str(x.get('p99')) for x in load['floor_rounds'])}) | {f.get('p50')} | "
                f"{f.get('p99')} | {f.get('n')} |"]
    f = d["fleet"]
    if f.get("error"):
        out.append(f"| floor: bench.fleet failed: {f['error']} | | | |")
    else:
        out += [f"| paced: publish → agent receives, devart lane (bench.fleet, {d['concurrent_runs']} runs, paced) "
                f"| {f['devart_ms']['p50']} | {f['devart_ms']['p99']} | {f['devart_ms']['n']} |",
                f"| paced: the same on raw aio-pika | {f['raw_ms']['p50']} | {f['raw_ms']['p99']} "
                f"| {f['raw_ms']['n']} |"]
    return out


def markdown(r: dict[str, Any]) -> str:
    """The whole result as Markdown: the ladder and its rounds, latency at 1 in flight, dispatch, API, sweep,
    breakdown, goals."""
    out = [f"{r['settings']['agents']} noop agents × concurrency {r['settings']['agent_concurrency']}.", ""]
    out += _ladder(r["ladder"])
    d3 = r["devart_3"]
    out += ["", f"devart, 3 noop stages in a chain, {r['settings']['concurrency_3']} in flight: {d3['per_s']} runs/s, "
            f"p50 {d3['p50_ms']} ms, p99 {d3['p99_ms']} ms, {d3['n']} runs, {d3['errors']} errors.", ""]
    out += _latency_1(r["latency_1"])
    out += _dispatch(r["dispatch"])
    a = r["api"]
    p = a["post"]
    out += ["", f"API: {a['clients']} clients, `POST /v1/runs` {p['per_s']}/s, p50 {p['p50_ms']} ms, p99 "
            f"{p['p99_ms']} ms, {p['n']} accepted, {p['errors']} refused or failed (statuses {a['statuses']}); "
            f"the {a['drain']['runs']} runs drained in {a['drain']['seconds']} s, {a['drain']['failed']} failed."]
    out += ["", "| in flight | runs | baseline runs/s | devart runs/s | ratio | baseline p50 / p99 ms "
            "| devart p50 / p99 ms | errors (baseline / devart) | RSS peak MiB (api / worker / agents) "
            "| KiB per in-flight run |",
            "| ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | --- | ---: |"]
    for pt in r["sweep"]:
        b, v, m = pt["baseline"], pt["devart"], pt["memory"]
        out.append(f"| {pt['in_flight']} | {pt['runs']} | {b['per_s']} | {v['per_s']} | "
                   f"{ratio(v['per_s'], b['per_s'])}× | {b['p50_ms']} / {b['p99_ms']} | {v['p50_ms']} / "
                   f"{v['p99_ms']} | {b['errors']} / {v['errors']} | {m['api']['peak_mib']} / "
                   f"{m['worker']['peak_mib']} / {m['agents']['peak_mib']} | {m['total']['per_run_kib']} |")
    errors = [m for pt in r["sweep"] for m in pt["devart"]["error_messages"]][:3]
    if errors:
        out += ["", "First devart errors in the sweep: " + "; ".join(f"`{e[:160]}`" for e in errors)]
    if r.get("breakdown"):
        base_steps = r.get("baseline_breakdown", {})
        out += ["", "Where a run's time goes: median ms per run at 1 in flight, from the Temporal histories (and the "
                "task_attempts rows):", "", "| step | devart ms | baseline ms |", "| --- | ---: | ---: |"]
        out += [f"| {step} | {ms} | {base_steps.get(step, '')} |"
                for step, ms in sorted(r["breakdown"].items(), key=lambda kv: -kv[1])]
        out += [f"| {step} | | {ms} |" for step, ms in base_steps.items() if step not in r["breakdown"]]
    out += ["", "| goal | measured | met |", "| --- | --- | --- |"]
    verdict = {True: "yes", False: "**no**", None: "not judged (quick mode or level not measured)"}
    out += [f"| {g['goal']} | {g['measured']} | {verdict[g['met']]} |" for g in r["goals"]]
    return "\n".join(out)


def chart(r: dict[str, Any], path: Path) -> None:
    """Latency (p50, p99) and throughput against runs in flight, baseline and devart, log-scaled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [pt["in_flight"] for pt in r["sweep"]]
    fig, (lat, thr) = plt.subplots(1, 2, figsize=(11, 4.2))
    for path_name, colour in (("baseline", "tab:blue"), ("devart", "tab:orange")):
        lat.plot(xs, [pt[path_name]["p50_ms"] for pt in r["sweep"]], "o-", color=colour, label=f"{path_name} p50")
        lat.plot(xs, [pt[path_name]["p99_ms"] for pt in r["sweep"]], "o--", color=colour, label=f"{path_name} p99")
        thr.plot(xs, [pt[path_name]["per_s"] for pt in r["sweep"]], "o-", color=colour, label=path_name)
    for ax, title, unit in ((lat, "end-to-end latency", "ms"), (thr, "throughput", "runs / s")):
        ax.set_xscale("log")
        ax.set_xlabel("runs in flight")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    lat.set_yscale("log")
    thr.set_ylim(bottom=0)
    fig.suptitle(f"devart no-op stage vs bare Temporal ({r['machine']['cpus']} CPUs, {r['when']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(r: dict[str, Any], name: str = "latest", directory: Path = RESULTS) -> list[Path]:
    """Write ``<name>.json``, ``<name>.md`` and ``<name>.png`` under ``directory``; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{name}.json", directory / f"{name}.md", directory / f"{name}.png"]
    paths[0].write_text(json.dumps(r, indent=2, default=str) + "\n")
    paths[1].write_text(f"# devart pipeline benchmark, {r['when']}\n\n`{r['command']}` on {r['machine']['summary']}\n\n"
                        + markdown(r) + "\n")
    chart(r, paths[2])
    return paths
