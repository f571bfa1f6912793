"""Failure signatures: what changes between occurrences of one failure is stripped, what tells failures apart stays.

The knowledge base finds a past failure by its digest (exactly the same normalised signature) or by its embedding;
both work only if two occurrences of one failure normalise to the same text.
"""

from __future__ import annotations

import pytest

from devart.domain.knowledge.signature import (
    LOG_TAIL_LINES,
    MAX_LOG_TAIL_CHARS,
    MAX_MESSAGE_CHARS,
    Signature,
    normalise,
)

CASES = [
    ("Killed process 12345 (python) total-vm:2048000kB at 2024-05-01T12:34:56.789Z",
     "Killed process <n> (python) total-vm:<n>kB at <time>"),
    ('File "/tmp/devart-sandbox-abc123/work/tests/test_slug.py", line 42, in test_slugify',
     'File "<tmp>/test_slug.py", line <n>, in test_slugify'),
    ("/home/runner/work/proj/src/app/main.py:17:5: F401 'os' imported but unused",
     "<path>/main.py:<n>: F401 'os' imported but unused"),
    ("fatal: reference is not a tree: 3f786850e387550fdab836ed7e6dc881de23001b",
     "fatal: reference is not a tree: <hex>"),
    ("request 550e8400-e29b-41d4-a716-446655440000 failed connecting to 10.0.0.12:5432",
     "request <uuid> failed connecting to <ip>"),
    ("Segfault at 0x7ffd5a3b2c10 after 1.5s; used 512MiB of 1.5GiB",
     "Segfault at <addr> after <n>s; used <n>MiB of <n>GiB"),
    ("No module named 'setuptools' in /tmp/tmpab12cd34/build-env", "No module named 'setuptools' in <tmp>"),
    ("C:\\Users\\bob\\proj\\tests\\test_a.py:10: AssertionError", "<path>/test_a.py:<n>: AssertionError"),
    ("timed out after 300 seconds at 12:01:02", "timed out after <n> seconds at <time>"),
    ("see https://example.com/a/b/c.html, then ./src/x.py", "see <url>, then ./src/x.py"),
    ("exit  code\t137\n\n  (signal -9)", "exit code <n> (signal <n>)"),
]


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_what_changes_between_occurrences_is_replaced(raw: str, expected: str) -> None:
    assert normalise(raw) == expected
    assert normalise(expected) == expected  # normalising twice changes nothing more


def test_words_that_tell_failures_apart_are_kept() -> None:
    # Identifiers with digits in them (python3, py311, e5, sha256) and relative paths name things: they stay
    kept = "ModuleNotFoundError: py311 e5 sha256 in src/pkg/mod.py test_x0 deadbeef"
    assert normalise(kept) == kept


def test_two_occurrences_of_one_failure_have_one_digest() -> None:
    first = Signature("test", "OutOfMemory", "Killed process 4242 (pytest) in /tmp/run-a/ws, rss 3.9GiB",
                      "12:00:01 collected 120 items\n12:00:09 MemoryError")
    second = Signature("test", "OutOfMemory", "Killed process 977 (pytest) in /tmp/run-b/ws, rss 4.1GiB",
                       "13:10:44 collected 121 items\n13:10:52 MemoryError")
    other = Signature("test", "Timeout", "Killed process 977 (pytest) in /tmp/run-b/ws, rss 4.1GiB")
    assert first == second and first.digest() == second.digest()
    assert other.digest() != first.digest()
    assert first.text().startswith("OutOfMemory in test: Killed process <n> (pytest) in <tmp>")
    assert "log: <time> collected <n> items <time> MemoryError" in first.text()


def test_the_log_tail_keeps_its_end_and_the_message_its_start() -> None:
    lines = [f"line {i} of the log: step {i} done" for i in range(200)] + ["FATAL: the build backend is missing"]
    signature = Signature("build", "BuildFailed", "error " * 1000, "\n".join(lines))
    assert signature.log_tail.endswith("FATAL: the build backend is missing")
    assert len(signature.log_tail) <= MAX_LOG_TAIL_CHARS
    assert signature.log_tail.count("of the log") <= LOG_TAIL_LINES
    assert signature.message.startswith("error error") and len(signature.message) <= MAX_MESSAGE_CHARS


def test_the_digest_leaves_the_log_tail_out() -> None:
    # The log tail's progress lines differ between occurrences even normalised; the message says what failed
    a = Signature("test", "TestFailed", "assert slugify('a b') == 'a-b'", "....F.. [ 70%]")
    b = Signature("test", "TestFailed", "assert slugify('a b') == 'a-b'", "..F [ 50%]\nFAILED tests/test_slug.py")
    assert a.digest() == b.digest() and a.text() != b.text()
