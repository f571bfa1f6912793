"""Row-level security through the API: whole requests with the policies against the same requests without them.

``bench.rls`` times single statements, where the policies' fixed cost (the ``set_config`` round trip, two
initplans, the filter) is a large share of 0.2–0.5 ms. A user meets the API instead: this benchmark fills the same
100,000 runs, then starts two API processes on that database, identical but for the role they log in as:

- **rls**: ``devart_app``, row-level security applies (the default);
- **plain** (baseline): the database's owner (``DEVART_DB_APP_ROLE=""``), a superuser, so PostgreSQL skips the
  policies. Everything else is the same code, ``set_config`` included.

It alternates the same requests between the two (order swapped each round), on keep-alive connections, with one
organisation's admin token: reads (the run list, a run, a run's events) and a write (a budget set). It prints p50
and p95 per request and arm, the ratios and their geometric mean against the goal (≤ 1.10×).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg

from bench.rls import GOAL_RATIO, Dataset, embedded_database, fill, geomean, percentile, picks
from devart.core.devstack import services
from devart.core.devstack.supervisor import Supervisor
from devart.core.security import hash_key


@dataclass(frozen=True)
class Request:
    """One API request, built from a pick (an organisation's run, and one of its runs with events)."""

    name: str
    method: str
    path: str
    body: dict[str, object] | None = None


def requests_for(run: str, events_of: str, n: int) -> list[Request]:
    return [
        Request("run list", "GET", "/v1/runs?limit=50"),
        Request("run", "GET", f"/v1/runs/{run}"),
        Request("run's events", "GET", f"/v1/events?run_id={events_of}"),
        Request("budget set", "PUT", f"/v1/budgets/pipeline/bench-{n % 20}", {"soft_limit": 10.0 + n % 7}),
    ]


def admin_of(owner: str, org: str) -> str:
    """A personal token of a new admin of ``org``, written as the owner (the services never see it in clear)."""
    token = f"dvt_bench_{uuid.uuid4().hex}{uuid.uuid4().hex}"
    with psycopg.connect(owner, autocommit=True) as conn:
        conn.execute("SELECT set_config('devart.role', 'system', false)")
        user = conn.execute("INSERT INTO users (name) VALUES (%s) RETURNING id", [f"bench-{org}"]).fetchone()
        assert user is not None
        conn.execute("INSERT INTO memberships (user_id, org_id, role) VALUES (%s, %s, 'admin')", [user[0], org])
        conn.execute("INSERT INTO api_tokens (user_id, org_id, name, prefix, token_hash) VALUES (%s, %s, 'bench', "
                     "%s, %s)", [user[0], org, token[:12], hash_key(token)])
    return token


@contextmanager
def two_apis(state: Path, owner_url: str) -> Iterator[dict[str, str]]:
    """Temporal (the API connects at start) and the two API processes; their base URLs by arm."""
    logs = state / "bench-logs"
    temporal_port = services.free_port()
    temporal = services.start_temporal(state / "temporal.db", port=temporal_port, headless=True,
                                       log_file=logs / "temporal.log")
    base = {"DEVART_HOME": str(state), "DATABASE_URL": owner_url, "TEMPORAL_ADDRESS": f"127.0.0.1:{temporal_port}",
            "DEVART_LOG_LEVEL": "WARNING", "OTEL_SDK_DISABLED": "true"}
    sup = Supervisor(logs, env=base)
    urls: dict[str, str] = {}
    try:
        for arm, extra in (("rls", {}), ("plain", {"DEVART_DB_APP_ROLE": ""})):
            port = services.free_port()
            url = f"http://127.0.0.1:{port}"
            child = sup.spawn(f"api-{arm}", "api", "--host", "127.0.0.1", "--port", str(port),
                              env={**extra, "DEVART_API_PORT": str(port), "DEVART_API_URL": url})
            sup.wait_healthy(url, child)
            urls[arm] = url
        yield urls
    finally:
        sup.stop_all(grace=5)
        temporal.terminate()
        temporal.wait(timeout=30)


def measure(urls: dict[str, str], token: str, dataset: Dataset, org: str, rounds: int, per_round: int,
            seed: int = 11) -> dict[str, dict[str, list[int]]]:
    """Nanoseconds per request, by request name and arm; each answer must be a success in both arms."""
    rng = random.Random(seed)
    own = [p for p in picks(dataset, per_round * rounds * 4, rng) if p.org == org]
    timings: dict[str, dict[str, list[int]]] = {}
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=urls["rls"], headers=headers, timeout=60) as rls, \
            httpx.Client(base_url=urls["plain"], headers=headers, timeout=60) as plain:
        clients = {"rls": rls, "plain": plain}
        for warm in own[:20]:  # connections, the API's caches and PostgreSQL's
            for request in requests_for(warm.id, warm.events, 0):
                for client in clients.values():
                    client.request(request.method, request.path, json=request.body)
        for index, pick in enumerate(own[: rounds * per_round]):
            order = ["rls", "plain"] if (index // per_round) % 2 == 0 else ["plain", "rls"]
            for request in requests_for(pick.id, pick.events, index):
                for arm in order:
                    began = time.perf_counter_ns()
                    answer = clients[arm].request(request.method, request.path, json=request.body)
                    elapsed = time.perf_counter_ns() - began
                    if answer.status_code >= 400:
                        raise RuntimeError(f"{arm}: {request.method} {request.path} -> {answer.status_code} "
                                           f"{answer.text[:300]}")
                    timings.setdefault(request.name, {}).setdefault(arm, []).append(elapsed)
    return timings


def report(timings: dict[str, dict[str, list[int]]]) -> str:
    lines = ["| request | rls p50 ms | rls p95 ms | plain p50 ms | plain p95 ms | ratio p50 | ratio p95 |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    medians = []
    for name, arms in timings.items():
        r50, p50 = percentile(arms["rls"], 50), percentile(arms["plain"], 50)
        r95, p95 = percentile(arms["rls"], 95), percentile(arms["plain"], 95)
        medians.append(r50 / p50)
        lines.append(f"| {name} | {r50:.2f} | {r95:.2f} | {p50:.2f} | {p95:.2f} | {r50 / p50:.3f}× | "
                     f"{r95 / p95:.3f}× |")
    overall = geomean(medians)
    verdict = "met" if overall <= GOAL_RATIO else "NOT met"
    lines += ["", f"geometric mean of the p50 ratios: {overall:.3f}×",
              f"goal: RLS adds at most {GOAL_RATIO - 1:.0%} to the API's requests (ratio ≤ {GOAL_RATIO}): "
              f"{verdict} ({overall:.3f}×)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rls_api", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--orgs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=50, help="picks per round; each makes 4 requests per arm")
    args = parser.parse_args(argv)
    with embedded_database() as target:
        from devart.core import settings
        from devart.core.database import db

        began = time.perf_counter()
        dataset = fill(target.owner, args.runs, args.orgs)
        org = dataset.orgs[0]
        token = admin_of(target.owner, org)
        print(f"filled {args.runs:,} runs over {args.orgs} organisations in {time.perf_counter() - began:.1f} s; "
              f"{args.rounds} rounds × {args.per_round} picks of {org}, 4 requests each, per arm", flush=True)
        with two_apis(settings.state().root, db.database_url()) as urls:
            timings = measure(urls, token, dataset, org, args.rounds, args.per_round)
        print(report(timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
