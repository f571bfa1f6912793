"""``devart up``'s supervisor: one detached process per state folder that runs the stack, each part exactly once.

Design (``core/devstack/stackctl.py`` is the other side: what ``devart up``, ``down`` and ``status`` do):

- **One supervisor.** It holds the lock ``<state>/supervisor.lock`` for its whole life
  (``core/devstack/stackfile.py``), so ``devart up`` starts one only when none lives; otherwise it asks the living
  one (SIGHUP) to start whatever is missing and to try again what it gave up on, and never starts anything itself.
- **Bring-up in order**, waiting for each server: the embedded PostgreSQL, Temporal's dev server (on the same
  ``--db-filename`` every time, so its history survives), then the migrations, the API (until healthy), the pipeline
  worker and the agent pool (``core/devstack/stackplan.py``). Each child runs in a session of its own, under a ``0077``
  umask, writing to ``<state>/logs/<name>.log``.
- **One record.** Every child's pid and start time, status, restarts and last exit go to ``<state>/supervisor.json``
  at each change. A process the record names that still runs (same pid *and* start time: an earlier supervisor
  was SIGKILLed and its children orphaned) is adopted, not started again; one the plan no longer has is stopped.
- **Restarts** (``core/devstack/children.py``: one child's start and exit). A child that exits is started again
  after a backoff that doubles from ``backoff_initial`` to ``backoff_max`` (``DEVART_SUPERVISOR_*``), with a line in
  ``<state>/logs/supervisor.log`` each time; a run longer than ``stable_after`` starts the backoff over. After
  ``crash_loop`` quick exits in a row it gives up on that child: status ``failed`` with the reason, the others keep
  running, and the next ``devart up`` tries again.
- **Stop.** SIGTERM stops the agents, then the API and the worker, then Temporal, then PostgreSQL (SIGTERM;
  PostgreSQL SIGINT, its fast shutdown; SIGKILL after ``stop_grace``), and the supervisor exits. A supervisor
  that is gone leaves its children to ``devart down``, which stops them from the record, pid and start time
  checked.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

from devart.core import process_start, settings
from devart.core.devstack import children, services, stackfile, stackplan
from devart.core.devstack.children import Child
from devart.core.devstack.stackfile import ChildRecord, StackRecord, StackStatus
from devart.core.devstack.stackplan import ChildSpec
from devart.core.devstack.statedir import PRIVATE_UMASK, make_private
from devart.core.devstack.supervisor import ProcessRef, stop_refs, tail
from devart.core.errors import DevartError

log = logging.getLogger("devart.supervisor")

#: Seconds between two looks at the children (a signal wakes the supervisor at once).
POLL = 0.2


class BringUpFailed(DevartError):
    """The stack could not be brought up; the supervisor stops what it started and exits."""


class Daemon:
    """The supervising loop of one state folder (it must hold the folder's lock)."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.cfg = settings.supervisor()
        self.children: dict[str, Child] = {}
        me = ProcessRef.of(os.getpid())
        assert me is not None
        self.record = StackRecord(supervisor=ChildRecord(
            name="supervisor", status="running", pid=me.pid, started=me.started,
            log=str(state / "logs" / "supervisor.log")))
        previous = stackfile.read(state)
        # An earlier supervisor that did not stop cleanly (SIGKILL) may have left children running: adopt them.
        self.previous = previous.children if previous and previous.status not in ("stopped", "failed") else {}
        self.orphans = {n: c for n, c in self.previous.items() if c.alive()}
        self.stopping = self.retrying = False
        self.up = False  # bring-up done: from now on the stack's status follows its children's
        self.wake = threading.Event()
        self.request = ""

    def serve(self) -> int:
        """Bring the stack up, keep it up until SIGTERM, then stop it; returns the exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_retry)
        self.request = self._read_request()
        try:
            self.bring_up()
        except BringUpFailed as exc:
            log.error("could not bring the stack up: %s", exc)
            self.record.status, self.record.message, self.record.answered = "failed", str(exc), self.request
            self.stop_all()
            self.record.status = "failed"
            self.save()
            return 1
        while not self.stopping:
            self.tick()
            self.wake.wait(POLL)
            self.wake.clear()
        log.info("stopping the stack")
        self.record.status = "stopping"
        self.save()
        self.stop_all()
        self.record.status = "stopped"
        self.record.supervisor.status = "stopped"
        self.save()
        return 0

    def _on_stop(self, *_: object) -> None:
        self.stopping = True
        self.wake.set()

    def _on_retry(self, *_: object) -> None:
        self.retrying = True
        self.wake.set()

    def _read_request(self) -> str:
        try:
            return (self.state / stackfile.REQUEST).read_text().strip()
        except FileNotFoundError:
            return ""

    # -- bring-up ----------------------------------------------------------------------------------------------

    def bring_up(self) -> None:
        self.record.status = "starting"
        self.save()
        make_private(self.state)
        os.environ.update({"DEVART_HOME": str(self.state), "DEVART_ADMIN_TOKEN": stackplan.admin_token(self.state)})
        os.environ.setdefault("DEVART_LOG_FORMAT", "json")
        for spec in stackplan.servers(self.state):
            self.launch(spec)
            self.wait_ready(spec.name)
        try:
            stackplan.prepare_database(self.state)
        except Exception as exc:  # a migration or connection error of any driver: say it and stop
            raise BringUpFailed(f"preparing the database failed: {type(exc).__name__}: {exc}") from exc
        for spec in stackplan.processes(self.state):
            self.launch(spec)
            if spec.ready is not None:
                self.wait_ready(spec.name)
        unwanted = [(c.ref, c.stop_signal) for c in self.orphans.values() if c.ref is not None]
        if unwanted:
            log.info("stopping %s, left running but no longer part of the stack", ", ".join(self.orphans))
            stop_refs(unwanted, self.cfg.stop_grace)  # type: ignore[arg-type]
        self.orphans.clear()
        self.up = True
        self.tick()

    def launch(self, spec: ChildSpec) -> None:
        """Adopt the child if it already runs, note a server someone else runs, or start it."""
        record = ChildRecord(name=spec.name, stop_signal=spec.stop_signal,
                             log=str(self.state / "logs" / f"{spec.name}.log"))
        child = self.children[spec.name] = Child(spec, record)
        if spec.name in self.previous:  # the counts go on from the earlier supervisor's
            record.restarts, child.starts = self.previous[spec.name].restarts, 1
        orphan = self.orphans.pop(spec.name, None)
        found = orphan.ref if orphan is not None else (spec.running() if spec.running else None)
        if found is not None:
            record.pid, record.started, record.argv = found.pid, found.started, orphan.argv if orphan else []
            record.status = "starting" if spec.ready else "running"
            child.began = time.monotonic() - max(0.0, process_start.age(found.started))
            log.info("adopted %s (pid %d), already running", spec.name, found.pid)
        elif spec.port is not None and services.port_open(*spec.port):
            host, port = spec.port
            if spec.port_taken == "error":
                setting = f" with {spec.port_setting}" if spec.port_setting else ""
                raise BringUpFailed(f"{spec.name}: {host}:{port} is already in use by another process: stop it, "
                                    f"or give devart another port{setting}")
            record.status, record.message = "external", f"already served on {host}:{port} by another process"
            log.info("%s: using the server already listening on %s:%d", spec.name, host, port)
        else:
            self.spawn(child)
        self.save()

    def wait_ready(self, name: str) -> None:
        child = self.children[name]
        deadline = time.monotonic() + self.cfg.ready_timeout
        while child.record.status not in ("running", "external"):
            if self.stopping:
                raise BringUpFailed("stopped while starting")
            if child.record.status == "failed":
                raise BringUpFailed(f"{name}: {child.record.message}\n{tail(Path(child.record.log))}")
            if time.monotonic() > deadline:
                raise BringUpFailed(f"{name} did not serve within {self.cfg.ready_timeout:.0f}s:\n"
                                    f"{tail(Path(child.record.log))}")
            self.tick()
            self.wake.wait(POLL / 2)
            self.wake.clear()

    # -- watching ----------------------------------------------------------------------------------------------

    def spawn(self, child: Child) -> None:
        try:
            proc = children.popen(child)
        except Exception as exc:  # a start that raised (a key the registry refused, a missing binary) is an exit
            log.warning("starting %s failed: %s: %s", child.spec.name, type(exc).__name__, exc)
            child.began = time.monotonic()
            self.exited(child, None, f"{type(exc).__name__}: {exc}")
            return
        children.started(child, proc)
        self.save()

    def tick(self) -> None:
        """Notice exits and readiness, start what is due, and answer ``devart up``."""
        changed = False
        for child in self.children.values():
            record = child.record
            if record.status in ("starting", "running"):
                code = child.proc.poll() if child.proc is not None else None
                if (child.proc is not None and code is not None) or (child.proc is None and not record.alive()):
                    self.exited(child, code)
                    continue
                if record.status == "starting" and (child.spec.ready is None or child.spec.ready()):
                    record.status = "running"
                    log.info("%s is ready", child.spec.name)
                    changed = True
            if record.status == "backoff" and time.monotonic() >= child.due:
                self.spawn(child)
        if self.retrying:
            self.retrying = False
            self.request = self._read_request()
            for child in self.children.values():
                if child.record.status == "failed":
                    log.info("trying %s again, as asked", child.spec.name)
                    child.streak, child.due, child.record.status = 0, 0.0, "backoff"
                    self.spawn(child)
            changed = True
        if self.up:
            statuses = {c.record.status for c in self.children.values()}
            status: StackStatus = "degraded" if statuses & {"backoff", "failed"} else "running"
            changed |= status != self.record.status
            self.record.status = status
            if self.request and statuses <= {"running", "failed", "external"}:
                self.record.answered, self.request, changed = self.request, "", True
        if changed:
            self.save()

    def exited(self, child: Child, code: int | None, why: str = "") -> None:
        children.exited(child, code, why, self.cfg)
        if self.up:  # in the same write as the exit: no reader sees a failed child under a "running" stack
            self.record.status = "degraded"
        self.save()

    # -- stopping ----------------------------------------------------------------------------------------------

    def stop_all(self) -> None:
        """Batch by batch (``stackplan.stop_order``), each batch sharing one grace period."""
        for batch in stackplan.stop_order(list(self.children)):
            refs = [(c.record.ref, c.spec.stop_signal) for n in batch if (c := self.children[n]).record.ref]
            began = time.monotonic()
            stop_refs(refs, self.cfg.stop_grace)  # type: ignore[arg-type]
            if refs:
                log.info("stopped %s in %.1fs", ", ".join(batch), time.monotonic() - began)
            for name in batch:
                child = self.children[name]
                if child.proc is not None:
                    child.proc.poll()
                if child.record.status != "external":
                    child.proc, child.record.pid, child.record.started = None, None, None
                    child.record.status = "stopped"
            self.save()

    def save(self) -> None:
        self.record.children = {name: child.record for name, child in self.children.items()}
        stackfile.write(self.state, self.record)


def main(state: Path, lock_fd: int | None) -> int:
    """Run the supervisor of ``state`` (``devart supervise``): detach, take or keep the lock, and serve."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True)
    for noisy in ("httpx", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.umask(PRIVATE_UMASK)
    if lock_fd is None:
        lock_fd = stackfile.try_lock(state)
        if lock_fd is None:
            log.error("another supervisor runs with %s", state)
            return 1
    if os.fork():  # the caller waits for this parent only; the supervisor lives on as init's child
        os._exit(0)
    return Daemon(state).serve()
