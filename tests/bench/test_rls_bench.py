"""A bounded slice of ``bench.rls``: its two arms compare like with like, and neither sees another organisation.

It runs on a throwaway database of the session's PostgreSQL (dropped afterwards), migrated like any other, with
2,000 runs over 3 organisations; ``devart_app`` already logs in there (the role is the server's, not the
database's).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from bench import rls
from tests.api.isolated import scratch_database
from tests.stack import Stack

RUNS, ORGS = 2000, 3


@pytest.fixture(scope="module")
def filled(stack: Stack) -> Iterator[tuple[rls.Target, rls.Dataset]]:
    """A fresh database holding the benchmark's data, and its two logins."""
    with scratch_database("bench_rls") as (owner, app):
        target = rls.Target(owner=rls.conninfo(owner), app=rls.conninfo(app))
        yield target, rls.fill(target.owner, RUNS, ORGS)


def _orgs_of(query: rls.Query, rows: list[tuple[Any, ...]], dataset: rls.Dataset) -> set[str]:
    """The organisations of the runs ``rows`` belong to (every query returns a run id first or second)."""
    if query.name in ("run list", "run by id", "update status"):
        return {dataset.org_of(row[0]) for row in rows}
    return {dataset.org_of(row[1]) for row in rows}


def test_arms_return_the_same_rows_of_one_organisation(filled: tuple[rls.Target, rls.Dataset]) -> None:
    target, dataset = filled
    with rls.arms(target) as (with_rls, plain):
        for query in rls.QUERIES:
            for pick in rls.picks(dataset, 15, random.Random(query.name)):
                rows, _, _ = with_rls.transact(query, pick)
                baseline, _, _ = plain.transact(query, pick)
                assert rows == baseline, (query.name, pick)
                assert rows, (query.name, pick)  # every pick finds something: the comparison is not of two nothings
                assert _orgs_of(query, rows, dataset) == {pick.org}, (query.name, pick)
                if query.name == "run list":
                    assert len(rows) == 50
        # The writes were rolled back: the arms met the same rows throughout.
        assert plain.conn.execute("SELECT count(*) FROM events WHERE kind = 'bench.write'").fetchone() == (0,)


def test_neither_arm_reaches_another_organisations_run(filled: tuple[rls.Target, rls.Dataset]) -> None:
    target, dataset = filled
    theirs = rls.picks(dataset, 1, random.Random(3))[0]
    ours = next(org for org in dataset.orgs if org != theirs.org)
    stranger = rls.Pick(org=ours, id=theirs.id, events=theirs.events)
    with rls.arms(target) as pair:
        for arm in pair:
            for query in rls.QUERIES:
                if query.name == "insert event":
                    continue  # an insert names no run to find; its organisation is the transaction's (checked above)
                rows, _, _ = arm.transact(query, stranger)
                if query.name == "run list":
                    assert _orgs_of(query, rows, dataset) == {ours}, arm.name
                else:
                    assert rows == [], (arm.name, query.name)
        with_rls = pair[0]
        # A transaction that names no organisation sees no run at all.
        assert with_rls.conn.execute("SELECT count(*) FROM runs").fetchone() == (0,)


def test_measure_report_and_plan(filled: tuple[rls.Target, rls.Dataset]) -> None:
    target, dataset = filled
    with rls.arms(target) as pair:
        timings = rls.measure(pair, dataset, rounds=2, queries=5)
        plan = rls.explain_run_list(pair[0], dataset.orgs[0])
    for query in rls.QUERIES:
        assert {arm: len(samples) for arm, samples in timings.total[query.name].items()} == {"rls": 10, "plain": 10}
    table = rls.report(timings)
    assert all(f"| {query.name} |" in table for query in rls.QUERIES)
    assert "goal: RLS adds at most 10%" in table
    assert "InitPlan" in plan  # the policy's settings are read once per statement, not per row
