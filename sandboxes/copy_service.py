"""A long-lived copier per worker: a local source is copied by a process forked for it, not a new sandbox.

Starting a bubblewrap sandbox and a Python interpreter for every local stage cost about 25 ms of wall time and as
much CPU (measured on the benchmark's machine), a tenth of a one-stage run's CPU. So the copier
(``sandboxes/source_copy.py``) runs as a service: one process, started once, as the sandbox user in a sandbox that
holds nothing of the host but the toolchain (``Jail.service_argv``) when devart runs as root, or as this user
otherwise. For each copy the worker opens the source folder and the folder the workspace is created in with
``O_PATH`` (a descriptor that names a folder but grants no right to read it) and passes both, with a socket to
answer on; the service forks a process that reaches them through ``/proc/self/fd`` and opens every file with its
own rights. What a copy may read is what it read before: exactly what the sandbox user may read in that folder.

A copy that is cancelled or times out is told so by the worker closing its end of the answer socket, and stops at
its next file or chunk; the worker waits for the process to be gone (its end of the socket closes with it) before
it returns, so nothing still writes into a workspace being removed. One that does not stop within ``KILL_GRACE``
takes the service down with it (the sandbox's pid namespace ends, and every copy in it), and the next copy starts
a new one, as it does after the service died for any other reason.
"""

from __future__ import annotations

import ast
import asyncio
import atexit
import functools
import logging
import marshal
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_fixed

from devart.core.errors import SandboxError
from devart.sandboxes.bubblewrap import HELPER_PATH, Confinement, interpreter_paths
from devart.sandboxes.processes import create_time, kill_group, memfd
from devart.sandboxes.seccomp import no_user_namespaces
from devart.sandboxes.source_sandbox import KILL_GRACE, Jail, JobResult, copier_source

log = logging.getLogger(__name__)

#: Bytes of a copy's answer kept: its report names at most ten unreadable paths, escaped.
ANSWER_LIMIT = 1 << 20
#: Seconds a request may wait to be handed to a service too busy to take it, before the service is started again.
SEND_TIMEOUT = 10.0
#: The return code of a copy whose service ended before it answered (killed, or stopped for a copy that hung): the
#: copy says nothing of the source, and the next copy gets a new service.
NO_ANSWER = -9


class CopyService:
    """One copier service: started on first use, started again when it is gone."""

    def __init__(self, jail: Jail | None, hide: Sequence[Path]) -> None:
        self.jail, self.hide = jail, tuple(hide)
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._started: float | None = None
        self._control: socket.socket | None = None

    def _start(self) -> socket.socket:
        """The control socket of a running service, starting one if there is none (call with the lock held)."""
        if self._control is not None and self._process is not None and self._process.poll() is None:
            return self._control
        self._stop()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        command = [sys.executable, "-I", "-S", "-c", copier_source(), "--serve", str(theirs.fileno())]
        seccomp = no_user_namespaces() if self.jail is not None else None
        seccomp_fd = memfd(seccomp) if seccomp is not None else None
        argv = command
        try:
            if self.jail is not None:
                argv = self.jail.service_argv(command, hide=self.hide, seccomp_fd=seccomp_fd)
            passed = [theirs.fileno(), *([seccomp_fd] if seccomp_fd is not None else [])]
            # Started from the caller's thread (bubblewrap's --die-with-parent watches that thread), in a session
            # of its own so that stopping it takes every copy with it.
            self._process = subprocess.Popen(
                argv, cwd="/", env={"PATH": HELPER_PATH, "LC_ALL": "C"}, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, start_new_session=True, pass_fds=passed)
        except BaseException as exc:
            mine.close()
            if isinstance(exc, FileNotFoundError):
                raise SandboxError(f"{argv[0]} is not installed: install it to provision from a local source") from None
            raise
        finally:
            theirs.close()
            if seccomp_fd is not None:
                os.close(seccomp_fd)
        mine.setblocking(False)  # a full socket is waited for without holding up the event loop (``_send``)
        self._started, self._control = create_time(self._process.pid), mine
        return mine

    def _stop(self) -> None:
        """Kill the service and every copy it runs (call with the lock held)."""
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._process is not None:
            kill_group(self._process.pid, self._started)
            try:
                self._process.wait(timeout=KILL_GRACE)
            except subprocess.TimeoutExpired:
                log.warning("the copier service (pid %d) outlived its kill", self._process.pid)
            self._process = None

    def stop(self) -> None:
        with self._lock:
            self._stop()

    @property
    def pid(self) -> int | None:
        """The service's leading process (bubblewrap's, when confined) while it runs."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def _control_socket(self) -> socket.socket:
        with self._lock:
            return self._start()

    async def _send(self, message: bytes, fds: list[int]) -> None:
        """Hand a request to the service, starting it (again) once if it is not running, has just died, or has not
        taken a request for ``SEND_TIMEOUT`` seconds (its socket stays full)."""
        for last in (False, True):
            control = self._control_socket()
            try:
                await _send_fds(control, message, fds, SEND_TIMEOUT)
                return
            except OSError as exc:  # TimeoutError included
                log.warning("the copier service did not take a request (%s): starting it again", exc or "timeout")
                with self._lock:
                    if self._control is control:  # not restarted meanwhile by another copy
                        self._stop()
                if last:
                    raise

    async def copy(self, source: Path, destination: Path, options: dict[str, object], *, what: str,
                   timeout: float) -> JobResult:
        """Copy ``source`` into ``destination`` (a new folder in an existing one) with the copier's ``options``.

        Returns what the copier answered, as a job's exit status, report and error line would be.

        Raises:
            SandboxError: the source or the destination's folder cannot be opened, or the copy took longer than
                ``timeout`` seconds ("took longer than").
        """
        try:
            source_fd = os.open(source, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            return JobResult(returncode=1, stdout="", stderr=f"{exc.strerror}: {source}\n")
        try:
            parent_fd = os.open(destination.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            os.close(source_fd)
            return JobResult(returncode=1, stdout="", stderr=f"{exc.strerror}: {destination.parent}\n")
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            message = marshal.dumps((destination.name, options, (str(source), str(destination))))
            try:
                await self._send(message, [theirs.fileno(), source_fd, parent_fd])
            finally:
                for fd in (source_fd, parent_fd):
                    os.close(fd)
                theirs.close()  # the copy's process holds the only other end now
            mine.setblocking(False)
            return await self._answer(mine, what, timeout)
        finally:
            mine.close()

    async def _answer(self, mine: socket.socket, what: str, timeout: float) -> JobResult:
        """Read the copy's answer; on timeout or cancellation, stop the copy and wait until it is gone."""
        loop = asyncio.get_running_loop()
        answer = bytearray()
        reading = asyncio.ensure_future(_read_all(loop, mine, answer))
        try:
            await asyncio.wait_for(asyncio.shield(reading), timeout)
        except BaseException as exc:
            try:
                mine.shutdown(socket.SHUT_WR)  # the copy sees it at its next file or chunk, and ends
            except OSError:
                pass  # it is gone already
            _, pending = await asyncio.wait({reading}, timeout=KILL_GRACE)
            if pending:  # it did not end: end it with the service
                await asyncio.to_thread(self.stop)
                await asyncio.wait({reading}, timeout=KILL_GRACE)
            reading.cancel()
            if isinstance(exc, TimeoutError):
                raise SandboxError(f"{what} took longer than {timeout:g}s") from None
            raise
        if not answer:
            return JobResult(returncode=NO_ANSWER, stdout="", stderr="the copier ended without answering\n")
        try:
            code, out, err = ast.literal_eval(answer.decode("ascii"))  # literals only: nothing in it can run
        except (ValueError, SyntaxError, UnicodeDecodeError, TypeError):
            return JobResult(returncode=1, stdout="", stderr="the copier's answer could not be read\n")
        return JobResult(returncode=int(code), stdout=str(out), stderr=str(err))


#: Seconds between tries to hand a request to a service whose socket is full (a burst of copies).
_FULL_PAUSE = 0.005


async def _send_fds(sock: socket.socket, message: bytes, fds: list[int], timeout: float) -> None:
    """``socket.send_fds`` on a non-blocking socket, tried again while it is full, for at most ``timeout`` seconds
    (then ``TimeoutError``). asyncio's socket helpers carry no descriptors, and one writer callback per socket would
    leave all but one of several waiting copies unwoken, so this tries again after a short pause."""
    try:
        async for attempt in AsyncRetrying(retry=retry_if_exception_type(BlockingIOError), wait=wait_fixed(_FULL_PAUSE),
                                           stop=stop_after_delay(timeout), reraise=True):
            with attempt:
                socket.send_fds(sock, [message], fds)
    except BlockingIOError:
        raise TimeoutError(f"the copier service's socket stayed full for {timeout:g}s") from None


async def _read_all(loop: asyncio.AbstractEventLoop, sock: socket.socket, into: bytearray) -> None:
    """Read ``sock`` to its end (the copy's process is gone), keeping its first ``ANSWER_LIMIT`` bytes."""
    while chunk := await loop.sock_recv(sock, 65536):
        into += chunk[:max(ANSWER_LIMIT - len(into), 0)]


_services: dict[tuple[bool, tuple[Path, ...]], CopyService] = {}
_services_lock = threading.Lock()


def service(jail: Jail | None, hide: Sequence[Path]) -> CopyService:
    """This process's service for copies made in ``jail`` (or as this user, for None) with ``hide`` covered.

    Services differ only in what their sandbox covers, and ``hide`` covers something only where a toolchain folder
    holds it: folders elsewhere (the usual case) share one service.
    """
    key = (jail is not None, _covered(jail, tuple(hide)) if jail is not None else ())
    with _services_lock:
        found = _services.get(key)
        if found is None:
            if not _services:
                atexit.register(stop_all)
            found = _services[key] = CopyService(jail, hide)
        return found


@functools.lru_cache(maxsize=64)
def _covered(jail: Jail, hide: tuple[Path, ...]) -> tuple[Path, ...]:
    return Confinement.plan(jail.bwrap, hide[0], jail.setpriv, interpreter_paths(), hide=hide[1:]).hidden


def stop_all() -> None:
    """Stop every service of this process (and the copies they run)."""
    with _services_lock:
        for found in _services.values():
            found.stop()
