"""The local sandbox backend: one directory per sandbox, each command confined by bubblewrap and limited.

``root/<id>/`` holds ``meta.json`` (what ``list()`` and sweepers read), ``pids/`` (one record per running command,
so a teardown from any process can kill it) and ``volume/``, the only place commands write to: ``volume/home/``
(the command's ``HOME``) and ``volume/workspace/`` (the checkout), a tmpfs of ``disk_mb`` when devart runs as
root. ``sandboxes/bubblewrap.py`` says what a command can see and which uid it runs as, ``sandboxes/egress.py``
how ``network: egress`` reaches public addresses and nothing else, ``sandboxes/limits.py`` how its memory, CPU
and processes are limited, ``sandboxes/volumes.py`` its disk, ``sandboxes/workspace.py`` how the checkout is made,
``sandboxes/layout.py`` the directory itself and ``sandboxes/local_command.py`` how one command is run and watched.

``spec.timeout`` and the ``timeout`` argument, whichever is shorter, bound each command; on expiry its whole
process tree is killed (the sandbox's pid namespace, and its cgroup for anything that got out). Secrets are
read from this process's environment at exec time and only ever travel as references.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
from collections.abc import Mapping, Sequence
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from devart.core import settings
from devart.core.contracts import SandboxHandle, SandboxSpec, Source
from devart.core.errors import SandboxError, SandboxUnavailable
from devart.sandboxes import artifacts, egress, volumes
from devart.sandboxes.base import DEFAULT_OUTPUT_CAP, ExecResult, OutputCallback
from devart.sandboxes.bubblewrap import (
    HELPER_PATH,
    INDEX_PORT,
    SANDBOX_UID,
    Confinement,
    bubblewrap_available,
    interpreter_paths,
    userns_problem,
)
from devart.sandboxes.index_pages import package_environment
from devart.sandboxes.layout import create_layout, hand_over, read_handles, remove_tree, write_json
from devart.sandboxes.limits import CommandCgroup, detect, prlimit_argv, remove_sandbox_cgroups
from devart.sandboxes.local_command import Launch, run_command
from devart.sandboxes.package_index import PackageIndex
from devart.sandboxes.processes import OutputBuffer, command_environment, kill_recorded
from devart.sandboxes.seccomp import no_user_namespaces
from devart.sandboxes.workspace import materialize, plan_checkout

__all__ = ["LocalSandbox", "bubblewrap_available"]

_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
#: A sandbox id is one path component: exec and teardown refuse anything else, so a handle can't point outside.
_VALID_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")
_BWRAP_MISSING = (
    "bubblewrap (bwrap) is not installed: install it with `apt-get install -y bubblewrap`, or set "
    "DEVART_SANDBOX_ISOLATION=none to run tasks without isolation (not for untrusted code)"
)


class LocalSandbox:
    """Sandboxes as directories under ``root``; safe to use from several processes sharing that root.

    Args:
        root: folder holding every sandbox; created if missing.
        isolation: "bubblewrap" confines commands; "none" runs them directly as this user, for an operator who
            explicitly accepts running the code unisolated (handles then say ``isolated=False``).
        limits: "auto" uses cgroups when this machine lets devart create them, else ``prlimit``; "prlimit"
            forces the fallback.
        package_index: the running package index proxy that ``network: packages`` commands reach (through its
            socket under bubblewrap, its loopback TCP URL without isolation); the agent attaches its own
            (``sandboxes/factory.py``). Without one, such commands are refused.
    """

    backend = "local"

    def __init__(self, root: Path, isolation: Literal["bubblewrap", "none"] = "bubblewrap", *,
                 limits: Literal["auto", "prlimit"] = "auto", package_index: PackageIndex | None = None) -> None:
        self.package_index = package_index
        if isolation not in ("bubblewrap", "none"):
            raise ValueError(f"isolation must be 'bubblewrap' or 'none', got {isolation!r}")
        self.isolation = isolation
        self.root = root.expanduser().resolve()
        self._confinement: Confinement | None = None
        bwrap = bubblewrap_available() if isolation == "bubblewrap" else None
        if isolation == "bubblewrap" and bwrap is None:
            raise SandboxUnavailable(_BWRAP_MISSING)
        self._prlimit = _tool("prlimit")
        setpriv = _tool("setpriv") if bwrap is not None and os.geteuid() == 0 else None
        if bwrap is not None and setpriv is None and (problem := userns_problem()) is not None:
            raise SandboxUnavailable(problem)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.geteuid() == 0:
            volumes.release_orphans()
        if bwrap is not None:
            self._confinement = Confinement.plan(bwrap, self.root, setpriv, interpreter_paths(),
                                                 hide=[settings.state().root])
        self._egress = egress.tools(HELPER_PATH) if bwrap is not None else None
        self._seccomp = no_user_namespaces()
        self.cgroups = detect() if limits == "auto" else None
        #: How commands are limited: "cgroup-v2", "cgroup-v1" or "prlimit" (see ``sandboxes/limits.py``).
        self.limits = self.cgroups.mechanism if self.cgroups is not None else "prlimit"

    async def provision(self, run_id: str, stage: str, source: Source, spec: SandboxSpec) -> SandboxHandle:
        """Create ``root/<id>/`` holding ``source``; a failed or cancelled provision leaves nothing behind."""
        plan = await plan_checkout(source)  # refuses a missing path before anything is created
        if spec.network == "egress" and self._confinement is not None and self._egress is None:
            raise egress.missing()
        sandbox_id = _UNSAFE_ID_CHARS.sub("-", f"{run_id[:40]}-{stage[:63]}-{secrets.token_hex(4)}").lstrip(".-")
        directory = self.root / sandbox_id
        created = datetime.now(UTC)
        meta: dict[str, Any] = {
            "id": sandbox_id, "backend": self.backend, "run_id": run_id, "stage": stage,
            "created": created.isoformat(), "source": source.model_dump(mode="json"),
            "spec": spec.model_dump(mode="json"), "workspace": str(volumes.workspace(directory)),
            "isolated": self._confinement is not None, "limits": self.limits,
        }
        # meta.json comes first, so a provision that dies half-way is still found by list() and swept.
        await asyncio.to_thread(create_layout, directory, meta)
        try:
            # The sandbox user owns the volume, unless bubblewrap maps it onto this one (a user namespace).
            mapped = self._confinement is not None and self._confinement.setpriv is None
            await asyncio.to_thread(volumes.create, directory, spec.disk_mb, os.getuid() if mapped else SANDBOX_UID)
            workdir = await materialize(plan, volumes.workspace(directory), exclude=self.root,
                                        limit_bytes=spec.disk_mb << 20)
            try:
                await asyncio.to_thread(artifacts.copy_into, self.root, run_id, workdir)
            except OSError as exc:
                raise SandboxError(f"copying the files earlier stages handed on into the workspace failed: {exc}. "
                                   f"The stage's disk_mb ({spec.disk_mb} MiB) may be too small") from exc
            meta["workspace"] = str(workdir)
            if self._confinement is not None and self._confinement.setpriv is not None:
                await asyncio.to_thread(hand_over, directory / volumes.VOLUME, SANDBOX_UID)
            await asyncio.to_thread(write_json, directory / "meta.json", meta)
        except BaseException:
            await asyncio.to_thread(_remove, directory)
            raise
        return SandboxHandle(backend=self.backend, id=sandbox_id, workspace=str(workdir), spec=spec,
                             isolated=self._confinement is not None, run_id=run_id, created_at=created)

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
        ``PYTHONDONTWRITEBYTECODE``, then ``handle.spec.env``, then its secrets, then ``env`` (the most specific
        wins); with ``network: packages``, uv's and pip's index variables come first (``package_environment``).
        On timeout, cancellation or an error, the command's whole process tree is killed before this returns or
        raises. A limit that was hit is reported (``oom_killed``, ``pids_limited``, ``disk_exceeded``), not raised.
        """
        directory = self._directory(handle)
        workdir = Path(os.path.normpath(handle.workspace))
        if not command:
            raise SandboxError("cannot run an empty command")
        if not await asyncio.to_thread(workdir.is_dir):
            raise SandboxError(f"sandbox {handle.id!r} has no workspace at {handle.workspace}: it was torn down or "
                               "never provisioned on this machine; provision a new one")
        if not workdir.is_relative_to(volumes.workspace(directory)):
            raise SandboxError(f"handle of sandbox {handle.id!r} points outside its workspace ({handle.workspace})")
        spec = handle.spec
        variables, hidden_values = command_environment(directory / volumes.VOLUME, spec, env)
        if spec.network == "packages":  # under the stage's own variables, which may adjust them
            variables = {**package_environment(self._index_url()), **variables}
        output = OutputBuffer(output_cap, on_output, redact=hidden_values)
        group = None
        if self.cgroups is not None:
            try:
                group = CommandCgroup.create(self.cgroups, f"{handle.id}+{secrets.token_hex(4)}", spec)
            except OSError as exc:
                raise SandboxError(f"could not create the command's cgroup: {exc}", retryable=True,
                                   reason="SandboxLimits") from exc
        try:
            prefix = group.wrapper(spec.disk_mb << 20) if group is not None else prlimit_argv(self._prlimit, spec)
            socket = self.package_index.socket if spec.network == "packages" and self.package_index else None
            return await run_command(
                Launch(directory, workdir, spec, command, variables, prefix, self._confinement, self._seccomp,
                       socket, self._egress, self.limits), output, group, min(timeout, spec.timeout.total_seconds()))
        finally:
            if group is not None:
                with suppress(OSError):  # still busy after the deadline: teardown removes it
                    await group.remove()

    async def store_artifact(self, handle: SandboxHandle, name: str, data: bytes) -> bool:
        """Keep a file for the later sandboxes of the handle's run (see ``sandboxes/artifacts.py``)."""
        self._directory(handle)  # refuses a handle that is not one of this root's
        try:
            await asyncio.to_thread(artifacts.store, self.root, handle.run_id, name, data)
        except ValueError:
            return False
        return True

    def remove_artifacts(self, keep: set[str]) -> list[str]:
        """Drop the artifacts of every run not in ``keep`` (the runs still going); the run ids dropped."""
        gone = [run_id for run_id in artifacts.runs(self.root) if run_id not in keep]
        for run_id in gone:
            artifacts.remove(self.root, run_id)
        return gone

    async def teardown(self, handle: SandboxHandle) -> None:
        """Kill every command still running in the sandbox (from any process) and remove it. Idempotent."""
        directory = self._directory(handle)
        await asyncio.to_thread(kill_recorded, directory / "pids")
        await remove_sandbox_cgroups(self.cgroups, handle.id)
        await asyncio.to_thread(_remove, directory)

    async def list(self) -> list[SandboxHandle]:
        """Every sandbox under ``root`` with a readable ``meta.json``, oldest first (volumes left without one are
        unmounted: nothing can tear them down)."""
        if os.geteuid() == 0:
            await asyncio.to_thread(volumes.release_orphans, self.root)
        return await asyncio.to_thread(read_handles, self.root, self.backend)

    def _index_url(self) -> str:
        """The package index URL a ``network: packages`` command uses; refuses when no proxy is attached."""
        index = self.package_index
        if index is None:
            raise SandboxError("this stage asks for 'network: packages', but no package index proxy runs here: "
                               "run it on a devart agent (which starts one), or attach one to the sandbox "
                               "(sandboxes.package_index.serve_package_index)", reason="PackageIndexUnavailable")
        if self._confinement is not None:
            return f"http://127.0.0.1:{INDEX_PORT}/simple"
        if index.url is None:
            raise SandboxError("unisolated sandboxes reach the package index proxy over loopback TCP, and this one "
                               "listens only on its socket: serve it with tcp=True", reason="PackageIndexUnavailable")
        return index.url

    def _directory(self, handle: SandboxHandle) -> Path:
        """The sandbox's directory, refusing handles of another backend or ids that would escape ``root``."""
        if handle.backend != self.backend:
            raise SandboxError(f"sandbox {handle.id!r} belongs to the {handle.backend!r} backend, not 'local': "
                               "run the agent with the backend that provisioned it")
        if not _VALID_ID.match(handle.id):
            raise SandboxError(f"invalid local sandbox id {handle.id!r}")
        return self.root / handle.id


def _remove(directory: Path) -> None:
    """Unmount the sandbox's volume (and whatever a crashed agent left mounted in it), then remove its folder."""
    volumes.release(directory)
    remove_tree(directory)


def _tool(name: str) -> str:
    """The path of a util-linux tool the backend needs; refuses to start without it."""
    path = shutil.which(name)
    if path is None:
        raise SandboxUnavailable(f"{name} is not installed: install util-linux (`apt-get install -y util-linux`)")
    return path
