"""The run's DAG: which stages may start now, and which can no longer run because a dependency did not succeed.

Pure functions over the stages' states, apart from ``PipelineWorkflow`` so the workflow module holds the run's
ordering and its steps only.
"""

from __future__ import annotations

from collections.abc import Collection

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from devart.core.contracts import StageState, StageStatus


def ready(states: dict[str, StageState], started: Collection[str]) -> list[str]:
    """Pending stages not started yet whose dependencies all succeeded, in template order."""
    return [
        name
        for name, st in states.items()
        if st.status == StageStatus.PENDING
        and name not in started
        and all(states[d].status == StageStatus.SUCCEEDED for d in st.depends_on)
    ]


def skip_blocked(states: dict[str, StageState]) -> None:
    """Mark pending stages whose dependency failed or was skipped; repeat until nothing changes."""
    changed = True
    while changed:
        changed = False
        for st in states.values():
            if st.status != StageStatus.PENDING:
                continue
            done_badly = (StageStatus.FAILED, StageStatus.SKIPPED)
            blocked = [d for d in st.depends_on if states[d].status in done_badly]
            if blocked:
                st.status = StageStatus.SKIPPED
                st.error = f"skipped because '{blocked[0]}' did not succeed"
                changed = True
