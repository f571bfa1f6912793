"""The ``review`` skill: ruff plus heuristics on the change, and a model's review when the agent has an API key.

Inputs: ``base`` (ref to diff against; ``HEAD~1`` when empty and it exists) and ``model`` (default from
``DEVART_REVIEW_MODEL``, else ``gpt-4o-mini``). Without git history every file is reviewed. The review reports
findings; it never fails because of them. A retry's knowledge-base hints (the guidance and remedies of similar
past failures, ``ctx.task.hints``) go into the model's prompt: the model is the part of this skill that can use
written guidance.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from devart.core import settings
from devart.core.contracts import StageResult, TaskHint
from devart.core.errors import SkillError
from devart.workers.skills.base import SkillContext
from devart.workers.skills.common import DATA_OUTPUT_CAP, Commands, invalid_input, tail
from devart.workers.skills.lint import ruff_findings

#: A function added with more lines than this is flagged.
LONG_FUNCTION_LINES = 60
#: A text file added with more lines than this (or a binary one over LARGE_FILE_BYTES) is flagged.
LARGE_FILE_LINES, LARGE_FILE_BYTES = 1000, 1_000_000
#: Characters of diff or source sent to the model.
MODEL_INPUT_CHARS = 60_000
#: Seconds the model call may take before the review falls back to its static findings.
MODEL_TIMEOUT = 120.0
SEVERITY_RANK = {"error": 0, "warning": 1, "info": 2}

_PROMPT = (
    "You are a senior engineer reviewing a change to a repository. Report real problems only: bugs, security "
    "issues, error handling, misleading names, missing tests. Static-analysis findings are given; do not repeat "
    'them. Answer with JSON: {"findings": [{"file": str, "line": int, "severity": "error"|"warning"|"info", '
    '"message": str}]} and an empty list when the change is fine.'
)
#: Prints {path: text} for the repository's text files (argv: cap on total characters).
_LIST_FILES = r"""
import json, os, sys
skip = {"__pycache__", "node_modules", "dist", "build", "venv"}
budget, files = int(sys.argv[1]), {}
for top, dirs, names in os.walk("."):
    dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in skip and not d.endswith(".egg-info"))
    for name in sorted(names):
        path = os.path.relpath(os.path.join(top, name))
        try:
            if os.path.getsize(path) > 256_000: continue
            with open(path, encoding="utf-8") as f: text = f.read()
        except (OSError, UnicodeDecodeError): continue
        if "\0" in text or len(text) > budget: continue
        budget -= len(text); files[path] = text
print(json.dumps(files))
"""
_DEF = re.compile(r"^(\s*)(?:async\s+)?def\s+(\w+)")
_PRINT = re.compile(r"(?<![\w.])print\(")
_DEBUGGER = re.compile(r"\bbreakpoint\(\)|\bimport i?pdb\b|\bi?pdb\.set_trace\(")
_TODO = re.compile(r"\b(TODO|FIXME)\b")


@dataclass
class FileChange:
    added: dict[int, str] = field(default_factory=dict)
    new: bool = False
    binary: bool = False
    size: int = 0


async def run(ctx: SkillContext) -> StageResult:
    cmd = Commands(ctx)
    git_env = {"GIT_CEILING_DIRECTORIES": _git_ceiling(ctx)}
    base = await _base_ref(ctx, cmd, git_env)
    ruff = [{"file": f["file"], "line": f["line"], "severity": f["severity"], "rule": f["code"],
             "message": f["message"], "source": "ruff"} for f in await ruff_findings(ctx, cmd)]
    if base:
        ctx.progress(f"reviewing the diff against {base}")
        git_diff = ["git", "diff", "--relative", "--no-color", "--no-ext-diff"]  # paths relative to the workspace
        diff = await cmd.run("git diff", [*git_diff, "--unified=0", f"{base}...HEAD", "--"], env=git_env,
                             logged=False, output_cap=DATA_OUTPUT_CAP)
        if diff.exit_code != 0:
            cmd.note(f"$ git diff {base}...HEAD\n{tail(diff.output)}")
            raise SkillError(f"git diff against {base} failed with exit code {diff.exit_code}",
                             error_type="ReviewError", log_tail=cmd.log_tail)
        changes = parse_diff(diff.output)
        material = (await cmd.run("git diff", [*git_diff, f"{base}...HEAD", "--"], env=git_env, logged=False)).output
        for path, change in changes.items():
            if change.binary and change.new:
                size = await cmd.run("git cat-file", ["git", "cat-file", "-s", f"HEAD:./{path}"], env=git_env)
                change.size = int(size.output.strip()) if size.output.strip().isdigit() else 0
    else:
        files: dict[str, str] = await cmd.python_json("list files", _LIST_FILES, str(4 * MODEL_INPUT_CHARS))
        changes = {path: FileChange(added=dict(enumerate(text.splitlines(), 1))) for path, text in files.items()}
        material = "".join(f"=== {path} ===\n{text}\n" for path, text in files.items())

    findings = [{**f, "source": "diff"} for f in scan(changes)]
    for finding in ruff:
        finding["in_diff"] = bool(base) and finding["line"] in changes.get(finding["file"], FileChange()).added
    for finding in findings:
        finding["in_diff"] = bool(base)
    findings += ruff

    reviewer, note, usage = "static", "", cmd.usage()
    cfg = settings.model()
    if cfg.openai_api_key:
        model = str(ctx.task.inputs.get("model") or cfg.devart_review_model)
        ctx.progress(f"asking {model} for a review")
        try:
            model_findings = await _model_review(model, material, findings, usage.model_tokens,
                                                 hints=ctx.task.hints)
            findings += [{**f, "source": "model", "in_diff": bool(base)} for f in model_findings]
            reviewer = "model"
        except Exception as exc:  # any failure of the model falls back to the static review, and says so
            note = f"; model review unavailable ({type(exc).__name__}: {str(exc)[:200]}), static findings only"
            cmd.note(f"model review failed: {type(exc).__name__}: {exc}")

    findings.sort(key=lambda f: (not f["in_diff"], SEVERITY_RANK[f["severity"]], f["file"], f["line"]))
    counts = {level: sum(f["severity"] == level for f in findings) for level in SEVERITY_RANK}
    on_diff = sum(f["in_diff"] for f in findings)
    summary = (f"{len(findings)} findings ({counts['error']} errors, {counts['warning']} warnings)"
               + (f", {on_diff} on lines changed since {base}" if base else "") + note)
    usage.sandbox_cpu_seconds = cmd.usage().sandbox_cpu_seconds
    cmd.note(f"review ({reviewer}, {'diff against ' + base if base else 'every file'}): {summary}")
    return StageResult(status="succeeded", summary=summary, usage=usage, log_tail=cmd.log_tail, output={
        "findings": findings, "counts": counts, "total": len(findings), "reviewer": reviewer,
        "mode": "diff" if base else "files", "base": base, "files_reviewed": len(changes),
        **({"model_error": note.removeprefix("; ")} if note else {}),
    })


async def _base_ref(ctx: SkillContext, cmd: Commands, env: dict[str, str]) -> str | None:
    """The ref to diff against, or None to review every file (no git repository, or a single commit)."""
    inside = await cmd.run("git", ["git", "rev-parse", "--is-inside-work-tree"], env=env, logged=False)
    requested = str(ctx.task.inputs.get("base") or "").strip()
    if inside.exit_code != 0 or inside.output.strip() != "true":
        return None
    if requested.startswith("-"):
        raise invalid_input(f"input 'base' must be a git ref, got {requested!r}")
    ref = requested or "HEAD~1"
    found = await cmd.run("git", ["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], env=env,
                          logged=False)
    if found.exit_code != 0 and requested:
        raise invalid_input(f"base ref {requested!r} is not in the repository (is the clone shallow?)")
    return ref if found.exit_code == 0 else None


def _git_ceiling(ctx: SkillContext) -> str:
    """Where git stops looking for a repository: at the sandbox's own directory (named after its id) if the
    workspace path has one, so a clone's sub-directory still finds its clone, else at the workspace.

    Without it, a workspace copied from a plain directory would find the repository the sandbox root lives in.
    """
    parts = ctx.workspace.rstrip("/").split("/")
    if ctx.task.sandbox.id in parts[:-1]:
        return "/".join(parts[: len(parts) - parts[::-1].index(ctx.task.sandbox.id)]) or "/"
    return posixpath.dirname("/".join(parts)) or "/"


def parse_diff(text: str) -> dict[str, FileChange]:
    """Added lines per file, by new line number, from ``git diff --unified=0``."""
    changes: dict[str, FileChange] = {}
    current: FileChange | None = None
    in_header, new_file, line_no = False, False, 0
    for line in text.splitlines():
        if line.startswith("diff --git "):
            current, in_header, new_file = None, True, False
        elif in_header and line.startswith("new file mode"):
            new_file = True
        elif in_header and line.startswith("Binary files ") and " and b/" in line:
            path = line.split(" and b/", 1)[1].removesuffix(" differ")
            changes[path] = FileChange(new=new_file, binary=True)
        elif in_header and line.startswith("+++ "):
            path = line[4:].strip('"')
            current = None if path == "/dev/null" else changes.setdefault(path[2:], FileChange(new=new_file))
        elif line.startswith("@@"):
            in_header = False
            match = re.match(r"@@ -\S+ \+(\d+)", line)
            line_no = int(match.group(1)) if match else 0
        elif current is not None and not in_header and line.startswith("+"):
            current.added[line_no] = line[1:]
            line_no += 1
    return changes


def scan(changes: dict[str, FileChange]) -> list[dict[str, Any]]:
    """Heuristic findings on added lines: debug prints, debuggers, TODOs, long functions, large files."""
    found: list[dict[str, Any]] = []

    def add(path: str, line: int, severity: str, rule: str, message: str) -> None:
        found.append({"file": path, "line": line, "severity": severity, "rule": rule, "message": message})

    for path, change in changes.items():
        if change.binary:
            if change.new and change.size > LARGE_FILE_BYTES:
                add(path, 1, "warning", "large-file", f"large binary file added ({change.size:,} bytes)")
            continue
        python, test = path.endswith(".py"), _is_test(path)
        for number, text in sorted(change.added.items()):
            code = "" if text.lstrip().startswith("#") else text
            if python and not test and _PRINT.search(code):
                add(path, number, "warning", "debug-print", "print() left in library code; use logging or remove it")
            if python and _DEBUGGER.search(code):
                add(path, number, "error", "debugger", "debugger call left in the code")
            if marker := _TODO.search(text):
                add(path, number, "info", "todo", f"{marker.group(1)} comment: {text.strip()[:120]}")
        if python:
            for number, name, length in _long_functions(change.added):
                add(path, number, "warning", "long-function",
                    f"function '{name}' is {length} lines long (over {LONG_FUNCTION_LINES}); consider splitting it")
        if change.new and len(change.added) > LARGE_FILE_LINES:
            add(path, 1, "info", "large-file", f"large file added ({len(change.added)} lines)")
    return found


def _long_functions(added: dict[int, str]) -> list[tuple[int, str, int]]:
    """Functions wholly inside a run of added lines that are longer than ``LONG_FUNCTION_LINES``."""
    long = []
    for start, text in added.items():
        if not (match := _DEF.match(text)):
            continue
        indent, end, number, in_signature = len(match.group(1)), start, start, True
        while (number := number + 1) in added:
            line = added[number]
            if in_signature:
                in_signature = not added[number - 1].rstrip().endswith(":")
            if line.strip() and not in_signature and len(line) - len(line.lstrip()) <= indent:
                break
            end = number if line.strip() else end
        if end - start + 1 > LONG_FUNCTION_LINES:
            long.append((start, match.group(2), end - start + 1))
    return long


def _is_test(path: str) -> bool:
    name = posixpath.basename(path)
    return (name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py"
            or bool({"tests", "test"} & set(path.split("/")[:-1])))


def hints_prompt(hints: list[TaskHint]) -> str:
    """The knowledge base's hints as a prompt section ("" without any): each similar past failure's guidance and
    the remedy that fixed it, with how similar and how reliable it is, so the model can weigh them."""
    lines = []
    for hint in hints:
        said = [hint.guidance.strip()] if hint.guidance and hint.guidance.strip() else []
        if hint.remedy:
            said.append(f"remedy that worked: {hint.remedy}"
                        + (f" {json.dumps(hint.parameters, sort_keys=True)}" if hint.parameters else ""))
        if said:
            lines.append(f"- similarity {hint.similarity:.2f}, success rate {hint.success_rate:.2f}: "
                         + "; ".join(said))
    if not lines:
        return ""
    return ("Knowledge base: an earlier attempt of this stage failed; similar past failures were resolved as "
            "follows (use what applies, ignore what does not):\n" + "\n".join(lines) + "\n\n")


async def _model_review(model: str, material: str, static: list[dict[str, Any]], tokens: dict[str, int], *,
                        hints: list[TaskHint] | None = None) -> list[dict[str, Any]]:
    """The model's findings on ``material``; its token use is added to ``tokens`` even if its answer is bad."""
    from openai import AsyncOpenAI  # imported here: an agent without a key never needs it

    known = [{k: f[k] for k in ("file", "line", "rule", "message")} for f in static]
    user = (f"{hints_prompt(hints or [])}Static findings:\n{json.dumps(known)}\n\n"
            f"Change:\n{material[:MODEL_INPUT_CHARS]}")
    cfg = settings.model()
    key = cfg.openai_api_key.get_secret_value() if cfg.openai_api_key else None
    async with AsyncOpenAI(api_key=key, base_url=cfg.openai_base_url or None, timeout=MODEL_TIMEOUT,
                           max_retries=1) as client:
        response = await client.chat.completions.create(
            model=model, temperature=0, response_format={"type": "json_object"},
            messages=[{"role": "system", "content": _PROMPT}, {"role": "user", "content": user}])
    if response.usage:
        tokens[model] = tokens.get(model, 0) + response.usage.total_tokens
    data = json.loads(response.choices[0].message.content or "")
    findings = []
    for item in data.get("findings", []) if isinstance(data, dict) else []:
        if isinstance(item, dict) and str(item.get("message") or "").strip():
            severity = item.get("severity") if item.get("severity") in SEVERITY_RANK else "warning"
            line = item.get("line")
            findings.append({"file": str(item.get("file") or ""), "line": line if isinstance(line, int) else 0,
                             "severity": severity, "rule": "model", "message": str(item["message"]).strip()})
    return findings
