"""The knowledge base's store on the suite's PostgreSQL, with real embeddings (the offline e5 model).

Each test works in an organisation of its own, as the services' role with the transaction's tenant set, so
row-level security is what it would be for the API or the worker, and no test sees another's entries.
"""

from __future__ import annotations

import hashlib
import math
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest
from sqlalchemy import text
from sqlalchemy.dialects import postgresql
from sqlmodel.ext.asyncio.session import AsyncSession

from devart.core.database import db, tenancy
from devart.core.database.tenancy import Tenant
from devart.core.embeddings import Embeddings, Kind, embedder
from devart.domain.knowledge import store, vectors
from devart.domain.knowledge.signature import Signature
from tests.stack import Stack, sql

#: Failures of different kinds, each with what fixed it; the tests look for a new occurrence of one among them.
KNOWN = [
    (Signature("test", "OutOfMemory", "Killed process 4242 (pytest): out of memory, rss 3.9GiB of 4GiB limit",
               "MemoryError"), "more_memory", {"memory_mb": 8192}),
    (Signature("lint", "LintFailed", "src/app.py:3:1: F401 'os' imported but unused [*] fixable with --fix"),
     "ruff_fix", {}),
    (Signature("build", "BuildBackendMissing", "ModuleNotFoundError: No module named 'hatchling' (offline)"),
     "no_isolation", {}),
    (Signature("test", "Timeout", "stage test exceeded its timeout of 300 seconds"), "longer_timeout",
     {"factor": 2}),
    (Signature("checkout", "GitAuthFailed", "fatal: Authentication failed for 'https://git.example.com/r.git'"),
     None, {}),
    (Signature("test", "PidsLimit", "fork: retry: Resource temporarily unavailable (pids limit 64 reached)"),
     "more_processes", {"pids": 256}),
]


class HashEmbedder:
    """A deterministic stand-in model of 64 dimensions (hashed words), to move entries to in the re-embed test."""

    model = f"test-hashed-words-{uuid.uuid4().hex[:6]}"
    dimension = 64

    async def embed(self, texts: Sequence[str], *, kind: Kind) -> Embeddings:
        vectors_ = []
        for text_ in texts:
            vector = [0.0] * self.dimension
            for word in re.findall(r"\w+", text_.lower()):
                vector[hashlib.sha256(word.encode()).digest()[0] % self.dimension] += 1.0
            norm = math.sqrt(sum(x * x for x in vector)) or 1.0
            vectors_.append([x / norm for x in vector])
        return Embeddings(model=self.model, dimension=self.dimension, vectors=vectors_)


@pytest.fixture
def org(stack: Stack) -> str:
    name = f"kb-{uuid.uuid4().hex[:8]}"
    sql("INSERT INTO organisations (id, name) VALUES (:o, :o)", o=name)
    return name


@asynccontextmanager
async def acting(org: str, role: str = "admin") -> AsyncIterator[AsyncSession]:
    """A session of the services' role acting for ``org`` (committed at the end)."""
    with tenancy.acting_as(Tenant(org=org, role=role, user="kb-test")):
        async with db.session() as session:
            yield session


async def fill(org: str) -> dict[str, int]:
    """The known failures with their remedies (written ones for the remedy-less guidance), by error type."""
    ids = {}
    async with acting(org) as session:
        for signature, remedy, params in KNOWN:
            if remedy is None:
                ids[signature.error_type] = await store.add_entry(
                    session, signature, guidance="the token expired: renew the deploy key", author="kb-test")
            else:
                ids[signature.error_type] = await store.learn(session, signature, remedy, params, None, "run-1", 1)
        # A failure nothing fixed yet is recorded but is no hint
        await store.record_failure(session, Signature("test", "TestFailed", "assert slugify('a b') == 'a-b'"),
                                   {"language": "python"}, "run-1", 2)
    return ids


async def test_a_similar_failure_is_found_above_unrelated_ones(org: str) -> None:
    ids = await fill(org)
    again = Signature("test", "OutOfMemory", "pytest worker killed by the OOM killer: out of memory (rss 7.8GiB)")
    async with acting(org) as session:
        hints = await store.similar(session, again, k=3)
        by_text = await store.similar(session, "the build cannot find hatchling, no network", k=3)
        only = await store.similar(session, again, k=3, kinds={"longer_timeout", "no_isolation"})
    assert hints[0].entry_id == ids["OutOfMemory"] and not hints[0].exact
    assert hints[0].remedy == "more_memory" and hints[0].parameters == {"memory_mb": 8192}
    assert hints[0].similarity > hints[1].similarity
    assert by_text[0].entry_id == ids["BuildBackendMissing"]
    assert {h.remedy for h in only} <= {"longer_timeout", "no_isolation"}
    assert all(h.remedy or h.guidance for h in hints)  # the bare recorded failure is no hint


async def test_the_same_failure_comes_first_and_learning_it_again_counts_instead_of_duplicating(org: str) -> None:
    ids = await fill(org)
    oom = KNOWN[0][0]
    again = Signature(oom.skill, oom.error_type, oom.message.replace("<n>", "977"), "MemoryError")
    async with acting(org) as session:
        hints = await store.similar(session, again, k=2)
        same = await store.learn(session, again, "more_memory", {"memory_mb": 16384}, None, "run-2", 1)
        repeated = await store.learn(session, again, "more_memory", {"memory_mb": 16384}, None, "run-2", 1)
        other = await store.learn(session, again, "more_processes", {"pids": 512}, None, "run-3", 1)
        failure = Signature("test", "TestFailed", "assert slugify('a b') == 'a-b'")
        first = await store.record_failure(session, failure, None, "run-4", 1)
        second = await store.record_failure(session, failure, None, "run-5", 1)
        entry = await store.get_entry(session, same)
        bare = await store.get_entry(session, first)
    assert hints[0].exact and hints[0].entry_id == ids["OutOfMemory"] and hints[0].similarity == 1.0
    assert same == repeated == ids["OutOfMemory"] and other not in ids.values()
    # learned twice (run-1, run-2; the repeated call of run-2 attempt 1 is a retried activity): counted twice
    assert (entry.seen, entry.applied, entry.succeeded) == (2, 2, 2)
    assert entry.parameters == {"memory_mb": 16384} and (entry.run_id, entry.attempt) == ("run-2", 1)
    assert first == second and bare.seen == 3 and bare.remedy is None and bare.guidance is None


async def test_a_remedy_that_keeps_failing_ranks_below_one_that_works(org: str) -> None:
    failing = Signature("test", "OutOfMemory", "Killed: out of memory while running the test suite")
    working = Signature("test", "OutOfMemory", "Killed: out of memory while collecting the tests")
    async with acting(org) as session:
        bad = await store.add_entry(session, failing, remedy="drop_caches", author="kb-test")
        good = await store.add_entry(session, working, remedy="more_memory", author="kb-test")
        query = "Killed: out of memory while running the test suite again"
        before = [h.entry_id for h in await store.similar(session, query, k=2)]
        for _ in range(4):
            await store.record_outcome(session, bad, applied=True, succeeded=False)
            await store.record_outcome(session, good, applied=True, succeeded=True)
        record = await store.record_outcome(session, good, applied=False, succeeded=True)
        hints = await store.similar(session, query, k=2)
    assert before[0] == bad  # the closer text wins while neither has a record
    assert [h.entry_id for h in hints] == [good, bad]
    assert hints[0].similarity < hints[1].similarity and hints[0].score > hints[1].score
    assert (record.suggested, record.applied, record.succeeded) == (5, 4, 4)  # not applied: no success counted
    assert hints[0].record.rate == pytest.approx(5 / 6) and hints[1].record.rate == pytest.approx(1 / 6)


async def test_a_failure_of_the_same_type_ranks_above_a_closer_text_of_another(org: str) -> None:
    # A lint failure's diagnosis with a poor record, and a well-recorded remedy of a resource failure
    lint = Signature("lint", "LintFailed", "lint failed: 3 ruff findings (F401 x2, E722); 2 fixable")
    oom = Signature("lint", "OutOfMemory", "lint failed: ruff was killed: out of memory (limit 128 MiB)")
    async with acting(org) as session:
        patch = await store.learn_diagnosis(session, lint, "ruff_fix", {}, "run-1", 2)
        await store.record_outcome(session, patch, applied=True, succeeded=False)
        memory = await store.learn(session, oom, "more_memory", {}, None, "run-2", 2)
        query = Signature("lint", "LintFailed", "lint failed: 1 ruff findings (F401); 1 fixable")
        hints = await store.similar(session, query, k=2)
        typed = await store.similar(session, "ruff findings lint failed fixable", k=2)
    # Then the same type comes first for a signature, though its record is worse; a typed text is ranked by score
    assert [h.entry_id for h in hints] == [patch, memory] and hints[0].score < hints[1].score
    assert {h.entry_id for h in typed} == {patch, memory}


async def test_another_organisations_entries_are_invisible(org: str, stack: Stack) -> None:
    ids = await fill(org)
    other = f"kb-{uuid.uuid4().hex[:8]}"
    sql("INSERT INTO organisations (id, name) VALUES (:o, :o)", o=other)
    async with acting(other) as session:
        assert await store.similar(session, KNOWN[0][0], k=5) == []
        assert await store.list_entries(session) == []
        with pytest.raises(store.EntryNotFound):
            await store.get_entry(session, ids["OutOfMemory"])
        with pytest.raises(store.EntryNotFound):
            await store.record_outcome(session, ids["OutOfMemory"], applied=True, succeeded=True)
    async with acting(org) as session:
        mine = await store.list_entries(session)
        assert {e.id for e in mine} >= set(ids.values()) and {e.org_id for e in mine} == {org}
        assert [e.id for e in await store.list_entries(session, remedy="ruff_fix")] == [ids["LintFailed"]]
        assert {e.error_type for e in await store.list_entries(session, with_remedy=False)} == {"TestFailed"}
        page = await store.list_entries(session, limit=2)
        assert [e.id for e in page] == [e.id for e in mine[:2]]
        after = page[-1].id
        assert after is not None
        assert [e.id for e in await store.list_entries(session, before=after, limit=1)] == [mine[2].id]


async def test_a_viewer_cannot_write_entries(org: str) -> None:
    with pytest.raises(Exception, match='violates row-level security policy "knowledge_entries_viewer_insert"'):
        async with acting(org, "viewer") as session:
            await store.add_entry(session, KNOWN[1][0], remedy="ruff_fix", author="viewer")


def _plan_sql(statement: object) -> tuple[str, dict[str, object]]:
    """The statement as the driver gets it: the model as a literal (``literal_execute``), the vector bound."""
    compiled = statement.compile(dialect=postgresql.psycopg.dialect(),  # type: ignore[attr-defined]
                                 compile_kwargs={"render_postcompile": True})
    return str(compiled), dict(compiled.params)


async def test_the_search_uses_the_models_hnsw_index(org: str) -> None:
    await fill(org)
    model = embedder()
    query = (await model.embed(["out of memory"], kind="query")).vectors[0]
    async with acting(org) as session:
        await vectors.tune(session)
        # The test's table is small, so a sequential scan would be cheaper: take it away to see the index chosen.
        await session.execute(text("SET LOCAL enable_seqscan = off"))
        statement, params = _plan_sql(vectors.nearest(query, model.model, 5, org=org))
        assert f"WHERE knowledge_entries.model = '{model.model}'" in statement  # a constant: the index's predicate
        params["query"] = "[" + ",".join(map(str, query)) + "]"
        connection = await session.connection()
        plan = "\n".join(row[0] for row in await connection.exec_driver_sql("EXPLAIN " + statement, params))
    index = vectors.index_name(model.model, model.dimension)
    assert f"Index Scan using {index} on knowledge_entries" in plan, plan
    assert "Order By: ((embedding)::vector(384) <=>" in plan, plan
    assert "Sort" not in plan  # the index gives the order


async def test_reembed_moves_every_entry_to_the_new_model_and_indexes_it(org: str) -> None:
    ids = await fill(org)
    other = f"kb-{uuid.uuid4().hex[:8]}"
    sql("INSERT INTO organisations (id, name) VALUES (:o, :o)", o=other)
    async with acting(other) as session:
        theirs = await store.add_entry(session, KNOWN[0][0], remedy="more_memory", author="kb-test")
    hashed = HashEmbedder()
    async with acting(org) as session:
        step = await store.reembed(session, hashed, batch=3, limit=4)
        assert (step.moved, step.remaining, step.index) == (4, len(ids) + 1 - 4, None)
        done = await store.reembed(session, hashed, batch=3)
        assert (done.moved, done.remaining) == (len(ids) + 1 - 4, 0)
        assert done.index == vectors.index_name(hashed.model, 64) and (done.model, done.dimension) == (hashed.model, 64)
        assert await store.count_by_model(session) == {hashed.model: len(ids) + 1}
        hints = await store.similar(session, "No module named hatchling", k=1, embedder=hashed)
        under_e5 = await store.similar(session, "No module named hatchling", k=1)
    assert hints[0].entry_id == ids["BuildBackendMissing"]
    assert under_e5 == []  # nothing of this organisation is under the old model any more
    assert sql("SELECT model FROM knowledge_entries WHERE id = :id", id=theirs) == [{"model": embedder().model}]
    assert sql("SELECT 1 AS found FROM pg_indexes WHERE indexname = :name", name=done.index) == [{"found": 1}]
