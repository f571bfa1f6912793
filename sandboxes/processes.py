"""A local sandbox command's process: its environment, its output, its records, killing its tree.

Blocking helpers; callers in ``async`` code run the file-touching ones with ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import os
import re
import signal
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path

import psutil

from devart.core import process_start
from devart.core.contracts import SandboxSpec
from devart.core.errors import SandboxError
from devart.sandboxes.base import OutputCallback, current_store_secrets, secret_variable, store_name, store_value

#: Variable names the sandbox's shell can export.
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Bytes read from a command's output at a time; also the longest partial line held back from ``on_output``.
READ_CHUNK = 65536
#: Shown instead of a secret's value wherever the command prints it.
REDACTED = "***"
#: Secrets shorter than this are not redacted: replacing "1" or "yes" everywhere would garble the log.
MIN_REDACTED_LENGTH = 4


class OutputBuffer:
    """A command's output: passed on to ``on_output`` line by line, and kept up to its last ``cap`` characters.

    Secret values in ``redact`` are replaced by ``***`` in both (a value split across a line break is missed).
    """

    def __init__(self, cap: int, on_output: OutputCallback | None, redact: Sequence[str] = ()) -> None:
        self.cap = max(cap, 0)
        self.on_output = on_output
        self.dropped = False
        self._redact = sorted({value for value in redact if len(value) >= MIN_REDACTED_LENGTH}, key=len, reverse=True)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._parts: list[str] = []
        self._size = 0
        self._line = ""

    async def pump(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(READ_CHUNK):
            self.feed(chunk)
        self.feed(b"", final=True)

    def feed(self, data: bytes, final: bool = False) -> None:
        text = self._decoder.decode(data, final)
        self._parts.append(text)
        self._size += len(text)
        if self._size > 2 * self.cap + READ_CHUNK:  # compact now and then, not on every chunk
            self._parts, self._size = ["".join(self._parts)[-self.cap - READ_CHUNK:]], self.cap + READ_CHUNK
            self.dropped = True
        if self.on_output is not None:
            self._line += text
            end = len(self._line) if final or len(self._line) > READ_CHUNK else self._line.rfind("\n") + 1
            complete, self._line = self._line[:end], self._line[end:]
            for line in complete.splitlines(keepends=True):
                self.on_output(self.redacted(line))

    def redacted(self, text: str) -> str:
        for value in self._redact:
            text = text.replace(value, REDACTED)
        return text

    @property
    def text(self) -> str:
        # Redact before cutting, so the cap never leaves half a secret at the start.
        joined = self.redacted("".join(self._parts))
        return joined[max(len(joined) - self.cap, 0):]

    @property
    def truncated(self) -> bool:
        return self.dropped or self._size > self.cap


def create_time(pid: int) -> float | None:
    """When ``pid`` started (seconds from boot, ``core.process_start``): with the pid, it names the process even
    after the number is reused, and whatever the wall clock does meanwhile."""
    return process_start.since_boot(pid)


def kill_group(pid: int, started: float | None) -> None:
    """SIGKILL the process group ``pid`` leads, and every descendant of it (which may have left the group).

    The command was started as a session leader, so its group id is its pid. A pid that now names another
    process (reused after ours was reaped) is left alone; a dead leader's number can't be reused while its
    group still has members, so killing that group is safe. Under bubblewrap, killing the leader (bwrap) also
    kills the sandbox's pid namespace, and with it every process of the command.
    """
    victims: list[psutil.Process] = []
    try:
        leader = psutil.Process(pid)
        if not process_start.is_start_of(pid, started):
            return  # that number now names another process
        victims = leader.children(recursive=True)
    except psutil.Error:
        pass
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    for process in victims:
        with suppress(psutil.Error):
            process.kill()


def tree_cpu(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and its descendants, the reaped ones included.

    Only used without cgroups (which count exactly). A lower bound: it is sampled while the command runs, and
    the last moments before exit are not seen (asyncio reaps the process, so its final rusage is out of reach).
    """
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for process in processes:
        with suppress(psutil.Error):
            t = process.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def kill_recorded(folder: Path) -> None:
    """Kill the commands recorded in ``folder``, whichever process started them."""
    for path in folder.glob("*.json"):
        with suppress(OSError, ValueError, AttributeError):
            record = json.loads(path.read_text())
            if isinstance(record.get("pid"), int) and record["pid"] > 1:
                kill_group(record["pid"], record.get("create_time"))


def command_environment(directory: Path, spec: SandboxSpec, env: Mapping[str, str] | None,
                        store: Mapping[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """A command's whole environment (nothing leaks from the agent's own), and the secret values in it (to mask).

    The host ``PATH``, ``HOME`` (the sandbox's own), ``LANG`` and ``PYTHONDONTWRITEBYTECODE``, then ``spec.env``,
    then ``spec.secrets`` (``env:VAR`` read from this process's environment, ``secret:NAME`` from ``store``: the
    values the API gave this task's claim holder, by default those ``base.store_secrets`` set), then ``env``: the
    most specific wins.
    """
    store = current_store_secrets() if store is None else store
    variables = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(directory / "home"), "LANG": "C.UTF-8",
                 "PYTHONDONTWRITEBYTECODE": "1"}
    variables.update(spec.env)
    values: list[str] = []
    for name, reference in spec.secrets.items():
        if store_name(reference) is not None:
            value: str | None = store_value(name, reference, store)
        else:
            source = secret_variable(name, reference)
            value = os.environ.get(source)
            if value is None:
                raise SandboxError(f"secret {name!r} refers to environment variable {source!r}, which is not set "
                                   "where this agent runs: set it in the agent's environment, or remove the secret "
                                   "from the stage's sandbox spec", reason="SecretMissing")
        assert value is not None
        variables[name] = value
        values.append(value)
    variables.update(env or {})
    for name, value in variables.items():
        if not _ENV_NAME.match(name) or "\0" in value:
            raise SandboxError(f"invalid environment variable {name!r}: names are letters, digits and '_' (not "
                               "starting with a digit), and values can't hold NUL")
    return variables, values


def memfd(content: bytes) -> int:
    """An anonymous in-memory file holding ``content``, positioned at its start (never on disk)."""
    fd = os.memfd_create("devart-env", os.MFD_CLOEXEC)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd
