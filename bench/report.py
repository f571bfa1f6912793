"""Figures and their reports: percentiles, the Markdown table, ``latest.json`` / ``latest.md`` / ``latest.png``."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


def _row(label: str, s: dict[str, Any], base: dict[str, Any] | None = None) -> str:
    cells = [label, f"{s['per_s']}", f"{s['p50_ms']}", f"{s['p99_ms']}", f"{s['n']}", f"{s['errors']}"]
    if base is not None:
        cells += [f"{ratio(s['per_s'], base['per_s'])}×", f"{ratio(s['p50_ms'], base['p50_ms'])}×"]
    else:
        cells += ["", ""]
    return "| " + " | ".join(cells) + " |"


def markdown(r: dict[str, Any]) -> str:
    """The whole result as Markdown: headline table, dispatch, API, sweep, memory, breakdown, goals."""
    base, c = r["baseline"], r["settings"]["concurrency"]
    out = [f"Concurrency {c}, {r['settings']['rounds']} alternating round(s); {r['settings']['agents']} noop "
           f"agents × concurrency {r['settings']['agent_concurrency']}. Ratios are devart ÷ baseline.", "",
           "| measure | runs/s | p50 ms | p99 ms | n | errors | throughput ratio | p50 ratio |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
           _row("bare Temporal workflow, 1 no-op activity (baseline)", base),
           _row("devart, 1 noop stage", r["devart"], base),
           _row("devart, 3 noop stages in a chain", r["devart_3"], base)]
    if r.get("cpu_ms_per_run"):
        roles = list(r["cpu_ms_per_run"]["devart"])
        out += ["", "CPU milliseconds per run, by process, during the rounds above (the bench process hosts the "
                "baseline's worker and drives both; RabbitMQ is the machine's, shared with anything else using it):",
                "", "| path | " + " | ".join(roles) + " |", "| --- |" + " ---: |" * len(roles)]
        out += [f"| {p} | " + " | ".join(str(r["cpu_ms_per_run"][p].get(role, "")) for role in roles) + " |"
                for p in ("baseline", "devart")]
    d = r["dispatch"]
    out += ["", "| dispatch, publish → agent receives | p50 ms | p99 ms | n |", "| --- | ---: | ---: | ---: |"]
    f = d["fleet"]
    if f.get("error"):
        out.append(f"| bench.fleet failed: {f['error']} | | | |")
    else:
        out += [f"| devart lane (bench.fleet, {d['concurrent_runs']} runs, paced) | {f['devart_ms']['p50']} "
                f"| {f['devart_ms']['p99']} | {f['devart_ms']['n']} |",
                f"| raw aio-pika (same run) | {f['raw_ms']['p50']} | {f['raw_ms']['p99']} | {f['raw_ms']['n']} |"]
    if d.get("in_stack"):
        s = d["in_stack"]
        out.append(f"| in the stack, queued → claimed (claim included), {d['in_stack_in_flight']} runs in flight "
                   f"| {s['p50']} | {s['p99']} | {s['n']} |")
    a = r["api"]
    p = a["post"]
    out += ["", f"API: {a['clients']} clients, `POST /v1/runs` {p['per_s']}/s, p50 {p['p50_ms']} ms, p99 "
            f"{p['p99_ms']} ms, {p['n']} accepted, {p['errors']} refused or failed (statuses {a['statuses']}); "
            f"the {a['drain']['runs']} runs drained in {a['drain']['seconds']} s, {a['drain']['failed']} failed."]
    out += ["", "| in flight | runs | baseline runs/s | devart runs/s | ratio | baseline p50 / p99 ms "
            "| devart p50 / p99 ms | errors | RSS peak MiB (api / worker / agents) | KiB per in-flight run |",
            "| ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | --- | ---: |"]
    for pt in r["sweep"]:
        b, v, m = pt["baseline"], pt["devart"], pt["memory"]
        out.append(f"| {pt['in_flight']} | {pt['runs']} | {b['per_s']} | {v['per_s']} | "
                   f"{ratio(v['per_s'], b['per_s'])}× | {b['p50_ms']} / {b['p99_ms']} | {v['p50_ms']} / "
                   f"{v['p99_ms']} | {b['errors']} / {v['errors']} | {m['api']['peak_mib']} / "
                   f"{m['worker']['peak_mib']} / {m['agents']['peak_mib']} | {m['total']['per_run_kib']} |")
    if r.get("breakdown"):
        base_steps = r.get("baseline_breakdown", {})
        out += ["", "Where a run's time goes: median ms per run at 1 in flight, from the Temporal histories (and the "
                "task_attempts rows):", "", "| step | devart ms | baseline ms |", "| --- | ---: | ---: |"]
        out += [f"| {step} | {ms} | {base_steps.get(step, '')} |"
                for step, ms in sorted(r["breakdown"].items(), key=lambda kv: -kv[1])]
        out += [f"| {step} | | {ms} |" for step, ms in base_steps.items() if step not in r["breakdown"]]
    out += ["", "| goal | measured | met |", "| --- | --- | --- |"]
    verdict = {True: "yes", False: "**no**", None: "not measured (quick mode)"}
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
