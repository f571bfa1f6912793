"""Input limits: the largest value of each kind devart accepts, and why each keeps what lies downstream safe.

Every limit is checked at the edge (the API's middleware and schemas, the pipeline parser, the YAML loader), so an
oversized or pathological input is refused with a message naming the limit before anything is stored or started.
The numbers sit far above what a real pipeline, run or webhook needs; the README's "Input limits" lists them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any

KiB = 1024
MiB = 1024 * KiB

#: A request body of any API route. A pipeline definition is a few KiB; 1 MiB keeps parsing cheap and leaves a
#: run's workflow input well under Temporal's payload limit.
MAX_BODY_BYTES = 1 * MiB
#: A GitHub webhook delivery, refused before its signature is checked (anyone can send one). The events devart acts
#: on carry at most two 65,536-character texts (a PR or issue body and a comment, about 0.5 MB of UTF-8) beside
#: fixed metadata; bigger deliveries are of events devart ignores.
MAX_WEBHOOK_BYTES = 1 * MiB

#: Nesting of any free-form JSON value (run parameters, stage inputs, heartbeat details) and of a pipeline or YAML
#: document as a whole. Pydantic's JSON parser, with which the Temporal worker decodes a workflow's input, stops at
#: 200 levels counted from the payload's root; 32 leaves room for the envelope and is more than any real input uses.
MAX_DEPTH = 32
#: Items of one list or entries of one mapping in a free-form value or a document.
MAX_ITEMS = 1000
#: One string anywhere in a free-form value or a document (a stage's script, a long description).
MAX_STRING_CHARS = 64 * KiB

#: Names: pipelines, parameters, agents, skills, claim ids, GitHub owners and repositories.
MAX_NAME_CHARS = 256
#: A value PostgreSQL keeps in a btree index (a budget's name): an index entry holds at most 2,704 bytes, and 512
#: characters of up to 4 bytes each fit.
MAX_KEY_CHARS = 512
#: A repository's path or URL, a git ref, a clone URL: Linux's PATH_MAX, longer than any real URL.
MAX_LOCATION_CHARS = 4096
#: Short free text: an agent's owner, a reason.
MAX_TEXT_CHARS = 4096
#: A pipeline's description: shown in every ``GET /v1/pipelines`` answer, so it stays a paragraph.
MAX_DESCRIPTION_CHARS = 4096

#: A run's parameters: how many, and their size as JSON. They travel in the workflow input, in every stage's task
#: message and in each substituted ``${param}``.
MAX_PARAMS = 100
MAX_PARAMS_BYTES = 64 * KiB
#: Stages of a pipeline: the workflow keeps every stage's state in its history and answers queries with all of them.
MAX_STAGES = 100

#: PostgreSQL's ``integer`` (pipeline versions) and ``bigint`` (ids, micro-unit amounts) ranges: a larger number
#: would make the query fail instead of finding nothing.
INT4_MAX = 2**31 - 1
INT8_MAX = 2**63 - 1
#: A budget, in the price table's currency: stored as micro-units in a ``bigint`` (at most 9.2e12 units), so a
#: trillion fits with room to spare.
MAX_MONEY = 1e12

#: Temporal's default limit on one payload (the server's ``limit.blobSize.error``): a larger workflow input is
#: refused by the server, and an activity input past it fails the workflow task over and over.
TEMPORAL_BLOB_BYTES = 2 * MiB
#: A run's workflow input (the definition, source and parameters), checked before the workflow starts: half of
#: Temporal's limit, so the history's other events (stage results, retries) keep the rest.
MAX_WORKFLOW_INPUT_BYTES = TEMPORAL_BLOB_BYTES // 2
#: One stage's task input once ``${param}`` is substituted: it is an activity input and a RabbitMQ message.
MAX_STAGE_INPUT_BYTES = 256 * KiB
#: A pipeline definition as stored, defaults filled in: what every run of it carries in its workflow input.
MAX_DEFINITION_BYTES = 512 * KiB

#: A YAML document: read whole before parsing, so the same size as a body the API accepts.
MAX_YAML_BYTES = MAX_BODY_BYTES
#: Aliases (``*name``) in one YAML document: anchors share a retry policy or sandbox between stages, a handful each.
MAX_YAML_ALIASES = 1000
#: Nodes of a YAML document once every alias is expanded: a "billion laughs" document is a few hundred bytes that
#: expand to 10^9 nodes; a pipeline of 100 stages is a few thousand.
MAX_YAML_NODES = 100_000

# What agents report and announce (checked by the agent routes and, for results, by the agent before it sends one;
# core/reports.py measures a report the way Temporal encodes it). A result past these is refused before anything is
# stored, so PostgreSQL never records a result that Temporal then refuses.

#: One stage's result as Temporal encodes it (the activity's completion, or its failure's details and message): an
#: eighth of Temporal's payload limit and half the size at which the server starts warning (512 KiB). Built-in
#: skills report a few KiB (a 4,000-character log tail, at most 50 failing tests).
MAX_RESULT_BYTES = 256 * KiB
#: The results of all of a run's stages together: the run's record and the workflow's own result (or failure) each
#: carry every stage's result in one payload, so together they keep to half of Temporal's limit.
MAX_RUN_RESULTS_BYTES = TEMPORAL_BLOB_BYTES // 2
#: Heartbeat details: Temporal keeps the last ones with the activity and writes them into its history on a timeout.
MAX_HEARTBEAT_BYTES = 64 * KiB
#: A failure's message: it becomes the stage's error, repeated in the run's error and the workflow's failure.
MAX_FAILURE_MESSAGE_CHARS = MAX_TEXT_CHARS
#: Skills an agent announces, and capabilities an agent is registered with: a real agent has a handful.
MAX_AGENT_SKILLS = 64
MAX_AGENT_CAPABILITIES = 64
#: A skill's name: it is matched against pipelines' stages and listed in their validation messages.
MAX_SKILL_NAME_CHARS = 64
SKILL_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")

_SURROGATE = re.compile("[\ud800-\udfff]")


def size(n: int) -> str:
    """``n`` bytes as people read a limit: ``1 MiB``, ``64 KiB``, ``512 bytes``."""
    for unit, scale in (("MiB", MiB), ("KiB", KiB)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"


def json_size(value: Any) -> int:
    """Bytes of ``value`` as compact JSON (how it is stored and sent); dates from YAML count as their text."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str).encode())


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text, or None.

    PostgreSQL text cannot hold NUL, and a lone UTF-16 surrogate (which JSON's ``\\ud800`` escapes can produce) is
    not UTF-8; either would fail the query after the request was accepted.
    """
    if "\x00" in value:
        return "contains a NUL byte (\\u0000), which no devart text field accepts"
    if _SURROGATE.search(value):
        return "contains a lone UTF-16 surrogate, which is not valid UTF-8 text"
    return None


def tree_problems(value: Any, where: str = "", *, depth: int = MAX_DEPTH, limit: int = 5) -> list[str]:
    """What keeps a decoded JSON or YAML value from being accepted, naming the place and the limit.

    The one check of free-form values: nesting deeper than ``depth``, lists and mappings longer than ``MAX_ITEMS``,
    strings longer than ``MAX_STRING_CHARS`` or not storable as text, integers outside PostgreSQL's ``bigint`` and
    floats that are infinite or NaN. It stops at ``depth``, so a pathological value cannot exhaust the stack, and
    after ``limit`` problems.
    """
    problems: list[str] = []
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack and len(problems) < limit:
        node, path, level = stack.pop()
        label = path or "the value"
        if isinstance(node, dict | list):
            if level >= depth:
                problems.append(f"{label}: nested deeper than {depth} levels (the limit for any JSON or YAML value)")
                continue
            if len(node) > MAX_ITEMS:
                problems.append(f"{label}: {len(node)} items; at most {MAX_ITEMS} are accepted")
                continue
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, child in reversed(list(items)):
                if isinstance(key, str) and (why := text_problem(key)):
                    problems.append(f"{label}: a key {why}")
                    break
                child_path = f"{path}[{key}]" if isinstance(node, list) else (f"{path}.{key}" if path else str(key))
                stack.append((child, child_path, level + 1))
        elif isinstance(node, str):
            if len(node) > MAX_STRING_CHARS:
                problems.append(f"{label}: {len(node)} characters; a string may have at most {MAX_STRING_CHARS}")
            elif why := text_problem(node):
                problems.append(f"{label} {why}")
        elif isinstance(node, bool):
            continue
        elif isinstance(node, int):
            if not -INT8_MAX - 1 <= node <= INT8_MAX:
                problems.append(f"{label}: {_short(node)} is outside the 64-bit integer range devart stores")
        elif isinstance(node, float) and not math.isfinite(node):
            problems.append(f"{label}: {node} is not a finite number")
    return problems


def _short(number: int) -> str:
    """A number short enough for a message (Python refuses to print more than 4,300 digits anyway)."""
    if number.bit_length() <= 128:
        return str(number)
    return f"a {'negative ' if number < 0 else ''}number of about {int(number.bit_length() * 0.30103)} digits"


def skills_problem(skills: Iterable[str]) -> str | None:
    """Why an agent may not announce these skills, naming the limit (too many, a name too long or ill-formed); None
    when it may. Checked by the API on every keepalive, and by the agent and the SDK before they start."""
    unique = sorted(set(skills))
    if len(unique) > MAX_AGENT_SKILLS:
        return f"{len(unique)} skills announced; an agent may announce at most {MAX_AGENT_SKILLS}"
    for skill in unique:
        if len(skill) > MAX_SKILL_NAME_CHARS:
            return f"skill name {skill[:20]!r}... has {len(skill)} characters; at most {MAX_SKILL_NAME_CHARS}"
        if not SKILL_NAME.fullmatch(skill):
            return (f"skill name {skill!r} does not match {SKILL_NAME.pattern} (lower-case letters, digits and . _ -, "
                    "starting with a letter or a digit)")
    return None
