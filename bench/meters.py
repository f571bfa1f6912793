"""What the benchmark's processes cost: resident memory and CPU seconds, read with psutil.

Apart from ``bench.scale`` because measuring a process is one concern and driving load another: the sweep
samples memory while its runs are in flight, the floor ladder counts CPU seconds around each step's rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import psutil

#: How often the memory sampler reads the processes' RSS.
SAMPLE_SECONDS = 0.2
MIB = 1024 * 1024


def rss(pids: list[int]) -> int:
    """Resident bytes of these processes and all their children (gone processes count 0)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            for p in [proc, *proc.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
    return total


def cpu_seconds(pids: list[int], children: bool = True) -> float:
    """User + system CPU seconds of these processes and (unless told not to) of their live and reaped children."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            t = proc.cpu_times()
            total += t.user + t.system
            if not children:
                continue
            total += t.children_user + t.children_system
            for child in proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    c = child.cpu_times()
                    total += c.user + c.system
    return total


@dataclass
class CpuMeter:
    """CPU seconds each process spent between ``start`` and ``stop``, added up over several measurements.

    ``own_only`` roles count without their children: the benchmark's own process is the parent of the stack.
    """

    pids: dict[str, list[int]]
    own_only: set[str] = field(default_factory=set)
    spent: dict[str, float] = field(default_factory=dict)
    _start: dict[str, float] = field(default_factory=dict)

    def _read(self) -> dict[str, float]:
        return {role: cpu_seconds(p, role not in self.own_only) for role, p in self.pids.items()}

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> None:
        for role, seconds in self._read().items():
            self.spent[role] = self.spent.get(role, 0.0) + seconds - self._start[role]

    def per_run_ms(self, runs: int) -> dict[str, float]:
        out = {role: round(s * 1e3 / runs, 1) for role, s in self.spent.items() if runs}
        out["total"] = round(sum(out.values()), 1)
        return out


@dataclass
class MemorySampler:
    """Peak RSS per role while running, beside the idle figure read when it started."""

    pids: dict[str, list[int]]
    idle: dict[str, int] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> MemorySampler:
        self.idle = {role: rss(p) for role, p in self.pids.items()}
        self.peak = dict(self.idle)
        self._task = asyncio.create_task(self._sample())
        return self

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_SECONDS)
            for role, pids in self.pids.items():
                self.peak[role] = max(self.peak[role], await asyncio.to_thread(rss, pids))

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def figures(self, in_flight: int) -> dict[str, dict[str, float]]:
        after = {role: rss(p) for role, p in self.pids.items()}
        out = {}
        for role in [*self.pids, "total"]:
            idle = sum(self.idle.values()) if role == "total" else self.idle[role]
            peak = sum(self.peak.values()) if role == "total" else self.peak[role]
            end = sum(after.values()) if role == "total" else after[role]
            out[role] = {"idle_mib": round(idle / MIB, 1), "peak_mib": round(peak / MIB, 1),
                         "after_mib": round(end / MIB, 1),
                         "per_run_kib": round(max(0, peak - idle) / 1024 / in_flight, 1)}
        return out
