"""An emulated cluster for the Kubernetes backend's tests: kmock's API server emulator, and the kubelet's part.

kmock's ``KubernetesEmulator`` is a real HTTP server on localhost that stores objects, so the official client
talks to it exactly as to a cluster. The tests play the kubelet: ``Cluster.kubelet_reports`` patches pod status
through the API (``pods/status``) as a kubelet would, and ``Kubelet`` serves the exec stream, which kmock does not
emulate.

``Kubelet`` answers ``GET …/pods/<name>/exec`` upgrades with Kubernetes' v4 channel protocol (one leading byte per
frame: 1 stdout, 2 stderr, 3 the final ``Status``), the way the API server relays a kubelet's exec. By default it
runs the requested argv on this machine with the ``/workspace`` argument mapped to a test folder; ``script`` can
answer with fixed frames instead (for what only a real container produces, like an OOM kill). As with a real
kubelet, a client hanging up does not stop the process.
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web
import kmock
import psutil
from kubernetes import client

from devart.core.contracts import SandboxHandle, SandboxSpec, Source
from devart.core.settings import KubernetesSettings
from devart.sandboxes.kubernetes import KubernetesSandbox

NS = "devart-test"
REPO = Source(repo="https://git.example.com/team/app.git", ref="main")
#: What a kubelet reports once the checkout finished and the sandbox container runs.
RUNNING: dict[str, Any] = {
    "phase": "Running",
    "initContainerStatuses": [{"name": "checkout", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}],
    "containerStatuses": [{"name": "sandbox", "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}],
}

Script = Callable[[list[str]], list[tuple[int, bytes]] | None]


class Kubelet(kmock.KubernetesEmulator):
    """The emulator, serving exec streams; ``execs`` records every exec'd argv."""

    def __init__(self, *, workspace: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.workspace = workspace
        self.execs: list[list[str]] = []
        self.script: Script | None = None
        self.processes: list[asyncio.subprocess.Process] = []

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if raw.path.endswith("/exec") and raw.headers.get("Upgrade", "").lower() == "websocket":
            return await self._exec(raw)
        return await super().__call__(raw)

    def _pod_exists(self, namespace: str, name: str) -> bool:
        return any(resource.plural == "pods" and ns == namespace and n == name and not obj.deleted
                   for (resource, ns, n), obj in self.objects.items())

    async def _exec(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        _, _, _, namespace, _, name, _ = raw.path.strip("/").split("/")
        if not self._pod_exists(namespace, name):
            return aiohttp.web.json_response({"kind": "Status", "status": "Failure", "code": 404,
                                               "message": f'pods "{name}" not found'}, status=404)
        command = raw.query.getall("command")
        self.execs.append(command)
        ws = aiohttp.web.WebSocketResponse(protocols=("v4.channel.k8s.io",))
        await ws.prepare(raw)
        frames = self.script(command) if self.script is not None else None
        if frames is not None:
            for channel, data in frames:
                await ws.send_bytes(bytes([channel]) + data)
            await ws.close()
            return ws
        argv = [str(self.workspace) if arg == "/workspace" else arg for arg in command]
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        self.processes.append(proc)

        async def forward(stream: asyncio.StreamReader | None, channel: int) -> None:
            assert stream is not None
            while chunk := await stream.read(65536):
                await ws.send_bytes(bytes([channel]) + chunk)

        relay: asyncio.Future[Any] = asyncio.ensure_future(
            asyncio.gather(forward(proc.stdout, 1), forward(proc.stderr, 2), proc.wait()))
        hangup: asyncio.Future[Any] = asyncio.ensure_future(ws.receive())
        await asyncio.wait({relay, hangup}, return_when=asyncio.FIRST_COMPLETED)
        if relay.done() and not relay.exception():
            code = proc.returncode if proc.returncode is not None and proc.returncode >= 0 \
                else 128 - (proc.returncode or -signal.SIGKILL)
            status: dict[str, Any] = {"metadata": {}, "status": "Success"} if code == 0 else {
                "metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                "message": f"command terminated with non-zero exit code: exit status {code}",
                "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}
            await ws.send_bytes(b"\x03" + json.dumps(status).encode())
            await ws.close()
        else:
            relay.cancel()  # the client hung up; the process runs on, as under a real kubelet
        hangup.cancel()
        return ws

    @staticmethod
    def marker() -> str:
        """A ``sleep`` duration no other process uses, to find this test's processes and only them."""
        return f"300.{uuid.uuid4().int % 10**9:09d}"

    @staticmethod
    def sleepers(duration: str) -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["cmdline", "status"])
                if p.info["cmdline"] == ["sleep", duration] and p.info["status"] != psutil.STATUS_ZOMBIE]

    def kill_leftovers(self) -> None:
        """Kill whatever the exec'd commands left running (only the processes this kubelet started)."""
        for proc in self.processes:
            try:
                root = psutil.Process(proc.pid)
                for process in [*root.children(recursive=True), root]:
                    process.kill()
            except psutil.Error:
                pass


@dataclass
class Cluster:
    """The emulated cluster as a test sees it: the kubelet to play, a client, and backends pointing at it."""

    kubelet: Kubelet
    core: client.CoreV1Api
    configuration: client.Configuration

    def backend(self, **settings: Any) -> KubernetesSandbox:
        cfg = KubernetesSettings(namespace=NS, **{"ready_timeout": 5.0, **settings})
        return KubernetesSandbox(cfg, configuration=self.configuration, poll_interval=0.05)

    def objects(self, plural: str) -> dict[str, dict[str, Any]]:
        """Live objects of one resource in the namespace, by name."""
        return {name: obj.raw for (resource, ns, name), obj in self.kubelet.objects.items()
                if resource.plural == plural and ns == NS and not obj.deleted}

    def everything(self) -> set[str]:
        return {f"{plural}/{name}" for plural in ("pods", "secrets", "networkpolicies")
                for name in self.objects(plural)}

    async def pod_created(self, known: frozenset[str] = frozenset()) -> str:
        """The name of a pod that appears, other than those ``known``."""
        for _ in range(200):
            if pods := set(self.objects("pods")) - known:
                return pods.pop()
            await asyncio.sleep(0.02)
        raise AssertionError("no pod was created")

    async def kubelet_reports(self, name: str, status: dict[str, Any]) -> None:
        """Patch the pod's status, as the kubelet does."""
        await asyncio.to_thread(self.core.patch_namespaced_pod_status, name, NS, {"status": status},
                                _preload_content=False)

    async def running(self, backend: KubernetesSandbox, spec: SandboxSpec | None = None,
                      run_id: str = "run-1") -> SandboxHandle:
        known = frozenset(self.objects("pods"))
        task = asyncio.create_task(backend.provision(run_id, "build", REPO, spec or SandboxSpec()))
        await self.kubelet_reports(await self.pod_created(known), RUNNING)
        return await task


@asynccontextmanager
async def emulated_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """kmock's emulator with ``Kubelet`` on a local port, and a client configuration pointing at it."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    kubelet = Kubelet(workspace=workspace)
    async with kubelet, kmock.Server(kubelet) as server:
        for resource in ("v1/pods", "v1/secrets", "networking.k8s.io/v1/networkpolicies"):
            kubelet.resources[resource] = kmock.ResourceInfo(namespaced=True)
        configuration = client.Configuration(host=str(server.url).rstrip("/"))
        api = client.ApiClient(configuration)
        try:
            yield Cluster(kubelet, client.CoreV1Api(api), configuration)
        finally:
            api.close()
            kubelet.kill_leftovers()
