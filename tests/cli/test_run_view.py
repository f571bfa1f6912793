"""How ``devart runs show`` renders a stage: a self-healed retry names its remedy under the stage's details."""

from __future__ import annotations

from devart.cli.run_view import stage_details_cell


def test_a_healed_stage_shows_its_remedy() -> None:
    remedy = {"name": "more_memory", "attempt": 2, "after": "OutOfMemory", "change": "memory 128 -> 256 MiB",
              "parameters": {}, "entry_id": None}
    stage = {"name": "test", "status": "succeeded", "attempts": 2,
             "result": {"summary": "18 passed", "remedies": [remedy]}}
    assert stage_details_cell(stage).plain == (
        "18 passed\n↻ attempt 2: more_memory (memory 128 -> 256 MiB) after OutOfMemory")
    assert "↻" not in stage_details_cell({**stage, "result": {"summary": "18 passed"}}).plain
