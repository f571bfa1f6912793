"""What row-level security costs the API's queries: the same statements with and without it, in one run.

Run ``python -m bench.rls [--runs 100000] [--orgs 10] [--rounds 6] [--queries 300] [--keep-state]``.

It starts an embedded PostgreSQL under a temporary state folder, migrates it (``prepare_schema``: the policies of
migration 0009, and a login for ``devart_app``), fills it as the owner with ``--runs`` runs spread evenly over
``--orgs`` organisations (a quarter of them with four events each), analyses it, then times whole transactions
two ways, alternating transaction by transaction on the same random ids so both arms see the same machine load:

* **rls**: logged in as ``devart_app``; each transaction first runs the ``set_config`` of ``core.database.tenancy``
  (the organisation, role ``admin``) and the statement carries no organisation filter: the policy is the filter;
* **plain** (the baseline): logged in as the owner, a superuser, so RLS is bypassed; no ``set_config``, and the
  statement carries ``org_id = %(org)s`` itself, as an application without RLS would have to write it.

The statements are the API's: the run list, a run by id, a run's events, an event insert and a status update (the
writes are rolled back, so every transaction of both arms meets the same rows). Besides the whole transaction it
records the statement alone, which separates the policy's own cost from the ``set_config`` round trip. Prints a
Markdown table, the geometric mean of the median ratios against the goal, and the run list's plan under RLS.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, LiteralString

import psycopg
from sqlalchemy.engine import make_url

from bench import stats

#: The issue's goal: RLS adds at most 10 % to the API's transactions (geometric mean of the median ratios).
GOAL_RATIO = 1.10
#: One run in ``EVENT_EVERY`` (per organisation) has ``EVENTS_PER_RUN`` events: the events look-up has rows.
EVENT_EVERY, EVENTS_PER_RUN = 4, 4
#: Transactions per query and arm before measuring: connections, prepared statements and caches warm up.
WARMUP = 50
SET_TENANT: LiteralString = ("SELECT set_config('devart.org_id', %(org)s, true), "
                             "set_config('devart.role', %(role)s, true), set_config('devart.user', %(user)s, true)")


@dataclass(frozen=True)
class Query:
    """One of the API's statements, as each arm writes it; ``write`` ones are rolled back."""

    name: str
    rls: LiteralString
    plain: LiteralString
    write: bool = False


QUERIES = [
    # The API names its organisation in the run list too (``domain.runs.list_runs``): under the policy's OR the
    # planner cannot use the (org_id, created_at) index otherwise, and the policy then re-checks 50 rows.
    Query("run list",
          "SELECT id, pipeline, status, created_at FROM runs WHERE org_id = %(org)s ORDER BY created_at DESC LIMIT 50",
          "SELECT id, pipeline, status, created_at FROM runs WHERE org_id = %(org)s ORDER BY created_at DESC LIMIT 50"),
    Query("run by id",
          "SELECT * FROM runs WHERE id = %(id)s",
          "SELECT * FROM runs WHERE id = %(id)s AND org_id = %(org)s"),
    Query("run's events",
          "SELECT id, run_id, kind, message, created_at FROM events WHERE run_id = %(events)s ORDER BY id",
          "SELECT id, run_id, kind, message, created_at FROM events WHERE run_id = %(events)s AND org_id = %(org)s "
          "ORDER BY id"),
    Query("insert event",
          "INSERT INTO events (kind, run_id, message, data, created_at) "
          "VALUES ('bench.write', %(id)s, 'bench', '{}', now()) RETURNING org_id, run_id, kind",
          "INSERT INTO events (org_id, kind, run_id, message, data, created_at) "
          "VALUES (%(org)s, 'bench.write', %(id)s, 'bench', '{}', now()) RETURNING org_id, run_id, kind",
          write=True),
    Query("update status",
          "UPDATE runs SET status = 'cancelled' WHERE id = %(id)s RETURNING id, org_id, status",
          "UPDATE runs SET status = 'cancelled' WHERE id = %(id)s AND org_id = %(org)s RETURNING id, org_id, status",
          write=True),
]


@dataclass(frozen=True)
class Target:
    """libpq URLs of one database: as its owner (RLS bypassed) and as the application role."""

    owner: str
    app: str


@dataclass(frozen=True)
class Dataset:
    """What ``fill`` made: run ``n`` is ``run_id(n)``, of organisation ``orgs[n % len(orgs)]``."""

    runs: int
    orgs: list[str]

    def org_of(self, run: str) -> str:
        """The organisation a run id belongs to (the tests check every arm's rows with it)."""
        return self.orgs[int(run.rsplit("-", 1)[1]) % len(self.orgs)]


@dataclass(frozen=True)
class Pick:
    """The ids one pair of transactions (one per arm) works on: a run of ``org``, and one of its runs with events."""

    org: str
    id: str
    events: str

    def params(self) -> dict[str, str]:
        return {"org": self.org, "id": self.id, "events": self.events}


def run_id(n: int) -> str:
    return f"bench-run-{n}"


def org_id(i: int) -> str:
    return f"bench-org-{i:03d}"


def conninfo(sqlalchemy_url: str) -> str:
    """A SQLAlchemy URL (``postgresql+psycopg://``) as libpq takes it."""
    return make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def embedded_database(keep_state: bool = False) -> Iterator[Target]:
    """A fresh, migrated embedded PostgreSQL in a temporary state folder, stopped (and removed) afterwards.

    ``DEVART_HOME`` is set before any setting is read, so the server, the schema and ``devart_app``'s password
    all live in that folder."""
    from devart.core import settings
    from devart.core.database import db
    from devart.core.devstack.embedded import stop_postgres
    from devart.domain.bootstrap import prepare_schema

    state = Path(tempfile.mkdtemp(prefix="devart-bench-rls-"))
    for name in ("DATABASE_URL", "DEVART_APP_DATABASE_URL", "DEVART_DB_APP_PASSWORD", "DEVART_ADMIN_TOKEN"):
        os.environ.pop(name, None)
    os.environ["DEVART_HOME"] = str(state)
    for cached in (settings.state, settings.admin, db.database_url, db.app_database_url):
        cached.cache_clear()
    try:
        owner = db.database_url()  # starts the server
        prepare_schema()
        yield Target(owner=conninfo(owner), app=conninfo(db.app_database_url()))
    finally:
        stop_postgres(state)
        if keep_state:
            print(f"state kept in {state}", file=sys.stderr)
        else:
            shutil.rmtree(state, ignore_errors=True)


def fill(owner: str, runs: int, orgs: int) -> Dataset:
    """Insert ``orgs`` organisations, ``runs`` runs spread evenly over them (newest first: run 0), and events for
    one run in ``EVENT_EVERY`` of each organisation, as the owner in bulk; then ANALYZE."""
    dataset = Dataset(runs=runs, orgs=[org_id(i) for i in range(orgs)])
    org_expr = f"'bench-org-' || lpad(mod(g, {int(orgs)})::text, 3, '0')"
    every = f"FROM generate_series(0, {int(runs) - 1}) g"
    with psycopg.connect(owner, autocommit=True) as conn:
        conn.execute("INSERT INTO organisations (id, name) SELECT o, o FROM unnest(%s::text[]) o", [dataset.orgs])
        conn.execute(
            "INSERT INTO runs (id, org_id, pipeline, pipeline_version, repository, trigger, params, priority, status, "
            "stages, created_at, finished_at) "
            f"SELECT 'bench-run-' || g, {org_expr}, 'pipeline-' || mod(g, 7), 1, 'https://example.com/repo.git', "
            "'api', '{}', 3, (ARRAY['succeeded', 'failed', 'running'])[mod(g, 3) + 1], '[]', "
            "now() - g * interval '1 second', CASE WHEN mod(g, 3) < 2 THEN now() - g * interval '1 second' END "
            f"{every}")
        conn.execute(
            "INSERT INTO events (org_id, kind, run_id, stage, message, data, created_at) "
            f"SELECT {org_expr}, 'stage.finished', 'bench-run-' || g, 'stage-' || k, 'bench', '{{}}', "
            "now() - g * interval '1 second' + k * interval '1 ms' "
            f"{every}, generate_series(1, {EVENTS_PER_RUN}) k WHERE mod(g / {int(orgs)}, {EVENT_EVERY}) = 0")
        conn.execute("ANALYZE")
    return dataset


def picks(dataset: Dataset, count: int, rng: random.Random) -> list[Pick]:
    """``count`` random runs, each with a run of the same organisation that has events."""
    n = len(dataset.orgs)
    chosen = []
    for _ in range(count):
        run = rng.randrange(dataset.runs)
        with_events = run - (run // n % EVENT_EVERY) * n  # same organisation, the nearest older one with events
        chosen.append(Pick(org=dataset.orgs[run % n], id=run_id(run), events=run_id(with_events)))
    return chosen


@dataclass
class Arm:
    """One way of running the API's statements: ``rls`` (the application role, ``set_config`` first, no filter)
    or the owner's (RLS bypassed, explicit filter)."""

    name: str
    conn: psycopg.Connection[tuple[Any, ...]]
    rls: bool

    def statement(self, query: Query) -> LiteralString:
        return query.rls if self.rls else query.plain

    def transact(self, query: Query, pick: Pick, role: str = "admin") -> tuple[list[tuple[Any, ...]], int, int]:
        """One whole transaction; returns its rows, and its nanoseconds in all and for the statement alone."""
        clock = time.perf_counter_ns
        start = clock()
        self.conn.execute("BEGIN")  # its own round trip in both arms, as the services' driver sends it
        if self.rls:
            self.conn.execute(SET_TENANT, {"org": pick.org, "role": role, "user": "bench"}, prepare=True)
        begin = clock()
        rows = self.conn.execute(self.statement(query), pick.params(), prepare=True).fetchall()
        end = clock()
        self.conn.execute("ROLLBACK" if query.write else "COMMIT")
        return rows, clock() - start, end - begin


@contextmanager
def arms(target: Target) -> Iterator[tuple[Arm, Arm]]:
    """The two arms, each on a connection of its own (closed afterwards). Autocommit: ``Arm.transact`` sends
    BEGIN itself, so the statement's own time never includes the driver's implicit one."""
    with psycopg.connect(target.app, autocommit=True) as app, psycopg.connect(target.owner, autocommit=True) as owner:
        yield Arm("rls", app, rls=True), Arm("plain", owner, rls=False)


@dataclass
class Timings:
    """Nanoseconds per transaction and per statement alone, by query and arm."""

    total: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    statement: dict[str, dict[str, list[int]]] = field(default_factory=dict)

    def add(self, query: str, arm: str, total: int, statement: int) -> None:
        self.total.setdefault(query, {}).setdefault(arm, []).append(total)
        self.statement.setdefault(query, {}).setdefault(arm, []).append(statement)


def measure(pair: tuple[Arm, Arm], dataset: Dataset, rounds: int, queries: int, seed: int = 7) -> Timings:
    """Alternate the arms transaction by transaction on the same ids (which arm goes first swaps each round)."""
    rng = random.Random(seed)
    for query in QUERIES:
        for pick in picks(dataset, WARMUP, rng):
            for arm in pair:
                arm.transact(query, pick)
    timings = Timings()
    for round_no in range(rounds):
        order = pair if round_no % 2 == 0 else pair[::-1]
        for query in QUERIES:
            for pick in picks(dataset, queries, rng):
                for arm in order:
                    _, total, statement = arm.transact(query, pick)
                    timings.add(query.name, arm.name, total, statement)
    return timings


def explain_run_list(arm: Arm, org: str) -> str:
    """The run list's plan under RLS for ``org`` (executed, so the initplans show whether they ran once)."""
    query: LiteralString = "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) " + QUERIES[0].rls
    with arm.conn.transaction(force_rollback=True):
        arm.conn.execute(SET_TENANT, {"org": org, "role": "admin", "user": "bench"})
        lines = [row[0] for row in arm.conn.execute(query, {"org": org}).fetchall()]
    return "\n".join(lines)


def percentile(samples: list[int], q: float) -> float:
    """The ``q``-th percentile (nearest rank), in milliseconds."""
    return stats.percentile(samples, q) / 1e6


def ratios(timings: dict[str, dict[str, list[int]]]) -> dict[str, float]:
    """Median with RLS over median without, by query."""
    return {name: statistics.median(arms["rls"]) / statistics.median(arms["plain"]) for name, arms in timings.items()}


def geomean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


def report(timings: Timings) -> str:
    """The Markdown table, the geometric means and the verdict against ``GOAL_RATIO``."""
    whole, alone = ratios(timings.total), ratios(timings.statement)
    lines = ["| query | rls p50 ms | rls p95 ms | plain p50 ms | plain p95 ms | ratio p50 | ratio p95 "
             "| statement alone, ratio p50 |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, by_arm in timings.total.items():
        rls, plain = by_arm["rls"], by_arm["plain"]
        p95 = percentile(rls, 95) / percentile(plain, 95)
        lines.append(f"| {name} | {percentile(rls, 50):.3f} | {percentile(rls, 95):.3f} | {percentile(plain, 50):.3f} "
                     f"| {percentile(plain, 95):.3f} | {whole[name]:.3f}× | {p95:.3f}× | {alone[name]:.3f}× |")
    overall, statements = geomean(list(whole.values())), geomean(list(alone.values()))
    verdict = "met" if overall <= GOAL_RATIO else "NOT met"
    lines += ["", f"geometric mean of the p50 ratios: {overall:.3f}× per transaction, {statements:.3f}× for the "
                  "statements alone (without the set_config round trip)",
              f"goal: RLS adds at most {GOAL_RATIO - 1:.0%} (ratio ≤ {GOAL_RATIO:.2f}): {verdict} ({overall:.3f}×)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rls", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=100_000, help="runs in the database")
    parser.add_argument("--orgs", type=int, default=10, help="organisations the runs are spread over")
    parser.add_argument("--rounds", type=int, default=6, help="measuring rounds (the arms' order swaps each round)")
    parser.add_argument("--queries", type=int, default=300, help="transactions per query, arm and round")
    parser.add_argument("--keep-state", action="store_true", help="keep the temporary state folder")
    args = parser.parse_args(argv)
    with embedded_database(args.keep_state) as target:
        started = time.monotonic()
        dataset = fill(target.owner, args.runs, args.orgs)
        print(f"filled {args.runs:,} runs over {args.orgs} organisations in {time.monotonic() - started:.1f} s; "
              f"{args.rounds} rounds × {args.queries} transactions per query and arm", flush=True)
        with arms(target) as pair:
            timings = measure(pair, dataset, args.rounds, args.queries)
            plan = explain_run_list(pair[0], dataset.orgs[0])
    print(report(timings))
    print(f"\nThe run list under RLS (EXPLAIN ANALYZE, organisation {dataset.orgs[0]}):\n{plan}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
