"""What an agent's report may weigh, measured the way Temporal encodes it.

The API checks every result before it stores or forwards it, so a result Temporal would refuse (its payload limit)
is never recorded as succeeded in PostgreSQL while the run fails for a reason nobody reported. The agent checks its
own result before sending it too: that saves the upload and lets it fail the stage with the reason at once; the
API's check is the one that counts (an older agent, another SDK, a run-wide limit only the API can see).
"""

from __future__ import annotations

from typing import Any

from temporalio.contrib.pydantic import pydantic_data_converter

from devart.core.bounds import MAX_RESULT_BYTES, MAX_RUN_RESULTS_BYTES, TEMPORAL_BLOB_BYTES, size
from devart.core.contracts import StageResult, Usage

#: Characters of a log tail kept when an oversized result is replaced by its failure (as the built-in skills keep).
KEPT_LOG_CHARS = 4000


def encoded_size(value: Any) -> int:
    """Bytes of ``value`` as one Temporal payload under devart's data converter, metadata included."""
    return int(pydantic_data_converter.payload_converter.to_payloads([value])[0].ByteSize())


def report_size(result: StageResult | None, message: str = "") -> int:
    """Bytes a report adds to Temporal's records: the result, and a failure's message beside it."""
    return (encoded_size(result) if result is not None else 0) + len(message.encode())


def result_problem(found: int) -> str | None:
    """Why a report of ``found`` bytes cannot be accepted, naming the limit; None when it can."""
    if found <= MAX_RESULT_BYTES:
        return None
    return (f"result of {found} bytes exceeds the limit of {MAX_RESULT_BYTES} bytes ({size(MAX_RESULT_BYTES)}): a "
            f"stage's result travels through Temporal, whose payloads are limited to {size(TEMPORAL_BLOB_BYTES)}")


def run_problem(found: int, others: int, run_id: str) -> str | None:
    """Why a report of ``found`` bytes cannot join the ``others`` bytes of its run's other stages; None if it can."""
    if found + others <= MAX_RUN_RESULTS_BYTES:
        return None
    return (f"result of {found} bytes exceeds the limit of {MAX_RUN_RESULTS_BYTES} bytes "
            f"({size(MAX_RUN_RESULTS_BYTES)}) for all the stage results of run {run_id} together, of which its "
            f"other stages hold {others}: the run's record and the workflow's result carry every one of them")


def shrunk(result: StageResult | None, reason: str) -> StageResult:
    """The failure report that replaces an oversized result: the reason, the usage (its cost still counts) and the
    end of the log tail; the skill's output is dropped."""
    return StageResult(status="failed", summary=reason, log_tail=result.log_tail[-KEPT_LOG_CHARS:] if result else "",
                       usage=result.usage if result else Usage())
