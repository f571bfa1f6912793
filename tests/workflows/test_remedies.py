"""The built-in remedies on the real stack, one stage each: the failure a first attempt meets, the remedy its retry
gets (shown on the stage), and the verdict the retry reaches. Out of memory is in ``test_self_heal.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.helpers import noop_stage, publish, start, unique, wait_run
from tests.stack import Stack


def attempts(stage: dict[str, Any]) -> list[tuple[str, str]]:
    """Each attempt's status and error type."""
    return [(a["status"], (a.get("error") or "").partition(":")[0]) for a in stage["attempt_log"]]


def remedies(stage: dict[str, Any]) -> list[tuple[str, int, str, str]]:
    return [(r["name"], r["attempt"], r["after"], r["change"]) for r in (stage["result"] or {}).get("remedies", [])]


async def test_a_command_outliving_its_limit_gets_a_longer_one(
    api: httpx.AsyncClient, stack: Stack, tmp_path: Path
) -> None:
    # Given a stage whose command takes 3 s under a sandbox command limit of 2 s (the stage itself may take 120 s)
    cap = unique("slow")
    stack.start_agent(unique("agent"), [cap])
    name = unique("timeout")
    stage = {**noop_stage("slow", cap, sandbox_command="sleep 3"), "sandbox": {"timeout": 2}}
    await publish(api, {"name": name, "stages": [stage]})
    # When it runs
    run = await wait_run(api, await start(api, name, tmp_path), deadline=120)
    # Then the first attempt failed as a command timeout, and the retry had twice the limit and succeeded
    found = run["stages"][0]
    assert run["status"] == "succeeded", found["attempt_log"]
    assert attempts(found) == [("failed", "CommandTimeout"), ("succeeded", "")]
    assert "outlived the sandbox's command time limit (2s)" in found["attempt_log"][0]["error"]
    assert remedies(found) == [("longer_timeout", 2, "CommandTimeout", "command time limit 2 -> 4 s")]
