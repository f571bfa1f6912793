"""The Kubernetes backend against a real cluster: runs only when ``KUBECONFIG`` is set (skipped otherwise, CI too).

Uses the ``DEVART_K8S_*`` settings (the namespace must exist and the RBAC of docs/kubernetes.md be granted) and
clones ``DEVART_K8S_TEST_REPO`` (default: a tiny public GitHub repository), so the cluster needs to reach it; the
test skips when this machine can't. The network test fails on a cluster whose CNI ignores NetworkPolicies, which
is the point: such a cluster can't keep a stage off the network.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator

import pytest

from devart.core.contracts import SandboxHandle, SandboxSpec, Source
from devart.core.errors import SandboxError
from devart.core.settings import KubernetesSettings
from devart.sandboxes.kubernetes import KubernetesSandbox

pytestmark = [pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="KUBECONFIG is not set: no cluster"),
              pytest.mark.timeout(900)]

REPO = os.environ.get("DEVART_K8S_TEST_REPO", "https://github.com/octocat/Hello-World.git")
CONNECT = "import socket; socket.create_connection(('1.1.1.1', 443), timeout=5); print('connected')"


@pytest.fixture(scope="module")
def source() -> Source:
    probe = subprocess.run(["git", "ls-remote", "--exit-code", REPO, "HEAD"], capture_output=True, timeout=60,
                           check=False, env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
    if probe.returncode != 0:
        pytest.skip(f"{REPO} is not reachable from here (set DEVART_K8S_TEST_REPO to a repository the cluster "
                    "can clone)")
    return Source(repo=REPO)


@pytest.fixture
def backend() -> KubernetesSandbox:
    return KubernetesSandbox(KubernetesSettings(ready_timeout=300))


@pytest.fixture
async def sandbox(backend: KubernetesSandbox, source: Source) -> AsyncIterator[SandboxHandle]:
    handle = await backend.provision("cluster-test", "check", source, SandboxSpec(memory_mb=256, disk_mb=512))
    try:
        yield handle
    finally:
        await backend.teardown(handle)


async def test_a_sandbox_runs_hardened_over_its_checkout(backend: KubernetesSandbox, sandbox: SandboxHandle) -> None:
    result = await backend.exec(sandbox, ["sh", "-c", "id -u; pwd; ls -a"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[:2] == ["10001", "/workspace"]
    assert ".git" in result.output.split()
    checks = {
        "touch /etc/devart": 1, "touch /usr/devart": 1, "touch /workspace/x && touch /tmp/x": 0,
        "test -e /var/run/secrets/kubernetes.io/serviceaccount/token": 1,
    }
    for command, expected in checks.items():
        outcome = await backend.exec(sandbox, ["sh", "-c", command])
        assert (outcome.exit_code == 0) == (expected == 0), f"{command}: {outcome.output}"


async def test_no_network_without_egress(backend: KubernetesSandbox, sandbox: SandboxHandle) -> None:
    result = await backend.exec(sandbox, ["python", "-c", CONNECT], timeout=30)
    assert result.exit_code != 0 and "connected" not in result.output


async def test_timeout_and_output_cap(backend: KubernetesSandbox, sandbox: SandboxHandle) -> None:
    lines: list[str] = []
    result = await backend.exec(sandbox, ["sh", "-c", "seq 1 3000; sleep 60 & sleep 60"], timeout=3,
                                on_output=lines.append, output_cap=50)
    assert result.timed_out and result.duration < 20
    assert result.truncated and result.output.endswith("3000\n") and len(lines) == 3000
    leftovers = await backend.exec(sandbox, ["sh", "-c", "for p in /proc/[0-9]*; do cat $p/cmdline; echo; done"])
    assert "sleep60" not in leftovers.output.replace("\0", "")


async def test_out_of_memory_is_reported(backend: KubernetesSandbox, sandbox: SandboxHandle) -> None:
    result = await backend.exec(sandbox, ["python", "-c", "x = bytearray(1024 * 1024 * 1024)"], timeout=60)
    assert result.exit_code != 0 and result.oom_killed, result


async def test_a_missing_image_is_a_non_retryable_error(backend: KubernetesSandbox, source: Source) -> None:
    with pytest.raises(SandboxError) as caught:
        await backend.provision("cluster-test-bad-image", "check", source, SandboxSpec(image="devart.invalid/nope:0"))
    assert caught.value.reason == "ImagePullFailed" and not caught.value.retryable
    assert not [h for h in await backend.list() if h.run_id == "cluster-test-bad-image"]  # all cleaned up
