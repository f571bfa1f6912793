"""The local sandbox backend: one directory per sandbox, each command confined by bubblewrap.

``root/<id>/`` holds ``meta.json`` (what ``list()`` and sweepers read), ``pids/`` (one record per running command,
so a teardown from any process can kill it), ``home/`` (the command's ``HOME``) and ``workspace/`` (the checkout).
Inside bubblewrap the whole host is read-only, ``/tmp`` is private, every other sandbox (and this one's control
files) is hidden, and the workspace and home are the only writable paths.

Limits: only the wall-clock timeout and the output cap are enforced here. ``spec.cpu``, ``memory_mb`` and ``pids``
are not (rlimits are per-uid or break JIT runtimes; a later issue puts each sandbox in a cgroup), and
``cpu_seconds`` is sampled (see ``_tree_cpu``). ``spec.network`` is enforced: without "egress" a command has its
own empty network namespace. Known gap: bubblewrap maps the sandbox user onto the uid running devart, so when
that is root, files only root may read (``/etc/shadow``, ``/root``) are readable, though not writable, inside.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import os
import re
import secrets
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import psutil

from core.contracts import SandboxHandle, SandboxSpec, Source
from core.errors import SandboxError, SandboxUnavailable
from sandboxes.base import DEFAULT_OUTPUT_CAP, ExecResult, OutputCallback
from sandboxes.workspace import create_layout, materialize, plan_checkout, read_handles, remove_tree, write_json

#: The uid and gid commands run as inside bubblewrap ("nobody").
SANDBOX_UID = 65534
#: Seconds between CPU samples of a running command (and checks for a command whose output is held open).
POLL_INTERVAL = 0.2
#: Seconds to wait for a killed command's exit and last output before giving up on them.
KILL_GRACE = 5.0
#: Bytes read from a command's output at a time; also the longest partial line held back from ``on_output``.
READ_CHUNK = 65536
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
#: A sandbox id is one path component: exec and teardown refuse anything else, so a handle can't point outside.
_VALID_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")
_BWRAP_MISSING = (
    "bubblewrap (bwrap) is not installed: install it with `apt-get install -y bubblewrap`, or set "
    "DEVART_SANDBOX_ISOLATION=none to run tasks without isolation (not for untrusted code)"
)


def bubblewrap_available() -> str | None:
    """The path of ``bwrap`` on ``PATH``, or None when bubblewrap is not installed."""
    return shutil.which("bwrap")


class LocalSandbox:
    """Sandboxes as directories under ``root``; safe to use from several processes sharing that root.

    Args:
        root: folder holding every sandbox; created if missing.
        isolation: "bubblewrap" confines commands; "none" runs them directly as this user, for an operator who
            explicitly accepts running the code unisolated.
    """

    backend = "local"

    def __init__(self, root: Path, isolation: Literal["bubblewrap", "none"] = "bubblewrap") -> None:
        if isolation not in ("bubblewrap", "none"):
            raise ValueError(f"isolation must be 'bubblewrap' or 'none', got {isolation!r}")
        self.isolation = isolation
        self._bwrap: str | None = None
        if isolation == "bubblewrap":
            self._bwrap = bubblewrap_available()
            if self._bwrap is None:
                raise SandboxUnavailable(_BWRAP_MISSING)
        self.root = root.expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    async def provision(self, run_id: str, stage: str, source: Source, spec: SandboxSpec) -> SandboxHandle:
        """Create ``root/<id>/`` holding ``source``; a failed or cancelled provision leaves nothing behind."""
        plan = await plan_checkout(source)  # refuses a missing path before anything is created
        sandbox_id = _UNSAFE_ID_CHARS.sub("-", f"{run_id[:40]}-{stage[:63]}-{secrets.token_hex(4)}").lstrip(".-")
        directory = self.root / sandbox_id
        meta: dict[str, Any] = {
            "id": sandbox_id, "backend": self.backend, "run_id": run_id, "stage": stage,
            "created": datetime.now(UTC).isoformat(), "source": source.model_dump(mode="json"),
            "spec": spec.model_dump(mode="json"), "workspace": str(directory / "workspace"),
        }
        # meta.json comes first, so a provision that dies half-way is still found by list() and swept.
        await asyncio.to_thread(create_layout, directory, meta)
        try:
            workdir = await materialize(plan, directory / "workspace", exclude=self.root)
            meta["workspace"] = str(workdir)
            await asyncio.to_thread(write_json, directory / "meta.json", meta)
        except BaseException:
            await asyncio.to_thread(remove_tree, directory)
            raise
        return SandboxHandle(backend=self.backend, id=sandbox_id, workspace=str(workdir), spec=spec)

    async def exec(
        self,
        handle: SandboxHandle,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 600.0,
        on_output: OutputCallback | None = None,
        output_cap: int = DEFAULT_OUTPUT_CAP,
    ) -> ExecResult:
        """Run ``command`` in the workspace, streaming output line by line and keeping its last ``output_cap`` chars.

        The environment is rebuilt from scratch: the host ``PATH``, ``HOME`` (the sandbox's own), ``LANG`` and
        ``PYTHONDONTWRITEBYTECODE``, then ``handle.spec.env``, then ``env`` (the most specific wins). On timeout,
        cancellation or an error, the command's whole process tree is killed before this returns or raises.
        """
        directory = self._directory(handle)
        workdir = Path(os.path.normpath(handle.workspace))
        if not command:
            raise SandboxError("cannot run an empty command")
        if not await asyncio.to_thread(workdir.is_dir):
            raise SandboxError(f"sandbox {handle.id!r} has no workspace at {handle.workspace}: it was torn down or "
                               "never provisioned on this machine; provision a new one")
        if not workdir.is_relative_to(directory / "workspace"):
            raise SandboxError(f"handle of sandbox {handle.id!r} points outside its workspace ({handle.workspace})")
        variables = _environment(directory, handle.spec, env)
        if self._bwrap is None:
            argv, child_env = list(command), variables
        else:
            argv, child_env = self._bwrap_argv(directory, workdir, handle.spec, variables, command), None
        output = OutputBuffer(output_cap, on_output)
        started = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=workdir, env=child_env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        except OSError as exc:  # only without bubblewrap: bwrap itself reports a missing command (exit code 1)
            output.feed(f"{command[0]}: {exc.strerror}\n".encode(), final=True)
            return ExecResult(exit_code=127 if isinstance(exc, FileNotFoundError) else 126, output=output.text,
                              duration=round(time.monotonic() - started, 3))
        assert proc.stdout is not None
        identity = _create_time(proc.pid)
        record = directory / "pids" / f"{proc.pid}.json"
        reader = asyncio.create_task(output.pump(proc.stdout))
        waiter = asyncio.create_task(proc.wait())
        cpu, timed_out = 0.0, False
        try:
            try:
                await asyncio.to_thread(write_json, record, {"pid": proc.pid, "create_time": identity})
            except FileNotFoundError:
                raise SandboxError(f"sandbox {handle.id!r} was torn down while a command started in it") from None
            deadline = started + timeout
            while not waiter.done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                watched = {waiter} if reader.done() else {waiter, reader}
                await asyncio.wait(watched, timeout=min(POLL_INTERVAL, remaining),
                                   return_when=asyncio.FIRST_COMPLETED)
                if reader.done() and reader.exception() is not None:
                    break  # on_output raised: stop the command and report the error below
                if proc.returncode is not None and not waiter.done():
                    break  # exited, but a background child still holds the output open: it is killed below
                cpu = max(cpu, _tree_cpu(proc.pid))
            if timed_out:
                cpu = max(cpu, _tree_cpu(proc.pid))
            # Always: on success this reaps leftover background processes (without bubblewrap's pid namespace).
            _kill_group(proc.pid, identity)
            await asyncio.wait({waiter}, timeout=KILL_GRACE)
            if not reader.done():
                await asyncio.wait({reader}, timeout=KILL_GRACE)
            failure = reader.exception() if reader.done() else None
            if failure is not None:
                raise failure
        except BaseException:
            _kill_group(proc.pid, identity)
            await asyncio.wait({waiter}, timeout=KILL_GRACE)
            raise
        finally:
            reader.cancel()
            waiter.cancel()
            await asyncio.to_thread(record.unlink, missing_ok=True)
        return ExecResult(
            exit_code=proc.returncode if proc.returncode is not None else -signal.SIGKILL,
            output=output.text, truncated=output.truncated, timed_out=timed_out,
            duration=round(time.monotonic() - started, 3), cpu_seconds=round(cpu, 3),
        )

    async def teardown(self, handle: SandboxHandle) -> None:
        """Kill every command still running in the sandbox (from any process) and remove it. Idempotent."""
        directory = self._directory(handle)
        await asyncio.to_thread(_kill_recorded, directory / "pids")
        await asyncio.to_thread(remove_tree, directory)

    def _directory(self, handle: SandboxHandle) -> Path:
        """The sandbox's directory, refusing handles of another backend or ids that would escape ``root``."""
        if handle.backend != self.backend:
            raise SandboxError(f"sandbox {handle.id!r} belongs to the {handle.backend!r} backend, not 'local': "
                               "run the agent with the backend that provisioned it")
        if not _VALID_ID.match(handle.id):
            raise SandboxError(f"invalid local sandbox id {handle.id!r}")
        return self.root / handle.id

    def _bwrap_argv(self, directory: Path, workdir: Path, spec: SandboxSpec, variables: Mapping[str, str],
                    command: Sequence[str]) -> list[str]:
        """bubblewrap's command line; mount order matters, later mounts sit on top of earlier ones."""
        assert self._bwrap is not None
        workspace, home = str(directory / "workspace"), str(directory / "home")
        argv = [self._bwrap, "--die-with-parent", "--new-session", "--unshare-all"]
        if spec.network == "egress":
            argv.append("--share-net")
        argv += [
            "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--hostname", "sandbox",
            "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            "--tmpfs", "/tmp",  # before the root's tmpfs: hiding sandboxes must also work when root is in /tmp
            "--tmpfs", str(self.root),
            "--bind", workspace, workspace, "--bind", home, home,
            "--chdir", str(workdir), "--clearenv",
        ]
        for name, value in variables.items():
            argv += ["--setenv", name, value]
        return [*argv, "--", *command]

    async def list(self) -> list[SandboxHandle]:
        """Every sandbox under ``root`` with a readable ``meta.json``, oldest first."""
        return await asyncio.to_thread(read_handles, self.root, self.backend)


class OutputBuffer:
    """A command's output: passed on to ``on_output`` line by line, and kept up to its last ``cap`` characters."""

    def __init__(self, cap: int, on_output: OutputCallback | None) -> None:
        self.cap = max(cap, 0)
        self.on_output = on_output
        self.dropped = False
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._parts: list[str] = []
        self._size = 0
        self._line = ""

    async def pump(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(READ_CHUNK):
            self.feed(chunk)
        self.feed(b"", final=True)

    def feed(self, data: bytes, *, final: bool = False) -> None:
        text = self._decoder.decode(data, final)
        self._parts.append(text)
        self._size += len(text)
        if self._size > 2 * self.cap + READ_CHUNK:  # compact now and then, not on every chunk
            self._parts, self._size = [self.text], self.cap
            self.dropped = True
        if self.on_output is not None:
            self._line += text
            end = len(self._line) if final or len(self._line) > READ_CHUNK else self._line.rfind("\n") + 1
            complete, self._line = self._line[:end], self._line[end:]
            for line in complete.splitlines(keepends=True):
                self.on_output(line)

    @property
    def text(self) -> str:
        joined = "".join(self._parts)
        return joined[max(len(joined) - self.cap, 0):]

    @property
    def truncated(self) -> bool:
        return self.dropped or self._size > self.cap


def _environment(directory: Path, spec: SandboxSpec, env: Mapping[str, str] | None) -> dict[str, str]:
    """A command's whole environment: nothing leaks from the agent's own (API keys, tokens)."""
    variables = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(directory / "home"), "LANG": "C.UTF-8",
                 "PYTHONDONTWRITEBYTECODE": "1"}
    variables.update(spec.env)
    variables.update(env or {})
    for name, value in variables.items():
        if not name or "=" in name or "\0" in name or "\0" in value:
            raise SandboxError(f"invalid environment variable {name!r}: names can't be empty or hold '=' or NUL")
    return variables


def _create_time(pid: int) -> float | None:
    """When ``pid`` started: with the pid, it names the process even after the number is reused."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _kill_group(pid: int, create_time: float | None) -> None:
    """SIGKILL the process group ``pid`` leads, and every descendant of it (which may have left the group).

    The command was started as a session leader, so its group id is its pid. A pid that now names another
    process (reused after ours was reaped) is left alone; a dead leader's number can't be reused while its
    group still has members, so killing that group is safe.
    """
    victims: list[psutil.Process] = []
    try:
        leader = psutil.Process(pid)
        if create_time is None or abs(leader.create_time() - create_time) > 0.05:
            return  # that number now names another process
        victims = leader.children(recursive=True)
    except psutil.Error:
        pass
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    for process in victims:
        with suppress(psutil.Error):
            process.kill()


def _tree_cpu(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and its descendants, the reaped ones included.

    A lower bound: it is sampled every ``POLL_INTERVAL`` while the command runs, and the last moments before
    exit are not seen (asyncio reaps the process, so its final rusage is out of reach). A command shorter than
    one interval reports 0. Cgroups (a later issue) will make this exact.
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


def _kill_recorded(folder: Path) -> None:
    """Kill the commands recorded in ``folder``, whichever process started them."""
    for path in folder.glob("*.json"):
        with suppress(OSError, ValueError, AttributeError):
            record = json.loads(path.read_text())
            if isinstance(record.get("pid"), int) and record["pid"] > 1:
                _kill_group(record["pid"], record.get("create_time"))
