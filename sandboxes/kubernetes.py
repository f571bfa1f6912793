"""The Kubernetes sandbox backend: one hardened Pod per stage attempt, commands through the API's exec stream.

A provision creates, in this order, the sandbox's NetworkPolicy (ingress denied; egress denied unless the stage
asks, or only to the in-cluster package index proxy for ``network: packages``), a temporary policy letting the
init container reach DNS and the git server, a Secret holding the stage's secrets (when it has any) and the Pod
(``k8s_manifests`` builds them all). It then waits for the pod to run, deletes the temporary policy and returns.
Anything that goes wrong on the way is classified (``k8s_errors``) and everything created is deleted again. The
official client is blocking, so every call runs in a worker thread; the client itself is created on first use
from a kubeconfig or the pod's in-cluster service account.

Not enforced here: ``spec.pids`` (Kubernetes has no per-pod field; the node's ``podPidsLimit`` applies).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from datetime import UTC, datetime

from kubernetes.client import Configuration

from devart.core import settings as core_settings
from devart.core.contracts import SandboxHandle, SandboxSpec, Source
from devart.core.errors import SandboxError
from devart.core.settings import KubernetesSettings
from devart.sandboxes import k8s_manifests as m
from devart.sandboxes.base import (
    DEFAULT_OUTPUT_CAP,
    ExecResult,
    OutputCallback,
    current_store_secrets,
    secret_variable,
    store_name,
    store_value,
)
from devart.sandboxes.k8s_api import VALID_ID, SandboxApi
from devart.sandboxes.k8s_errors import container_failure, is_running, start_failure
from devart.sandboxes.k8s_exec import STREAM_GRACE, exec_argv, kill_argv, parse_status, parse_usage
from devart.sandboxes.processes import OutputBuffer

#: Seconds a kill (after a timeout or cancellation) may take before it is abandoned.
KILL_TIMEOUT = 15.0
#: Sandboxes whose secret values one process keeps for redaction (an agent execs in many over its life).
REDACT_CACHE = 256


class KubernetesSandbox:
    """Sandboxes as Pods in one namespace; any process with the same settings can exec in and tear them down.

    Args:
        settings: namespace, images, identity and cluster access (default: ``DEVART_K8S_*``).
        configuration: a ready client configuration, instead of loading one from ``settings`` (tests use this).
        poll_interval: seconds between reads of a starting pod's status.
    """

    backend = "kubernetes"

    def __init__(self, settings: KubernetesSettings | None = None, *, configuration: Configuration | None = None,
                 poll_interval: float = 0.5) -> None:
        self.settings = settings or core_settings.k8s()
        self.poll_interval = poll_interval
        self.api = SandboxApi(self.settings, configuration)
        self._redact: dict[str, list[str]] = {}  # secret values by sandbox, read once per process

    async def provision(self, run_id: str, stage: str, source: Source, spec: SandboxSpec) -> SandboxHandle:
        """Create the sandbox's objects, wait for its pod to run; on any failure delete all of them and raise."""
        cfg = self.settings
        port = m.git_port(source)
        m.check_env_names([*spec.env, *spec.secrets])
        if spec.network == "packages":  # before anything is created: without a proxy the stage can't run here
            m.PackageProxy.parse(cfg.package_proxy)
        sb = m.Sandbox(id=m.sandbox_id(run_id, stage), run_id=run_id, stage=stage, source=source, spec=spec,
                       created=datetime.now(UTC), git_port=port, secret_values=_resolve(spec.secrets))
        manifests = [m.network_policy(sb, cfg)]
        if spec.network != "egress":
            manifests.append(m.checkout_policy(sb, cfg))
        if sb.secret_values:
            manifests.append(m.secret(sb, cfg))
        manifests.append(m.pod(sb, cfg))
        creating = asyncio.ensure_future(asyncio.to_thread(self.api.create_all, manifests))
        try:
            await asyncio.shield(creating)
            await self._wait_running(sb.id)
            if spec.network != "egress":  # from here on the pod has no network (once the CNI applies it)
                await asyncio.to_thread(self.api.delete, "NetworkPolicy", m.checkout_policy_name(sb.id))
        except BaseException:
            cleanup = asyncio.ensure_future(self._undo(creating, sb.id))
            with suppress(BaseException):  # the original error matters more than a failed cleanup
                await asyncio.shield(cleanup)
            raise
        return SandboxHandle(backend=self.backend, id=sb.id, run_id=run_id, created_at=sb.created,
                             workspace=m.WORKSPACE, spec=spec)

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
        """Run ``command`` in the workspace, streaming its output (stderr merged into stdout) to ``on_output``.

        The container kills the command's process group after ``timeout``; on cancellation or an error of
        ``on_output`` a second exec kills it. Variables in ``env`` are passed in the exec request (the API server
        may log it): use the stage's secrets, which live in a Secret, for credentials. The stage's ``secret:``
        references (the organisation's store, whose values only the agent holding the task's claim receives, see
        ``base.store_secrets``) are passed the same way, under ``env``, and masked in the output like the rest.
        """
        name = self._name(handle)
        store = _store_values(handle.spec.secrets, current_store_secrets())
        variables = {**store, **(env or {})}
        m.check_env_names(list(variables))
        pidfile = f"/tmp/.devart-exec-{secrets.token_hex(6)}.pid"
        argv = exec_argv(command, variables, timeout=timeout, workdir=handle.workspace or m.WORKSPACE,
                         pidfile=pidfile)
        output = OutputBuffer(output_cap, on_output, redact=[*await self._secrets(name, handle), *store.values()])
        failures: list[BaseException] = []
        stop = threading.Event()
        loop = asyncio.get_running_loop()

        def feed(data: bytes, final: bool = False) -> None:
            if failures:
                return
            try:
                output.feed(data, final=final)
            except BaseException as exc:  # on_output raised: stop the command and raise this below
                failures.append(exc)
                stop.set()

        def emit(data: bytes) -> None:  # called from the streaming thread
            loop.call_soon_threadsafe(feed, data)

        started = time.monotonic()
        job = asyncio.ensure_future(asyncio.to_thread(
            self.api.stream, name, argv, started + timeout + STREAM_GRACE, stop, emit))
        try:
            streamed = await asyncio.shield(job)
        except SandboxError:
            raise  # the exec never started
        except BaseException:
            stop.set()
            await self._kill(name, pidfile)
            raise
        if failures or streamed.expired:
            await self._kill(name, pidfile)
        if failures:
            raise failures[0]
        rest, cpu, oom = parse_usage(streamed.stderr)
        feed(rest, final=True)
        if failures:
            raise failures[0]
        code, message = parse_status(streamed.status)
        elapsed = time.monotonic() - started
        timed_out = streamed.expired or (code in (124, 137) and oom is not True and elapsed >= timeout)
        if code is None and not timed_out:
            code, oom = await self._lost(name, message), True  # only returns when the pod was OOM-killed
        elif code == 137 and oom is None and not timed_out:
            oom = await self._oom_killed(name)  # no cgroup counter in this container: ask the pod's status
        return ExecResult(exit_code=-9 if code is None else code, output=output.text, truncated=output.truncated,
                          timed_out=timed_out, duration=round(elapsed, 3), cpu_seconds=cpu, oom_killed=bool(oom))

    async def store_artifact(self, handle: SandboxHandle, name: str, data: bytes) -> bool:
        """Not supported: pods share no storage, so the test stage installs the project from source."""
        return False

    async def teardown(self, handle: SandboxHandle) -> None:
        """Delete the pod (at once, killing whatever runs in it), its NetworkPolicies and Secret. Idempotent."""
        await asyncio.to_thread(self.api.remove, self._name(handle))
        self._redact.pop(handle.id, None)

    async def list(self) -> list[SandboxHandle]:
        """Every sandbox with an object (pod, policy or secret) left in the namespace, oldest first."""
        return await asyncio.to_thread(self.api.handles)

    # Async helpers.

    async def _wait_running(self, name: str) -> None:
        started = time.monotonic()
        while True:
            pod = await asyncio.to_thread(self.api.read_pod, name)
            waited = time.monotonic() - started
            if pod is None:
                raise SandboxError(f"sandbox pod {name} was deleted while it started (by an operator or the "
                                   "sweeper)", retryable=True, reason="SandboxGone")
            if is_running(pod):
                return
            timeout = self.settings.ready_timeout
            if error := start_failure(pod, deadline_passed=waited >= timeout, waited=round(waited, 1)):
                raise error
            await asyncio.sleep(max(0.0, min(self.poll_interval, timeout - waited)))

    async def _undo(self, creating: asyncio.Future[None], sandbox: str) -> None:
        """Delete a failed or cancelled provision's objects, after any create still in flight has landed."""
        await asyncio.wait({creating})
        await asyncio.to_thread(self.api.remove, sandbox)

    async def _secrets(self, name: str, handle: SandboxHandle) -> Sequence[str]:
        """The stage's secret values, so the output never shows them (read from the sandbox's Secret)."""
        if not any(store_name(ref) is None for ref in handle.spec.secrets.values()):
            return []  # no env: secret, so no Secret object to read
        if name not in self._redact:
            while len(self._redact) >= REDACT_CACHE:
                self._redact.pop(next(iter(self._redact)))
            self._redact[name] = await asyncio.to_thread(self.api.secret_values, name)
        return self._redact[name]

    async def _kill(self, name: str, pidfile: str) -> None:
        """Kill a command's process group from a second exec; best effort, bounded by ``KILL_TIMEOUT``."""
        deadline = time.monotonic() + KILL_TIMEOUT
        job = asyncio.ensure_future(asyncio.to_thread(
            self.api.stream, name, kill_argv(pidfile), deadline, threading.Event(), lambda _data: None))
        with suppress(BaseException):
            await asyncio.wait({job}, timeout=KILL_TIMEOUT + 1)
        if job.done() and not job.cancelled():
            job.exception()  # retrieved, so asyncio doesn't log it: the pod may already be gone

    async def _lost(self, name: str, message: str) -> int:
        """The stream ended without an exit status: return 137 if the pod was OOM-killed, else raise why."""
        pod = await asyncio.to_thread(self.api.read_pod, name)
        if pod is None:
            raise SandboxError(f"sandbox pod {name} disappeared while a command ran in it (torn down or swept)",
                               retryable=True, reason="SandboxGone")
        if error := start_failure(pod, deadline_passed=False, waited=0):
            if error.reason == "OutOfMemory":
                return 137
            raise error
        raise SandboxError(f"exec in sandbox pod {name} ended without an exit status "
                           f"({message or 'the connection dropped'})", retryable=True, reason="ExecFailed")

    async def _oom_killed(self, name: str) -> bool:
        with suppress(SandboxError):
            pod = await asyncio.to_thread(self.api.read_pod, name)
            for cs in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
                failure = container_failure(name, "sandbox container", cs)
                if cs.get("name") == m.CONTAINER and failure is not None and failure.reason == "OutOfMemory":
                    return True
        return False

    def _name(self, handle: SandboxHandle) -> str:
        if handle.backend != self.backend:
            raise SandboxError(f"sandbox {handle.id!r} belongs to the {handle.backend!r} backend, not 'kubernetes': "
                               "run the agent with the backend that provisioned it")
        if not VALID_ID.match(handle.id):
            raise SandboxError(f"invalid Kubernetes sandbox id {handle.id!r}")
        return handle.id


def _resolve(refs: Mapping[str, str]) -> dict[str, str]:
    """``env:`` secret values from this process's environment; only their references travel in history and messages.
    (``secret:`` references are the agent's to fill in at exec time: the pipeline worker never holds store values.)"""
    values: dict[str, str] = {}
    for name, ref in refs.items():
        if store_name(ref) is not None:
            continue
        variable = secret_variable(name, ref)
        if variable not in os.environ:
            raise SandboxError(f"secret {name!r} refers to environment variable {variable!r}, which is not set in "
                               "the pipeline worker (the Kubernetes backend reads secrets when it provisions): set it "
                               "there", reason="SecretMissing")
        values[name] = os.environ[variable]
    return values


def _store_values(refs: Mapping[str, str], store: Mapping[str, str]) -> dict[str, str]:
    """The variables of a stage's ``secret:`` references, from the values its claim holder was given."""
    return {name: store_value(name, ref, store) for name, ref in refs.items() if store_name(ref) is not None}
