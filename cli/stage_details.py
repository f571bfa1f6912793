"""What a stage says about why it failed, read from the API's run view.

The API gives each stage ``reason`` and ``failures``; an older API gives only ``error`` and ``result``, so each
helper falls back to those. A stage may have no result at all (the agent never reported), a result with no
``failures`` (a build or lint stage) or a reason only in ``error``: every helper copes with all three.
"""

from __future__ import annotations

from typing import Any

#: Statuses that need no explanation.
_FINE = {"succeeded", "pending", "running"}


def _first_line(text: Any) -> str:
    for line in str(text or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


def result_of(stage: dict[str, Any]) -> dict[str, Any]:
    result = stage.get("result")
    return result if isinstance(result, dict) else {}


def reason(stage: dict[str, Any]) -> str:
    """One line saying why the stage failed, was skipped, cancelled or paused; "" when it needs none."""
    if stage.get("status") in _FINE:
        return ""
    if "reason" in stage:
        return _first_line(stage["reason"])
    summary = result_of(stage).get("summary") if stage.get("status") == "failed" else ""
    return _first_line(stage.get("error")) or _first_line(summary)


def failures(stage: dict[str, Any]) -> list[dict[str, str]]:
    """The failing tests as ``{"test", "outcome", "message"}`` with a one-line message, malformed entries dropped."""
    listed = stage.get("failures")
    if listed is None:
        output = result_of(stage).get("output")
        listed = output.get("failures") if isinstance(output, dict) else None
    out = []
    for item in listed if isinstance(listed, list) else []:
        if isinstance(item, dict) and item.get("test"):
            out.append({"test": str(item["test"]), "outcome": str(item.get("outcome") or "failed"),
                        "message": _first_line(item.get("message"))})
        elif isinstance(item, str) and item:
            out.append({"test": item, "outcome": "failed", "message": ""})
    return out


def failure_count(stage: dict[str, Any]) -> int:
    """How many tests failed in all: the skill lists only the first ones but counts every one."""
    output = result_of(stage).get("output")
    counted = 0
    if isinstance(output, dict):
        counted = sum(v for k in ("failed", "errors") if isinstance(v := output.get(k), int))
    return max(counted, len(failures(stage)))


def log_tail(stage: dict[str, Any], lines: int) -> list[str]:
    """The last ``lines`` non-trailing-blank lines of the stage's log tail (empty when it has none)."""
    text = result_of(stage).get("log_tail")
    if not isinstance(text, str):
        return []
    return text.rstrip().splitlines()[-lines:] if text.strip() else []
