"""``python -m bench.selfheal``: do retries that learn succeed more often than blind ones?

Seeded failure scenarios of several kinds (``bench.selfheal_scenarios``: real small repositories that run out of
memory, fork too many processes, run past their command limit, have a flaky test, a fixable lint finding, a build
backend out of reach offline, and two controls no remedy can fix: a check and a test with a real bug) run on a
stack of the benchmark's own (``bench.stack``, the agents loading the noop plugin next to the built-in skills):

1. **warm-up**: the first scenarios of each kind run once with ``self_heal: apply``, filling the knowledge base
   with what the learning loop learns from them;
2. **held out**: every other scenario, never seen by the knowledge base, runs twice with 3 attempts each: blind
   (``self_heal: off``: Temporal retries the same task) and knowledge-assisted (``self_heal: apply``), the two
   alternating (which goes first swaps from one scenario to the next);
3. **top 3**: for each held-out scenario but the control, its blind run's first failure (the signature ``heal``
   would look up) is searched in the knowledge base as the warm-up left it, and a hit is its kind's right remedy
   among the 3 best hints;
4. **search at scale**: ``bench.kb_search``'s measure (100,000 entries, HNSW against an exact search).

Prints the held-out runs, a summary by kind and the goals met or missed; writes ``bench/results/selfheal.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import kb_search, rls
from bench import stack as bench_stack
from bench.report import RESULTS, progress
from bench.selfheal_report import goals, render
from bench.selfheal_runs import Outcome, knowledge_size, newest_entry, run, top_hints
from bench.selfheal_scenarios import KINDS, Scenario, is_control, scenarios, split

#: Scenarios per kind, warm-up scenarios per kind, agents × tasks each, pairs of held-out runs at once; the
#: knowledge-base search's size.
FULL: dict[str, Any] = {"kinds": list(KINDS), "per_kind": 4, "warmup": 2, "agents": 2, "concurrency": 4,
                        "parallel": 2, "entries": 100_000, "queries": 1000, "base": 400, "ef": [40, 64, 100]}
#: A slice for the smoke test: the resource kinds, one scenario each to learn from and one held out, one of each
#: control, and a small knowledge base for the search.
QUICK: dict[str, Any] = {"kinds": ["memory", "processes", "timeout", "control", "broken_test"], "per_kind": 2,
                         "warmup": 1, "agents": 1, "concurrency": 4, "parallel": 3, "entries": 2000, "queries": 60,
                         "base": 20, "ef": [40]}


async def held_out(api: httpx.AsyncClient, held: list[Scenario], capability: str, tag: str,
                   parallel: int) -> list[tuple[Outcome, Outcome]]:
    """Each held-out scenario blind and assisted, the first of the two alternating; ``parallel`` pairs at once."""
    gate = asyncio.Semaphore(parallel)

    async def pair(i: int, scenario: Scenario) -> tuple[Outcome, Outcome]:
        async with gate:
            order = ["off", "apply"] if i % 2 == 0 else ["apply", "off"]
            done = {mode: await run(api, scenario, mode, capability, tag) for mode in order}
            progress(f"held out {scenario.id}: blind {done['off'].status}, assisted {done['apply'].status} "
                     f"{done['apply'].remedies}")
            return done["off"], done["apply"]

    return list(await asyncio.gather(*(pair(i, s) for i, s in enumerate(held))))


async def on_stack(cfg: dict[str, Any], seed: int) -> dict[str, Any]:
    """Warm-up, held-out pairs and the top-3 measure on a fresh stack; the figures as a dict."""
    stack = bench_stack.start()
    try:
        # In the stack's state folder: where its runs may take local sources from, removed with it.
        made = scenarios(seed, stack.state / "repos", cfg["kinds"], cfg["per_kind"], cfg["warmup"])
        warm, held = split(made, cfg["warmup"])
        await bench_stack.start_agents(stack, cfg["agents"], cfg["concurrency"])
        tag = uuid.uuid4().hex[:4]
        async with httpx.AsyncClient(base_url=stack.api_url, headers=bench_stack.bearer(), timeout=30) as api:
            progress(f"warm-up: {len(warm)} scenarios with self_heal apply")
            gate = asyncio.Semaphore(cfg["parallel"] * 2)

            async def warm_one(scenario: Scenario) -> Outcome:
                async with gate:
                    return await run(api, scenario, "apply", stack.capability, tag)

            warmed = list(await asyncio.gather(*(warm_one(s) for s in warm)))
            frozen, learned = await newest_entry(), await knowledge_size()
            progress(f"warm-up done: {sum(o.status == 'succeeded' for o in warmed)}/{len(warmed)} healed; "
                     f"knowledge base {learned}")
            progress(f"held out: {len(held)} scenarios × (blind, assisted)")
            pairs = await held_out(api, held, stack.capability, tag, cfg["parallel"])
            by_id = {s.id: s for s in held}
            tops = [await top_hints(blind, by_id[blind.scenario], frozen) for blind, _ in pairs
                    if by_id[blind.scenario].expected_remedy is not None]
            stack.check_alive()
    finally:
        bench_stack.stop(stack)
        await asyncio.to_thread(_forget_stack_settings)
    return {"warmup": [o.as_dict() for o in warmed], "knowledge_after_warmup": learned,
            "held_out": [{"blind": b.as_dict(), "assisted": a.as_dict()} for b, a in pairs], "top3": tops,
            "scenarios": [{"id": s.id, "kind": s.kind, "skill": s.skill, "detail": s.detail,
                           "expected_remedy": s.expected_remedy, "warmup": s in warm} for s in made]}


def _forget_stack_settings() -> None:
    """Let ``bench.rls.embedded_database`` start its own PostgreSQL: the stack's settings are cached."""
    from devart.core import settings
    from devart.core.database import db

    for cached in (settings.state, settings.admin, db.database_url, db.app_database_url):
        cached.cache_clear()


def search_at_scale(cfg: dict[str, Any], seed: int) -> dict[str, Any]:
    """``bench.kb_search``'s measure with its own data and database: p99 and recall@10 per ef."""
    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    failures = kb_search.corpus(cfg["base"], rng)
    model, base = kb_search.embed([f"{e} in {s}: {m}" for s, e, m in failures], "passage")
    picks = nrng.integers(0, len(failures), size=cfg["entries"])
    entries = kb_search.around(base, picks, 0.02, nrng)
    queries = kb_search.around(base, nrng.integers(0, len(failures), size=cfg["queries"] + kb_search.WARMUP), 0.02,
                               nrng)
    with kb_search.embedded_database() as target:
        kb_search.fill(target.owner, model, failures, entries, picks)
        kb_search.build_index(target.owner, model, base.shape[1])
        results = kb_search.measure(target.app, model, queries, 10, cfg["ef"])
    arms = {arm: {"p50_ms": round(rls.percentile(results.total[arm], 50), 2),
                  "p99_ms": round(rls.percentile(results.total[arm], 99), 2),
                  "recall": round(statistics.fmean(results.recall[arm]), 4) if arm in results.recall else 1.0}
            for arm in results.total}
    return {"entries": cfg["entries"], "queries": cfg["queries"], "k": 10, "arms": arms}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.selfheal", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a small slice (the smoke test's)")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--kinds", help=f"comma-separated, of {', '.join(KINDS)}")
    parser.add_argument("--per-kind", type=int, help="scenarios per kind")
    parser.add_argument("--entries", type=int, help="entries of the search-at-scale measure")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON figures")
    args = parser.parse_args(argv)
    cfg: dict[str, Any] = dict(QUICK if args.quick else FULL)
    if args.kinds:
        cfg["kinds"] = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = set(cfg["kinds"]) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}: choose among {', '.join(KINDS)}")
    cfg["per_kind"] = args.per_kind or cfg["per_kind"]
    cfg["entries"] = args.entries or cfg["entries"]
    started = time.monotonic()
    figures = asyncio.run(on_stack(cfg, args.seed))
    progress(f"knowledge-base search over {cfg['entries']:,} entries")
    figures["search"] = search_at_scale(cfg, args.seed)
    figures["available"] = {k: KINDS[k].available for k in cfg["kinds"]}
    figures["controls"] = [k for k in cfg["kinds"] if is_control(k)]
    figures["goals"] = goals(figures)
    figures["settings"] = {**cfg, "seed": args.seed, "quick": args.quick, "seconds": round(time.monotonic() - started)}
    print(render(figures))
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / ("selfheal-quick.json" if args.quick else "selfheal.json")
    out.write_text(json.dumps(figures, indent=2) + "\n")
    progress(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
