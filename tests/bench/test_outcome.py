"""``bench.scale.outcome``: a result's long poll the server refused or cancelled is asked again; a real failure is
not."""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.service import RPCError, RPCStatusCode

from bench import scale
from bench.scale import outcome


class Handle:
    """Answers ``result()`` with the given errors, then the result."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.asked = 0

    async def result(self) -> Any:
        self.asked += 1
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


async def test_a_cancelled_or_refused_long_poll_is_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scale, "RETRY_PAUSE_SECONDS", 0.0)
    handle = Handle(RPCError("operation was canceled", RPCStatusCode.CANCELLED, b""),
                    RPCError("namespace concurrent poller limit exceeded", RPCStatusCode.RESOURCE_EXHAUSTED, b""),
                    "done")
    assert await outcome(handle) == "done"  # type: ignore[arg-type]
    assert handle.asked == 3


async def test_any_other_error_is_the_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scale, "RETRY_PAUSE_SECONDS", 0.0)
    with pytest.raises(RPCError, match="not found"):
        await outcome(Handle(RPCError("workflow not found", RPCStatusCode.NOT_FOUND, b"")))  # type: ignore[arg-type]
