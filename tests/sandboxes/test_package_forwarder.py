"""The package relay of a ``network: packages`` sandbox leaves the command's output as the command wrote it."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

from devart.core.devstack.services import free_port
from devart.sandboxes import package_forwarder

#: Opens a connection to the relay and exits while it is still open (a package tool's keep-alive connection).
HOLDER = "import socket, sys; s = socket.create_connection(('127.0.0.1', int(sys.argv[1]))); print('done')"


def test_a_connection_still_open_when_the_command_exits_adds_nothing_to_its_output(tmp_path: Path) -> None:
    # Given an index socket that accepts a connection and keeps it open
    path = str(tmp_path / "index.sock")
    index = socket.socket(socket.AF_UNIX)
    index.bind(path)
    index.listen()
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(index.accept()[0]), daemon=True).start()
    port = free_port()
    try:
        # When the command exits with its connection to the relay still open
        done = subprocess.run([sys.executable, "-I", "-S", package_forwarder.__file__, str(port), path, "--",
                               sys.executable, "-c", HOLDER, str(port)], capture_output=True, text=True, timeout=60)
    finally:
        index.close()
        for conn in held:
            conn.close()
    # Then the output is the command's own, and so is the exit status
    assert (done.returncode, done.stdout, done.stderr) == (0, "done\n", "")
