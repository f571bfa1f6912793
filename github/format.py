"""What devart shows on GitHub: check-run conclusions, summaries with the stage's figures, annotations, and the
pull-request review. Pure functions of the stage's result, so they are tested without any server.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from devart.core.contracts import StageResult, StageStatus

#: GitHub's limits: characters of a check run's summary/text, annotations per request, annotation title.
TEXT_LIMIT, ANNOTATIONS_PER_REQUEST, ANNOTATION_TITLE_LIMIT = 65_535, 50, 255
#: Annotations sent per check run at most (each batch of 50 is one request).
MAX_ANNOTATIONS = 250
#: Line comments in one review at most; the rest are listed in the review's body.
MAX_REVIEW_COMMENTS = 100
#: Findings and failures listed in a summary.
LISTED = 20
LEVELS = {"error": "failure", "warning": "warning", "info": "notice"}


@dataclass(frozen=True)
class Links:
    run: str
    trace: str | None
    trace_id: str | None
    history: str

    def markdown(self) -> str:
        parts = [f"[run]({self.run})"]
        if self.trace:
            parts.append(f"[trace]({self.trace})")
        parts.append(f"[Temporal history]({self.history})")
        return " · ".join(parts) + (f" · trace id `{self.trace_id}`" if self.trace_id else "")


def conclusion(status: StageStatus | str, error: str | None = None) -> str:
    """The check run's conclusion for a stage that ended in ``status``."""
    if status == StageStatus.SUCCEEDED:
        return "success"
    if status == StageStatus.SKIPPED:
        return "skipped"
    if status == StageStatus.FAILED:
        return "timed_out" if (error or "").startswith("timed out") else "failure"
    return "cancelled"


def _clip(text: str, limit: int = TEXT_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 20] + "\n… (truncated)"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")[:300]


def figures(result: StageResult | None, seconds: float | None) -> list[str]:
    """Markdown lines with what the stage measured: test counts, findings, build, duration and cost."""
    lines: list[str] = []
    out = result.output if result else {}
    if {"passed", "failed", "total"} <= out.keys():
        keys = ("passed", "failed", "errors", "skipped", "xfailed", "total")
        lines += ["| " + " | ".join(keys) + " | duration |", "|" + "---|" * (len(keys) + 1),
                  "| " + " | ".join(str(out.get(k, 0)) for k in keys) + f" | {out.get('duration', 0)}s |", ""]
        for failure in out.get("failures", [])[:LISTED]:
            lines.append(f"- ❌ `{_cell(failure.get('test', ''))}` {_cell(failure.get('message', ''))}")
    if isinstance(out.get("findings"), list):
        found = out["findings"]
        by_level = {level: sum(f.get("severity") == level for f in found) for level in LEVELS}
        lines += [f"**{len(found)} findings**: {by_level['error']} errors, {by_level['warning']} warnings, "
                  f"{by_level['info']} info", ""]
        if found:
            lines += ["| file | line | severity | rule | message |", "|---|---|---|---|---|"]
            lines += [f"| {_cell(f.get('file'))} | {f.get('line')} | {f.get('severity')} | "
                      f"{_cell(f.get('rule') or f.get('code') or '')} | {_cell(f.get('message', ''))} |"
                      for f in found[:LISTED]]
            if len(found) > LISTED:
                lines.append(f"| … | | | | {len(found) - LISTED} more |")
            lines.append("")
    if "wheel" in out:
        lines += [f"Built `{out['wheel']}` ({out.get('size_bytes', 0):,} bytes).", ""]
    if result is not None and result.remedies:
        lines += ["**Self-healing**: " + "; ".join(
            f"attempt {r.attempt}: `{r.name}` ({_cell(r.change)}) after {_cell(r.after)}"
            + (f", as knowledge entry {r.entry_id} suggested" if r.entry_id is not None else "")
            for r in result.remedies), ""]
    facts = []
    if seconds is not None:
        facts.append(f"duration {seconds:.1f}s")
    if result is not None:
        if result.attempt:
            facts.append(f"attempt {result.attempt}" + (f" by {result.agent}" if result.agent else ""))
        usage = result.usage
        tokens = ", ".join(f"{n:,} {model} tokens" for model, n in sorted(usage.model_tokens.items()))
        cost = getattr(result, "cost", 0.0)  # priced by the API when a price table is configured
        facts.append((f"cost {cost:.4f} for " if cost else "usage: ")
                     + f"{tokens or 'no model tokens'}, {usage.sandbox_cpu_seconds:.2f} sandbox CPU-seconds")
    if facts:
        lines.append("; ".join(facts))
    return lines


def check_output(stage: str, status: StageStatus | str, result: StageResult | None, error: str | None,
                 seconds: float | None, links: Links, note: str = "") -> dict[str, Any]:
    """The ``output`` of a check run (without annotations): title, summary with figures and links, log tail."""
    headline = (result.summary if result else "") or error or str(status)
    summary = [f"**{stage}** {status}" + (f": {headline}" if headline != str(status) else ""), ""]
    if note:
        summary += [note, ""]
    if error and result and error.split(": ", 1)[-1] not in headline:
        summary += [f"Error: {error}", ""]
    summary += figures(result, seconds)
    summary += ["", links.markdown()]
    output: dict[str, Any] = {"title": _clip(headline.splitlines()[0] if headline else stage, 200),
                              "summary": _clip("\n".join(summary))}
    if result and result.log_tail:
        output["text"] = _clip(f"Last lines of the log:\n\n```\n{result.log_tail[-TEXT_LIMIT + 100:]}\n```")
    return output


def finding_annotations(result: StageResult | None) -> list[dict[str, Any]]:
    """One annotation per finding with a file and a line, at most ``MAX_ANNOTATIONS``."""
    found = (result.output.get("findings") if result else None) or []
    notes = []
    for f in found:
        line = f.get("line")
        if not f.get("file") or not isinstance(line, int) or line < 1:
            continue
        rule = f.get("rule") or f.get("code") or "finding"
        note: dict[str, Any] = {"path": str(f["file"]), "start_line": line, "end_line": line,
                                "annotation_level": LEVELS.get(f.get("severity", ""), "warning"),
                                "message": str(f.get("message") or rule)[:60_000],
                                "title": f"{rule} ({f.get('severity', 'warning')})"[:ANNOTATION_TITLE_LIMIT]}
        column = f.get("column")
        if isinstance(column, int) and column >= 1:
            note["start_column"] = note["end_column"] = column
        notes.append(note)
        if len(notes) == MAX_ANNOTATIONS:
            break
    return notes


def review_comments(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Line comments for the findings on lines the pull request changed (GitHub refuses others)."""
    comments = []
    for f in findings:
        line = f.get("line")
        if f.get("in_diff") and f.get("file") and isinstance(line, int) and line >= 1:
            rule = f.get("rule") or f.get("code") or "finding"
            comments.append({"path": str(f["file"]), "line": line, "side": "RIGHT",
                             "body": f"**{f.get('severity', 'warning')}** `{rule}`: {f.get('message', '')}"})
    return comments[:MAX_REVIEW_COMMENTS]


def review_body(stage: str, result: StageResult, comments: list[dict[str, Any]], links: Links) -> str:
    """The review's text: the summary, and the findings that could not become line comments."""
    findings = result.output.get("findings") or []
    commented = {(c["path"], c["line"]) for c in comments}
    rest = [f for f in findings if (f.get("file"), f.get("line")) not in commented]
    lines = [f"### devart review ({stage})", "", result.summary, ""]
    if rest:
        lines += [f"{len(rest)} findings outside the lines this pull request changed:", ""]
        lines += [f"- `{f.get('file')}:{f.get('line')}` **{f.get('severity')}** "
                  f"`{f.get('rule') or f.get('code')}`: {_cell(f.get('message', ''))}" for f in rest[:LISTED]]
        if len(rest) > LISTED:
            lines.append(f"- … and {len(rest) - LISTED} more")
        lines.append("")
    lines.append(links.markdown())
    return _clip("\n".join(lines))


def fingerprint(comments: list[dict[str, Any]]) -> str:
    """Identifies a set of line comments: a re-run with the same ones updates the review instead of replacing it."""
    return hashlib.sha256(json.dumps(sorted(comments, key=json.dumps), sort_keys=True).encode()).hexdigest()


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    return (end - start).total_seconds() if start and end else None
