"""The Kubernetes backend against kmock's in-memory API server: provisioning, failures, teardown, list, sweep.

The test plays the kubelet (see ``k8s_emulator``): it patches pod status through the API as a kubelet would.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from devart.core.contracts import SandboxSpec, Source
from devart.core.errors import SandboxError, SandboxUnavailable
from devart.core.settings import KubernetesSettings
from devart.sandboxes.kubernetes import KubernetesSandbox
from tests.sandboxes.k8s_emulator import NS, REPO, RUNNING, Cluster, emulated_cluster


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with emulated_cluster(tmp_path) as emulated:
        yield emulated


async def test_provision_creates_hardened_objects_and_closes_the_network_once_running(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a stage with a secret taken from the worker's environment
    monkeypatch.setenv("DEVART_TEST_TOKEN", "s3cret")
    monkeypatch.setenv("DEVART_SECRETS_ALLOWED", "DEVART_TEST_TOKEN")
    backend = cluster.backend()
    spec = SandboxSpec(memory_mb=512, env={"CI": "1"}, secrets={"API_TOKEN": "env:DEVART_TEST_TOKEN"})
    task = asyncio.create_task(backend.provision("run-1", "build", REPO, spec))
    name = await cluster.pod_created()
    # When the pod is still starting, Then every object exists, the policies created before the pod
    await asyncio.sleep(0.2)
    assert not task.done()
    assert cluster.everything() == {f"pods/{name}", f"secrets/{name}", f"networkpolicies/{name}",
                                    f"networkpolicies/{name}-checkout"}
    creations = [str(r.url).rsplit("/", 1)[-1] for r in cluster.kubelet if r.method == "POST"]
    assert creations == ["networkpolicies", "networkpolicies", "secrets", "pods"]
    # When the kubelet reports it running
    await cluster.kubelet_reports(name, RUNNING)
    handle = await task
    # Then the checkout policy is gone, so the pod has no network left
    assert handle.id == name and handle.backend == "kubernetes" and handle.workspace == "/workspace"
    assert handle.run_id == "run-1" and handle.spec == spec
    assert cluster.everything() == {f"pods/{name}", f"secrets/{name}", f"networkpolicies/{name}"}
    assert cluster.objects("networkpolicies")[name]["spec"]["egress"] == []
    assert cluster.objects("secrets")[name]["data"] == {"API_TOKEN": base64.b64encode(b"s3cret").decode()}
    pod = cluster.objects("pods")[name]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["containers"][0]["resources"]["limits"]["memory"] == "512Mi"
    assert "s3cret" not in json.dumps(pod)


async def test_an_egress_stage_gets_an_open_policy_and_no_checkout_policy(cluster: Cluster) -> None:
    handle = await cluster.running(cluster.backend(), SandboxSpec(network="egress"))
    assert cluster.everything() == {f"pods/{handle.id}", f"networkpolicies/{handle.id}"}
    assert cluster.objects("networkpolicies")[handle.id]["spec"]["egress"] != []


async def test_a_packages_stage_reaches_only_the_configured_proxy(cluster: Cluster) -> None:
    backend = cluster.backend(package_proxy="http://devart-index.devart.svc:3141")
    handle = await cluster.running(backend, SandboxSpec(network="packages"))
    assert cluster.everything() == {f"pods/{handle.id}", f"networkpolicies/{handle.id}"}
    rules = cluster.objects("networkpolicies")[handle.id]["spec"]["egress"]
    assert rules[1]["ports"] == [{"protocol": "TCP", "port": 3141}]


async def test_a_packages_stage_without_a_proxy_is_refused_before_anything_is_created(cluster: Cluster) -> None:
    with pytest.raises(SandboxError, match="DEVART_K8S_PACKAGE_PROXY") as caught:
        await cluster.backend().provision("run-1", "build", REPO, SandboxSpec(network="packages"))
    assert not caught.value.retryable and caught.value.reason == "PackageIndexUnavailable"
    assert cluster.everything() == set()


def waiting(container: str, reason: str, message: str = "") -> dict[str, Any]:
    key = "initContainerStatuses" if container == "checkout" else "containerStatuses"
    return {"phase": "Pending", key: [{"name": container, "image": "registry.example.com/nope:1",
                                       "state": {"waiting": {"reason": reason, "message": message}}}]}


FAILURES = {
    "image-pull-backoff": (waiting("sandbox", "ImagePullBackOff", 'Back-off pulling image "nope:1"'),
                           "ImagePullFailed", False),
    "err-image-pull-init": (waiting("checkout", "ErrImagePull", "manifest unknown"), "ImagePullFailed", False),
    "invalid-image-name": (waiting("sandbox", "InvalidImageName", "couldn't parse image name"), "ImagePullFailed",
                           False),
    "config-error": (waiting("sandbox", "CreateContainerConfigError", "secret not found"), "ContainerStartFailed",
                     False),
    "checkout-failed": ({"phase": "Pending", "initContainerStatuses": [{"name": "checkout", "state": {"terminated": {
        "exitCode": 128, "reason": "Error", "message": "fatal: repository 'https://git.example.com/x' not found"}}}]},
        "CheckoutFailed", False),
    "oom-killed": ({"phase": "Failed", "containerStatuses": [{"name": "sandbox", "state": {"terminated": {
        "exitCode": 137, "reason": "OOMKilled"}}}]}, "OutOfMemory", False),
    "deadline": ({"phase": "Failed", "reason": "DeadlineExceeded", "message": "Pod was active too long"},
                 "DeadlineExceeded", False),
    "evicted": ({"phase": "Failed", "reason": "Evicted", "message": "ephemeral storage"}, "Evicted", True),
    "unschedulable": ({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                                                          "reason": "Unschedulable",
                                                          "message": "0/3 nodes are available: Insufficient memory"}]},
                      "Unschedulable", True),
    "start-timeout": (waiting("sandbox", "ContainerCreating"), "SandboxStartTimeout", True),
}


@pytest.mark.parametrize("case", list(FAILURES))
async def test_start_failures_are_classified_and_leave_nothing_behind(cluster: Cluster, case: str) -> None:
    status, reason, retryable = FAILURES[case]
    backend = cluster.backend(ready_timeout=0.6)
    loop = asyncio.get_running_loop()
    started = loop.time()
    task = asyncio.create_task(backend.provision("run-1", "build", REPO, SandboxSpec()))
    await cluster.kubelet_reports(await cluster.pod_created(), status)
    with pytest.raises(SandboxError) as caught:
        await task
    assert (caught.value.reason, caught.value.retryable) == (reason, retryable), str(caught.value)
    if reason in ("Unschedulable", "SandboxStartTimeout"):  # a pending pod is only given up on at the deadline
        assert loop.time() - started >= 0.6
    if case == "checkout-failed":
        assert "repository 'https://git.example.com/x' not found" in str(caught.value)
    if case == "unschedulable":
        assert "Insufficient memory" in str(caught.value)
    assert cluster.everything() == set()


async def test_sources_and_secrets_are_checked_before_anything_is_created(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = cluster.backend()
    with pytest.raises(SandboxError) as caught:
        await backend.provision("run-1", "build", Source(repo="/home/me/project"), SandboxSpec())
    assert caught.value.reason == "SourceNotSupported" and not caught.value.retryable
    with pytest.raises(SandboxError) as caught:  # not allow-listed
        await backend.provision("run-1", "build", REPO, SandboxSpec(secrets={"T": "env:DEVART_TEST_UNSET_VAR"}))
    assert caught.value.reason == "SecretNotAllowed" and "DEVART_TEST_UNSET_VAR" in str(caught.value)
    monkeypatch.setenv("DEVART_SECRETS_ALLOWED", "DEVART_TEST_UNSET_VAR")
    with pytest.raises(SandboxError) as caught:  # allow-listed, but not set where the backend runs
        await backend.provision("run-1", "build", REPO, SandboxSpec(secrets={"T": "env:DEVART_TEST_UNSET_VAR"}))
    assert caught.value.reason == "SecretMissing" and "DEVART_TEST_UNSET_VAR" in str(caught.value)
    assert [r for r in cluster.kubelet if r.method == "POST"] == []


async def test_a_cancelled_provision_deletes_what_it_created(cluster: Cluster) -> None:
    task = asyncio.create_task(cluster.backend().provision("run-1", "build", REPO, SandboxSpec()))
    await cluster.pod_created()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cluster.everything() == set()


async def test_a_provision_cancelled_while_a_create_is_in_flight_leaves_nothing(cluster: Cluster) -> None:
    backend = cluster.backend()
    create = backend.api.create

    def slow_create(manifest: dict[str, Any]) -> None:
        if manifest["kind"] == "Pod":
            time.sleep(0.5)  # the request is on its way when the provision is cancelled
        create(manifest)

    backend.api.create = slow_create  # type: ignore[method-assign]
    task = asyncio.create_task(backend.provision("run-1", "build", REPO, SandboxSpec()))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.6)  # long enough for the slow create to have landed
    assert cluster.everything() == set()


async def test_a_pod_deleted_while_starting_is_a_retryable_error(cluster: Cluster) -> None:
    task = asyncio.create_task(cluster.backend().provision("run-1", "build", REPO, SandboxSpec()))
    name = await cluster.pod_created()
    await asyncio.to_thread(cluster.core.delete_namespaced_pod, name, NS, _preload_content=False)
    with pytest.raises(SandboxError) as caught:
        await task
    assert caught.value.reason == "SandboxGone" and caught.value.retryable


async def test_teardown_deletes_everything_and_is_idempotent(cluster: Cluster,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVART_TEST_TOKEN", "s3cret")
    monkeypatch.setenv("DEVART_SECRETS_ALLOWED", "DEVART_TEST_TOKEN")
    backend = cluster.backend()
    handle = await cluster.running(backend, SandboxSpec(secrets={"T": "env:DEVART_TEST_TOKEN"}))
    assert len(cluster.everything()) == 3
    await backend.teardown(handle)
    assert cluster.everything() == set()
    await backend.teardown(handle)
    with pytest.raises(SandboxError, match="belongs to the 'local' backend"):
        await backend.teardown(handle.model_copy(update={"backend": "local"}))
    with pytest.raises(SandboxError, match="invalid Kubernetes sandbox id"):
        await backend.teardown(handle.model_copy(update={"id": "../etc"}))


async def test_list_finds_every_sandbox_and_a_sweep_removes_the_old_ones(cluster: Cluster) -> None:
    backend = cluster.backend()
    old = await cluster.running(backend, run_id="run-old")
    young = await cluster.running(backend, SandboxSpec(network="egress", cpu=2), run_id="run-young")
    # A provision that died before creating its pod leaves a policy only: list() still finds it.
    orphan = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {
        "name": "devart-orphan-x", "namespace": NS,
        "labels": {"app.kubernetes.io/managed-by": "devart", "devart.dev/sandbox": "devart-orphan-x"},
        "annotations": {"devart.dev/run-id": "run-dead", "devart.dev/created": "2020-01-01T00:00:00+00:00"}}}
    await asyncio.to_thread(backend.api.create, orphan)
    # Someone else's pod in the namespace is not ours
    await asyncio.to_thread(backend.api.create, {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "other", "labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}})
    # The old sandbox was created two hours ago
    two_hours_ago = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    for plural, patch in (("pods", cluster.core.patch_namespaced_pod),
                          ("networkpolicies", client.NetworkingV1Api(cluster.core.api_client)
                           .patch_namespaced_network_policy)):
        await asyncio.to_thread(patch, old.id, NS, {"metadata": {"annotations": {
            "devart.dev/created": two_hours_ago}}}, _preload_content=False)
        assert old.id in cluster.objects(plural)

    handles = await backend.list()
    assert [h.id for h in handles] == ["devart-orphan-x", old.id, young.id]  # oldest first
    assert [h.run_id for h in handles] == ["run-dead", "run-old", "run-young"]
    assert handles[2].spec == young.spec and handles[2].created_at == young.created_at

    # When a sweep tears down what is older than an hour
    cutoff = datetime.now(UTC) - timedelta(hours=1)
    for handle in handles:
        if handle.created_at is not None and handle.created_at < cutoff:
            await backend.teardown(handle)
    assert [h.id for h in await backend.list()] == [young.id]
    assert set(cluster.objects("pods")) == {young.id, "other"}


async def test_an_unreachable_cluster_is_a_retryable_error() -> None:
    cfg = KubernetesSettings(namespace=NS, ready_timeout=1)
    configuration = client.Configuration(host="http://127.0.0.1:9")  # discard port: nothing listens
    configuration.retries = 0
    backend = KubernetesSandbox(cfg, configuration=configuration)
    with pytest.raises(SandboxError) as caught:
        await backend.provision("run-1", "build", REPO, SandboxSpec())
    assert caught.value.reason == "ClusterUnavailable" and caught.value.retryable


async def test_the_client_is_configured_from_a_kubeconfig_on_first_use(cluster: Cluster, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig.yaml"
    kubeconfig.write_text(json.dumps({  # JSON is YAML
        "apiVersion": "v1", "kind": "Config", "current-context": "other",
        "clusters": [{"name": "emulator", "cluster": {"server": cluster.configuration.host}},
                     {"name": "nowhere", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "devart", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "emulated", "context": {"cluster": "emulator", "user": "devart"}},
                     {"name": "other", "context": {"cluster": "nowhere", "user": "devart"}}]}))
    backend = KubernetesSandbox(KubernetesSettings(namespace=NS, kubeconfig=kubeconfig, context="emulated"))
    assert backend.api._configuration is None  # nothing loaded until the first call
    assert await backend.list() == []
    assert list(cluster.kubelet)[-1].headers["Authorization"] == "Bearer t0ken"


async def test_a_missing_kubeconfig_makes_the_backend_unavailable(tmp_path: Path) -> None:
    backend = KubernetesSandbox(KubernetesSettings(kubeconfig=tmp_path / "none.yaml"))
    with pytest.raises(SandboxUnavailable, match="DEVART_K8S_KUBECONFIG"):
        await backend.list()
