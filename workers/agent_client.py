"""The agent's HTTP client for the API: every call carries the agent's key and retries transient failures.

Retries (connection errors, 502/503/504) use tenacity with exponential backoff, so an API restart does not lose
a finished task: the agent keeps the AMQP message unacknowledged until the API has accepted its report. A refusal
(4xx) is never retried as it is: the same call would be refused again, so the caller decides what to send instead.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

from devart.core.contracts import StageResult, TaskDetail

#: How long an agent keeps trying to reach the API before giving up on one call.
API_RETRY_SECONDS = 120.0


class Refused(Exception):
    """The API refused the call (not our claim, attempt superseded or finished); the message says why."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(f"{status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class TooLarge(Refused):
    """The API refused a report past a size limit (413); the detail names the limit. Nothing was stored."""


def _detail(response: httpx.Response) -> str:
    """The API's reason: its ``detail``, with a list of field errors (a 422) said on one line."""
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        return response.text
    if isinstance(detail, list):
        return "; ".join(f"{'.'.join(str(p) for p in e.get('loc', []))}: {e.get('msg', '')}" for e in detail
                         if isinstance(e, dict))
    return str(detail)


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code in (502, 503, 504)


class AgentClient:
    def __init__(self, api_url: str, key: str, *, retry_seconds: float = API_RETRY_SECONDS) -> None:
        self._http = httpx.AsyncClient(
            base_url=api_url.rstrip("/"), headers={"Authorization": f"Bearer {key}"}, timeout=30.0
        )
        self._retry_seconds = retry_seconds
        HTTPXClientInstrumentor().instrument_client(self._http)  # the API's spans join the agent's trace

    async def close(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_transient),
            wait=wait_exponential_jitter(initial=0.2, max=5.0),
            stop=stop_after_delay(self._retry_seconds),
            reraise=True,
        ):
            with attempt:
                response = await self._http.request(method, path, json=body)
                if response.status_code in (502, 503, 504):
                    response.raise_for_status()
        if response.status_code == 413:
            raise TooLarge(413, _detail(response))
        if response.status_code in (401, 403, 404, 409, 422):
            raise Refused(response.status_code, _detail(response) if response.content else "")
        response.raise_for_status()
        return response

    async def me(self) -> dict[str, Any]:
        return dict((await self._call("GET", "/v1/agent/me")).json())

    async def broker(self) -> dict[str, Any]:
        """The agent's own RabbitMQ user (``enforced``, ``user``), set by the API for this key; see
        ``core.messaging.broker_users``."""
        return dict((await self._call("POST", "/v1/agent/broker", {})).json())

    async def keepalive(self, status: str, skills: list[str]) -> dict[str, Any]:
        """Report liveness; the reply says whether the agent is still active and must hand back its task."""
        return dict((await self._call("POST", "/v1/agent/keepalive", {"status": status, "skills": skills})).json())

    async def release(self, task: TaskDetail, reason: str) -> None:
        body = {"claim_id": task.claim_id, "reason": reason[:500]}
        await self._call("POST", f"/v1/agent/tasks/{task.task_id}/release", body)

    async def lanes(self) -> list[str]:
        return list((await self._call("GET", "/v1/agent/lanes")).json())

    async def claim(self, task_id: str) -> TaskDetail:
        """Claim the task under a claim id of our own, the same in every retry of this call: a retry after the
        answer was lost gets the claim back instead of "already claimed"."""
        body = {"claim_id": uuid.uuid4().hex}
        return TaskDetail.model_validate((await self._call("POST", f"/v1/agent/tasks/{task_id}/claim", body)).json())

    async def task_secrets(self, task: TaskDetail) -> dict[str, Any]:
        """The values of the task's ``secret:`` references (``values``) and the names its organisation lacks
        (``missing``); the API answers them to the holder of the task's claim only. Never logged."""
        path = f"/v1/agent/tasks/{task.task_id}/secrets?claim_id={task.claim_id}"
        return dict((await self._call("GET", path)).json())

    async def heartbeat(self, task: TaskDetail, details: dict[str, Any]) -> bool:
        """Returns whether the run asked to cancel this task."""
        body = {"claim_id": task.claim_id, "details": details}
        reply = await self._call("POST", f"/v1/agent/tasks/{task.task_id}/heartbeat", body)
        return bool(reply.json()["cancel_requested"])

    async def complete(self, task: TaskDetail, result: StageResult) -> None:
        body = {"claim_id": task.claim_id, "result": result.model_dump(mode="json")}
        await self._call("POST", f"/v1/agent/tasks/{task.task_id}/complete", body)

    async def fail(
        self, task: TaskDetail, error_type: str, message: str, non_retryable: bool, result: StageResult | None
    ) -> None:
        body = {
            "claim_id": task.claim_id,
            "error_type": error_type,
            "message": message[:4000],
            "non_retryable": non_retryable,
            "result": result.model_dump(mode="json") if result else None,
        }
        await self._call("POST", f"/v1/agent/tasks/{task.task_id}/fail", body)

    async def cancelled(self, task: TaskDetail) -> None:
        await self._call("POST", f"/v1/agent/tasks/{task.task_id}/cancelled", {"claim_id": task.claim_id})
