"""A bounded slice of ``bench.kb_search``: 2,000 entries on a throwaway database of the session's PostgreSQL.

The benchmark's arms must compare like with like: the exact arm is the truth the recall is measured against, the
HNSW arm runs the store's own statement, and neither sees another organisation's entries.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest

from bench import kb_search, rls
from tests.api.isolated import scratch_database
from tests.stack import Stack

ENTRIES, BASE, QUERIES = 2000, 20, 60


@pytest.fixture(scope="module")
def filled(stack: Stack) -> Iterator[tuple[rls.Target, str, np.ndarray]]:
    """A fresh, migrated database holding the benchmark's entries and index; its logins, model and queries."""
    with scratch_database("bench_kb") as (owner, app):
        target = rls.Target(owner=rls.conninfo(owner), app=rls.conninfo(app))
        failures = kb_search.corpus(BASE, random.Random(1))
        model, base = kb_search.embed([f"{e} in {s}: {m}" for s, e, m in failures], "passage")
        rng = np.random.default_rng(1)
        picks = rng.integers(0, BASE, size=ENTRIES)
        kb_search.fill(target.owner, model, failures, kb_search.around(base, picks, 0.02, rng), picks)
        index, _ = kb_search.build_index(target.owner, model, base.shape[1])
        assert index.startswith("knowledge_hnsw_")
        queries = kb_search.around(base, rng.integers(0, BASE, size=QUERIES), 0.02, rng)
        yield target, model, queries


def test_the_index_finds_what_the_exact_search_finds(filled: tuple[rls.Target, str, np.ndarray]) -> None:
    target, model, queries = filled
    results = kb_search.measure(target.app, model, queries, 10, [40, 64])
    measured = QUERIES - kb_search.WARMUP
    assert {arm: len(samples) for arm, samples in results.total.items()} == {"exact": measured, "ef=40": measured,
                                                                             "ef=64": measured}
    for arm, recall in results.recall.items():
        assert sum(recall) / len(recall) >= 0.9, arm
    chosen = kb_search.plans(target.app, model, queries[0].tolist(), 10, [40, 64])
    table = kb_search.report(results, 10, chosen)
    assert "| exact |" in table and "| ef=64 |" in table and "goal: transaction p99 ≤ 10 ms" in table


def test_a_search_sees_only_its_organisations_entries(filled: tuple[rls.Target, str, np.ndarray]) -> None:
    target, model, queries = filled
    sql, params = kb_search.statement(model, queries[0].tolist(), 10)
    with psycopg.connect(target.app, autocommit=True) as conn:
        ours = kb_search.Searcher(conn, sql).search(params, ef=64)[0]
        assert len(ours) == 10
        conn.execute("BEGIN")
        conn.execute(rls.SET_TENANT, {"org": "someone-else", "role": "admin", "user": "bench"})
        params_elsewhere = {**params, "org_id_1": "someone-else"}
        assert conn.execute(sql, params_elsewhere).fetchall() == []  # type: ignore[arg-type]
        # Naming the benchmark's organisation in the statement does not get past the policy either
        assert conn.execute(sql, params).fetchall() == []  # type: ignore[arg-type]
        conn.execute("ROLLBACK")
