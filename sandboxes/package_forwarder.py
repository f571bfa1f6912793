"""Inside a ``network: packages`` sandbox: relay ``127.0.0.1:<port>`` to the package index socket, run the command.

The sandbox has a network namespace of its own with nothing but loopback, so the command reaches no host
service, no DNS and no other machine. The agent's package index proxy (``sandboxes/package_index.py``) is
bind-mounted in as a unix socket; package tools speak HTTP over TCP, so this relay listens on the sandbox's
loopback and passes each connection through to that socket, byte for byte.

It is started in place of the command (``python -I -S -c <this file's source> PORT SOCKET -- COMMAND...``) and
uses only the standard library, so it runs with the agent's Python whatever the sandbox can import. It starts
the command as its child once it listens, and exits as the command did: the same exit status, or killed by the
same signal, so timeouts, out-of-memory kills and exit codes read exactly as without it. Killing the sandbox
(its pid namespace) ends both. One event loop, no threads: it counts as one process against the pids limit.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from contextlib import suppress

#: Signals passed on to the command (a SIGKILL needs no passing: the whole sandbox goes).
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy until ``source`` ends, then half-close ``sink`` so the far side sees the end of the request."""
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()
    except OSError:
        pass


async def _relay(socket_path: str, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
    try:
        index_reader, index = await asyncio.open_unix_connection(socket_path)
    except OSError as exc:
        sys.stderr.write(f"devart package relay: cannot reach the package index ({exc.strerror})\n")
        client.close()
        return
    try:
        await asyncio.gather(_pipe(client_reader, index), _pipe(index_reader, client))
    except asyncio.CancelledError:
        # The command exited with this connection still open: the relay ends with it. Returning (rather than
        # ending cancelled) matters on Python 3.11, whose server callback reads a cancelled connection task's
        # exception and prints a traceback into the command's own output.
        return
    finally:
        for writer in (index, client):
            writer.close()


async def _exited(process: subprocess.Popen[bytes]) -> int:
    """Wait for ``process`` without a thread or a SIGCHLD handler: a pidfd becomes readable when it exits."""
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # kernels before 5.3: poll
        while process.poll() is None:
            await asyncio.sleep(0.05)
        return process.returncode
    exited = asyncio.Event()
    loop.add_reader(pidfd, exited.set)
    try:
        await exited.wait()
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    return process.wait()


async def serve(port: int, socket_path: str, command: Sequence[str]) -> int:
    """Listen, start ``command``, relay until it exits; its ``returncode`` (negative: the killing signal)."""
    server = await asyncio.start_server(lambda r, w: _relay(socket_path, r, w), "127.0.0.1", port)
    try:
        process = subprocess.Popen(list(command))
    except FileNotFoundError:
        sys.stderr.write(f"{command[0]}: not found\n")
        return 127
    except PermissionError:
        sys.stderr.write(f"{command[0]}: permission denied\n")
        return 126
    loop = asyncio.get_running_loop()
    for number in FORWARDED:
        loop.add_signal_handler(number, process.send_signal, number)
    try:
        return await _exited(process)
    finally:
        server.close()


def exit_like(returncode: int) -> None:
    """Exit as a process that ended with ``returncode`` did: with that status, or by that signal."""
    if returncode < 0:
        with suppress(OSError, ValueError):
            signal.signal(-returncode, signal.SIG_DFL)
            os.kill(os.getpid(), -returncode)
        sys.exit(128 - returncode)
    sys.exit(returncode)


def main(argv: Sequence[str]) -> None:
    if len(argv) < 4 or argv[2] != "--":
        sys.stderr.write("usage: package_forwarder PORT SOCKET -- COMMAND...\n")
        sys.exit(2)
    sys.stdout.flush()
    exit_like(asyncio.run(serve(int(argv[0]), argv[1], argv[3:])))


if __name__ == "__main__":
    main(sys.argv[1:])
