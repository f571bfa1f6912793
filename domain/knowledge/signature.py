"""A failure's signature: what stays the same when the same thing goes wrong again, in another run or workspace.

A failure's message and log tail are full of what changes from one occurrence to the next (the sandbox's temporary
folder, the run's paths, pids, durations, addresses, hashes, timestamps, line numbers). ``normalise`` replaces each
with a placeholder, so two occurrences of one failure have the same text, hence the same ``digest`` (an exact
match) and nearly the same embedding (a similar one); what tells failures apart (the error's words, a file's name, a
test's name) is kept.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

#: Characters a normalised message keeps (its start: where a failure says what it is).
MAX_MESSAGE_CHARS = 1000
#: Characters a normalised log tail keeps (its end: where a failing command says why it stopped).
MAX_LOG_TAIL_CHARS = 2000
#: Lines of a log tail looked at, from its end, before normalising.
LOG_TAIL_LINES = 30

_I = re.IGNORECASE
_TMP = r"(?:[A-Za-z]:)?[/\\](?:tmp|var[/\\]tmp|var[/\\]folders|private[/\\]var|temp)(?![\w.-])"
#: (pattern, placeholder), in order: the specific shapes before the general ones (a uuid's digits are not numbers).
_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", _I), "<uuid>"),
    (re.compile(r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?\b"), "<time>"),
    (re.compile(r"\b\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?\b"), "<time>"),
    (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"), "<ip>"),
    (re.compile(r"\b0x[0-9a-f]+\b", _I), "<addr>"),
    (re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>]*[^\s'\"<>.,;:)\]]", _I), "<url>"),
    # Temporary folders (a sandbox's or pytest's workspace differs on every run), up to a file's own name.
    (re.compile(_TMP + r"(?:[/\\][^\s'\":,;()\[\]/\\]+)*(?=[/\\][\w@+~-]+\.\w+(?![\w/\\]))", _I), "<tmp>"),
    (re.compile(_TMP + r"(?:[/\\][^\s'\":,;()\[\]/\\]+)*", _I), "<tmp>"),
    (re.compile(r"\btmp[a-z0-9_]{6,}\b", _I), "<tmp>"),
    # Paths: the folders go, the file's own name stays (it says which test or module).
    (re.compile(r"(?<![\w<>.])(?:[A-Za-z]:)?(?:[/\\][\w.@+~-]+)*[/\\](?=[\w.@+~-]+)"), "<path>/"),
    # Hashes: long runs of hex digits holding both a digit and a letter (commit ids, digests, object ids).
    (re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,}\b", _I), "<hex>"),
    (re.compile(r"\bline \d+", _I), "line <n>"),
    (re.compile(r"(?<=\.py):\d+(?::\d+)?"), ":<n>"),
    (re.compile(r"(?<![\w<])[-+]?\d+(?:\.\d+)?(?=[a-z]{1,3}\b)", _I), "<n>"),  # units: 512MiB, 1.5s, 30ms
    (re.compile(r"(?<![\w<])[-+]?\d+(?:[.,]\d+)*(?![\w>])"), "<n>"),
]
_SPACE = re.compile(r"\s+")


def normalise(text: str, *, limit: int = MAX_MESSAGE_CHARS, keep_end: bool = False) -> str:
    """``text`` with what changes between occurrences replaced by placeholders (``<tmp>``, ``<path>/``, ``<hex>``,
    ``<uuid>``, ``<time>``, ``<ip>``, ``<addr>``, ``<n>``), whitespace collapsed, cut to ``limit`` characters (its
    start, or its end with ``keep_end``). Normalising twice changes nothing more."""
    for pattern, placeholder in _RULES:
        text = pattern.sub(placeholder, text)
    text = _SPACE.sub(" ", text).strip()
    if len(text) <= limit:
        return text
    return text[-limit:].lstrip() if keep_end else text[:limit].rstrip()


def normalise_log_tail(log_tail: str) -> str:
    """The last ``LOG_TAIL_LINES`` lines of a log, normalised, their end kept."""
    lines = [line for line in log_tail.splitlines() if line.strip()][-LOG_TAIL_LINES:]
    return normalise("\n".join(lines), limit=MAX_LOG_TAIL_CHARS, keep_end=True)


@dataclass(frozen=True)
class Signature:
    """What identifies a failure: the skill that failed, its error type, and the message and log tail, normalised
    on construction (so a signature is always comparable with the knowledge base's, however it was made)."""

    skill: str
    error_type: str
    message: str
    log_tail: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "skill", self.skill.strip())
        object.__setattr__(self, "error_type", self.error_type.strip())
        object.__setattr__(self, "message", normalise(self.message))
        object.__setattr__(self, "log_tail", normalise_log_tail(self.log_tail))

    def text(self) -> str:
        """What is embedded: every part, labelled, the error's words first (an embedding model reads the start of a
        text most closely, and may cut its end)."""
        parts = [f"{self.error_type} in {self.skill}: {self.message}"]
        if self.log_tail:
            parts.append(f"log: {self.log_tail}")
        return "\n".join(parts)

    def digest(self) -> str:
        """SHA-256 of the skill, the error type and the message: the same failure, exactly. The log tail is left
        out: it carries progress and timing lines that differ between occurrences of one failure even when
        normalised, and would make exact matches rare."""
        joined = "\x1f".join((self.skill, self.error_type, self.message))
        return hashlib.sha256(joined.encode()).hexdigest()
