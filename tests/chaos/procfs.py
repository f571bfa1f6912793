"""What /proc says about a stack: its processes by role, what runs for its sandboxes, what is mounted under them.

Read as root, like the stack itself runs: a process's environment says which stack it belongs to.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path


def _proc(pid: str, name: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return b""  # gone meanwhile, or a zombie


def mounts_under(root: Path) -> list[str]:
    """Mount points under ``root`` (a sandbox's volume is a tmpfs when devart runs as root)."""
    points = [line.split(" ")[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p.startswith(f"{root}/")]


def sandbox_processes(root: Path) -> list[str]:
    """Processes started for a sandbox under ``root`` (bubblewrap and its wrappers name the sandbox's folder)."""
    marker = os.fsencode(f"{root}/")
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        argv = _proc(pid, "cmdline")
        if marker in argv:
            found.append(f"{pid}: {argv.replace(bytes(1), b' ').decode(errors='replace')[:1000]}")
    return found


def stack_processes(home: str, temporal_db: Path) -> Counter[str]:
    """devart's processes of the stack living in ``home`` (by role, and name for agents), and its Temporal server."""
    found: Counter[str] = Counter()
    want = os.fsencode(f"DEVART_HOME={home}")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        argv = [a.decode(errors="replace") for a in _proc(pid, "cmdline").split(b"\0") if a]
        if str(temporal_db) in argv and "start-dev" in argv:
            found["temporal"] += 1
        elif "devart.cli" in argv[1:3] and want in _proc(pid, "environ").split(b"\0"):
            role = argv[argv.index("devart.cli") + 1] if argv.index("devart.cli") + 1 < len(argv) else "?"
            role = "agents-api" if role == "api" and "--agents-only" in argv else role
            name = argv[argv.index("--name") + 1] if "--name" in argv else ""
            found[f"{role} {name}".strip()] += 1
    return found
