"""A batch of runs survives its agents, the pipeline worker, the API and Temporal being SIGKILLed mid-run.

Twenty runs (chains and fan-outs that must succeed, runs whose stage exits 1 that must fail, one cancelled while
its command runs) start over 40 seconds while eight kills over 50 seconds, in an order drawn from the seed, take down
an agent, the worker, the API, the agents' API (where the agents claim and report, as under ``devart up``) and the
Temporal dev server, each at least once, for a short outage each. Then every
run must have ended as designed in the API, in Temporal and in the feed, no result may have been applied twice, no
sandbox or sandboxed process may be left after the sweep, and every part must run exactly once.

``DEVART_CHAOS_SEED=<n>`` replays a batch (the seed is in every failure message); without it each session draws one.
``python -m bench.chaos`` runs the same harness at scale.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections import Counter
from pathlib import Path

import pytest

from devart.sandboxes.factory import get_sandbox
from devart.sandboxes.local import LocalSandbox
from tests.chaos.checks import verify
from tests.chaos.clients import until
from tests.chaos.harness import Harness
from tests.chaos.plan import EXPECTED, make_plan
from tests.helpers import unique
from tests.stack import Stack, sql

#: Runs, kills and the seconds they are spread over: sized so the whole test takes about two minutes on 2 CPUs.
RUNS, KILLS, WINDOW = 20, 8, 50.0
#: Seconds every run has to end once the chaos is over (the last killed part serves again).
SETTLE = 120.0
#: Agents serving the batch's lane, and the tasks each runs at once.
AGENTS, CONCURRENCY = 3, 3


@pytest.mark.timeout(420)  # about two minutes; kills run late on a busy machine
async def test_runs_survive_sigkills(stack: Stack, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="devart.chaos")
    seed = int(os.environ.get("DEVART_CHAOS_SEED") or random.randrange(1_000_000))
    # Given agents of a lane of their own, and a small repository
    capability = unique("chaos")
    agents = [unique("chaos-agent") for _ in range(AGENTS)]
    since = time.time()
    for name in agents:
        stack.start_agent(name, [capability], "--concurrency", str(CONCURRENCY))

    async def serving() -> bool:
        rows = sql("SELECT name FROM agents WHERE name = ANY(:n) AND extract(epoch FROM last_seen_at) > :t",
                   n=agents, t=since)
        return len(rows) == len(agents)

    await until(serving, deadline=60, what="the batch's agents to serve")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README").write_text("a repository for chaos runs\n")
    # When the batch runs while its parts are killed and started again
    plan = make_plan(seed, runs=RUNS, kills=KILLS, window=WINDOW, agents=agents)
    sandbox = get_sandbox()
    assert isinstance(sandbox, LocalSandbox), "the chaos test counts sandboxes of the local backend"
    harness = Harness(stack, plan, prefix=unique("chaos"), capability=capability, agents=agents, repo=repo,
                      agents_api_url=stack.agents_api_url)
    try:
        await harness.run_batch(settle=SETTLE)
        verdict = await verify(harness, sandbox_root=sandbox.root, temporal_db=stack.temporal_db)
    finally:
        await harness.close()
    logging.getLogger("devart.chaos").info("chaos seed %s: %s", seed, json.dumps(verdict.figures))
    # Then every run ended as designed, once, with nothing applied twice and nothing left behind
    replay = f"chaos seed {seed} (replay: DEVART_CHAOS_SEED={seed} pytest tests/chaos)"
    assert not verdict.problems, "\n".join([replay, *verdict.problems, json.dumps(verdict.figures, indent=1)])
    designed = Counter(EXPECTED[r.kind][0] for r in plan.runs)
    assert verdict.figures["end_states"] == dict(designed), replay
    assert any(k["in_flight"] for k in verdict.figures["kills"]), f"no kill found a run going: {replay}"
