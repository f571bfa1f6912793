"""The self-healing benchmark's figures read against the issue's goals, and printed as Markdown tables.

Success rates count the held-out scenarios a remedy could fix (every kind but the controls); the controls are
reported on their own, since they must fail in both modes. A ratio with no blind success is infinite when the assisted
mode healed anything, and is printed so rather than as a large number.
"""

from __future__ import annotations

import math
from typing import Any

#: The issue's goals.
GOAL_RATIO, GOAL_TOP3, GOAL_P99_MS, GOAL_RECALL = 2.0, 0.86, 10.0, 0.95


def _rate(runs: list[dict[str, Any]]) -> float:
    return sum(r["status"] == "succeeded" for r in runs) / len(runs) if runs else 0.0


def _ratio(assisted: float, blind: float) -> float:
    if blind > 0:
        return assisted / blind
    return math.inf if assisted > 0 else 0.0


def by_kind(figures: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per kind: held-out runs healed blind and assisted, remedies applied, top-3 hits, the remedy's availability."""
    kinds: dict[str, dict[str, Any]] = {}
    for pair in figures["held_out"]:
        blind, assisted = pair["blind"], pair["assisted"]
        row = kinds.setdefault(blind["kind"], {"held_out": 0, "blind": 0, "assisted": 0, "remedies": 0,
                                               "from_knowledge": 0, "blind_remedies": 0, "top3": 0, "searched": 0})
        row["held_out"] += 1
        row["blind"] += blind["status"] == "succeeded"
        row["assisted"] += assisted["status"] == "succeeded"
        row["remedies"] += len(assisted["remedies"])
        row["from_knowledge"] += assisted["from_knowledge"]
        row["blind_remedies"] += len(blind["remedies"])
    for top in figures["top3"]:
        row = kinds[top["kind"]]
        row["searched"] += 1
        row["top3"] += top["hit"]
    for name, row in kinds.items():
        row["available"] = figures["available"].get(name, False)
    return kinds


def best_arm(search: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The HNSW arm to judge: the fastest at p99 among those with the recall asked for, else the best recall."""
    arms = {k: v for k, v in search["arms"].items() if k != "exact"}
    good = [k for k, v in arms.items() if v["recall"] >= GOAL_RECALL]
    name = min(good, key=lambda k: arms[k]["p99_ms"]) if good else max(arms, key=lambda k: arms[k]["recall"])
    return name, arms[name]


def goals(figures: dict[str, Any]) -> dict[str, Any]:
    """The headline figures and whether each goal was met."""
    healable = [p for p in figures["held_out"] if p["blind"]["kind"] not in figures["controls"]]
    controls = [p for p in figures["held_out"] if p["blind"]["kind"] in figures["controls"]]
    blind = _rate([p["blind"] for p in healable])
    assisted = _rate([p["assisted"] for p in healable])
    ratio = _ratio(assisted, blind)
    tops = figures["top3"]
    top3 = sum(t["hit"] for t in tops) / len(tops) if tops else 0.0
    arm, search = best_arm(figures["search"])
    return {
        "held_out": len(healable), "blind_rate": round(blind, 4), "assisted_rate": round(assisted, 4),
        "ratio": ratio if math.isinf(ratio) else round(ratio, 3), "ratio_met": ratio >= GOAL_RATIO,
        "top3": round(top3, 4), "top3_searched": len(tops), "top3_met": top3 >= GOAL_TOP3,
        "search_arm": arm, "search_p99_ms": search["p99_ms"], "search_recall": search["recall"],
        "search_met": search["p99_ms"] <= GOAL_P99_MS and search["recall"] >= GOAL_RECALL,
        "remedies_applied": sum(len(p["assisted"]["remedies"]) for p in figures["held_out"]),
        "remedies_from_knowledge": sum(p["assisted"]["from_knowledge"] for p in figures["held_out"]),
        "remedies_applied_blind": sum(len(p["blind"]["remedies"]) for p in figures["held_out"]),
        "controls": len(controls),
        "control_failed_both": all(p["blind"]["status"] == "failed" and p["assisted"]["status"] == "failed"
                                   for p in controls) and bool(controls),
        "kinds": by_kind(figures),
    }


def _fmt_ratio(ratio: float) -> str:
    return "∞ (no blind success)" if math.isinf(ratio) else f"{ratio:.2f}×"


def render(figures: dict[str, Any]) -> str:
    """The held-out runs, the summary by kind, the search measure and the goals, as Markdown."""
    g = figures["goals"]
    lines = ["| held-out scenario | blind | attempts | assisted | attempts | remedies applied (assisted) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for pair in figures["held_out"]:
        b, a = pair["blind"], pair["assisted"]
        lines.append(f"| {b['scenario']} | {b['status']} | {len(b['attempts'])} | {a['status']} | "
                     f"{len(a['attempts'])} | {'; '.join(a['remedies']) or '-'} |")
    lines += ["", "| kind | remedy built | held out | blind healed | assisted healed | remedies applied "
              "(named by an entry) | right remedy in top 3 |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, k in g["kinds"].items():
        top = f"{k['top3']}/{k['searched']}" if k["searched"] else "(control)"
        lines.append(f"| {name} | {'yes' if k['available'] else 'no'} | {k['held_out']} | {k['blind']} | "
                     f"{k['assisted']} | {k['remedies']} ({k['from_knowledge']}) | {top} |")
    search = figures["search"]
    lines += ["", f"Knowledge-base search over {search['entries']:,} entries, k = {search['k']}, "
              f"{search['queries']} queries per arm:", "",
              "| arm | p50 ms | p99 ms | recall@10 |", "| --- | ---: | ---: | ---: |"]
    arms = sorted(search["arms"], key=lambda a: (a != "exact", int(a[3:]) if a.startswith("ef=") else 0))
    lines += [f"| {arm} | {search['arms'][arm]['p50_ms']} | {search['arms'][arm]['p99_ms']} | "
              f"{search['arms'][arm]['recall']} |" for arm in arms]
    yes = {True: "yes", False: "**no**"}
    lines += ["", "| goal (issue 15) | measured | met |", "| --- | --- | --- |",
              f"| assisted success ≥ 2 × blind ({g['held_out']} held-out scenarios, controls excluded) | "
              f"assisted {g['assisted_rate']:.2f}, blind {g['blind_rate']:.2f}: {_fmt_ratio(g['ratio'])} | "
              f"{yes[g['ratio_met']]} |",
              f"| right remedy in the top 3 hints ≥ {GOAL_TOP3} | {g['top3']:.2f} of {g['top3_searched']} | "
              f"{yes[g['top3_met']]} |",
              f"| search p99 ≤ {GOAL_P99_MS:g} ms, recall ≥ {GOAL_RECALL} ({g['search_arm']}) | "
              f"{g['search_p99_ms']} ms, recall {g['search_recall']} | {yes[g['search_met']]} |",
              f"| deterministic controls fail in both modes | {g['controls']} control(s) | "
              f"{yes[g['control_failed_both']]} |",
              "", f"Remedies applied on held-out runs: {g['remedies_applied']} assisted "
              f"({g['remedies_from_knowledge']} named by a knowledge entry, the others built-in for the failure's "
              f"kind), {g['remedies_applied_blind']} blind."]
    return "\n".join(lines)
