"""Replay histories are frozen: recorded once, never regenerated, and one at least for every workflow engine.

``test_replay.py`` proves today's workflow replays every file in ``histories/``. That proof is only worth something
if the files are what older releases really wrote: a history regenerated with today's code always replays, and
would hide the very change it exists to catch. So ``histories/FROZEN.sha256`` (``sha256sum`` format) lists every
history with its hash; a new history is added to it once, when it is recorded, and a changed or unlisted file fails
here. A history for the current engine is recorded when the engine is introduced (``RunInput.engine``), so every
behaviour a run in flight may have keeps a history that replays.

Where they come from: ``-v1``, ``-v4`` and ``-v5`` were recorded on the sample by the stack of their day. ``-v3`` are
the engine-3 recordings of the commit that introduced engines, taken back from git as they were. No release ever
started an engine-2 run, so ``-v2`` were recorded on that same commit's workflow code, started with engine 2, with
``standins.Recorded`` answering each activity as the ``-v3`` run's had; they replay on that commit's code and on
today's. The unsuffixed files are engine 5, recorded before this manifest.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

from devart.core.contracts import ENGINE

HISTORIES = Path(__file__).parent / "histories"
MANIFEST = HISTORIES / "FROZEN.sha256"
#: The engine a file's name promises: ``…-v3.json`` holds a run of engine 3.
NAMED_ENGINE = re.compile(r"-v(\d+)$")


def frozen() -> dict[str, str]:
    """File name → sha256 as the manifest lists them."""
    listed: dict[str, str] = {}
    for number, line in enumerate(MANIFEST.read_text().splitlines(), 1):
        digest, _, name = line.partition("  ")
        assert re.fullmatch(r"[0-9a-f]{64}", digest) and name, f"FROZEN.sha256 line {number} is not 'sha256  name'"
        assert name not in listed, f"FROZEN.sha256 lists {name} twice"
        listed[name] = digest
    return listed


def engine_of(path: Path) -> int:
    """The engine the recorded run started with: its input's ``engine``, 1 when absent (runs from before it)."""
    started = json.loads(path.read_text())["events"][0]["workflowExecutionStartedEventAttributes"]
    run_input = json.loads(base64.b64decode(started["input"]["payloads"][0]["data"]))
    return int(run_input.get("engine", 1))


def test_every_history_is_listed_with_its_hash() -> None:
    listed = frozen()
    files = {p.name: p for p in sorted(HISTORIES.glob("*.json"))}
    problems = []
    if unlisted := sorted(set(files) - set(listed)):
        problems.append(f"{unlisted} not in {MANIFEST.name}: once a new history is recorded, freeze it with "
                        f"`sha256sum NAME >> {MANIFEST.name}` in {HISTORIES.name}/")
    if missing := sorted(set(listed) - set(files)):
        problems.append(f"frozen histories deleted: {missing}; a run in flight may still need them to replay")
    if changed := sorted(name for name, path in files.items()
                         if name in listed and hashlib.sha256(path.read_bytes()).hexdigest() != listed[name]):
        problems.append(f"frozen histories changed: {changed}; never record a history again, record a new one (a "
                        "new engine) and keep the old one")
    assert not problems, "\n".join(problems)


def test_every_engine_has_a_history() -> None:
    engines = {engine_of(p) for p in HISTORIES.glob("*.json")}
    missing = sorted(set(range(1, ENGINE + 1)) - engines)
    assert not missing, (f"no recorded history for engine(s) {missing} (current: {ENGINE}): record a run of each "
                         "when it is introduced, name it …-v<engine>.json and freeze it")


def test_a_history_named_for_an_engine_holds_that_engine() -> None:
    named = {p.name: (int(m.group(1)), engine_of(p)) for p in HISTORIES.glob("*.json")
             if (m := NAMED_ENGINE.search(p.stem))}
    assert named, "no history is named for its engine"
    assert {name: pair for name, pair in named.items() if pair[0] != pair[1]} == {}
