"""How API errors and pod states read as SandboxErrors (the emulator tests cover them in context)."""

from __future__ import annotations

import json

import pytest
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import MaxRetryError

from devart.sandboxes.k8s_errors import api_error, exec_refused, is_running, start_failure


def refused(status: int, message: str) -> ApiException:
    exc = ApiException(status=status, reason="refused")
    exc.body = json.dumps({"kind": "Status", "message": message})
    return exc


@pytest.mark.parametrize(("exc", "reason", "retryable"), [
    (refused(403, 'pods is forbidden: User "devart" cannot create resource "pods"'), "Forbidden", False),
    (refused(403, 'exceeded quota: compute, requested: limits.memory=1Gi'), "QuotaExceeded", True),
    (refused(401, "Unauthorized"), "Forbidden", False),
    (refused(404, 'namespaces "devart-sandboxes" not found'), "NotFound", False),
    (refused(409, "already exists"), "Conflict", True),
    (refused(422, "spec.containers[0].image: Required value"), "InvalidManifest", False),
    (refused(429, "too many requests"), "ClusterUnavailable", True),
    (refused(503, "etcdserver: leader changed"), "ClusterUnavailable", True),
    (refused(405, "method not allowed"), "ApiError", False),
    (MaxRetryError(None, "/api/v1", "Connection refused"), "ClusterUnavailable", True),  # type: ignore[arg-type]
    (ConnectionRefusedError(111, "Connection refused"), "ClusterUnavailable", True),
])
def test_api_errors(exc: Exception, reason: str, retryable: bool) -> None:
    error = api_error(exc, "creating Pod p")
    assert (error.reason, error.retryable) == (reason, retryable)
    assert str(error).startswith("creating Pod p: ")


def test_the_api_message_is_quoted() -> None:
    error = api_error(refused(403, 'User "devart" cannot create resource "pods"'), "creating Pod p")
    assert 'cannot create resource "pods"' in str(error) and "docs/kubernetes.md" in str(error)


@pytest.mark.parametrize(("text", "reason", "retryable"), [
    ("Handshake status 404 Not Found -+-+- {} -+-+- b'pods \"x\" not found'", "SandboxGone", True),
    ("Handshake status 403 Forbidden -+-+- {} -+-+- b'cannot create pods/exec'", "Forbidden", False),
    ("Handshake status 400 Bad Request -+-+- {} -+-+- b'container not running'", "ExecFailed", True),
    ("[Errno 111] Connection refused", "ClusterUnavailable", True),
])
def test_exec_handshake_errors(text: str, reason: str, retryable: bool) -> None:
    error = exec_refused(ApiException(status=0, reason=text), "x")
    assert (error.reason, error.retryable) == (reason, retryable)


def test_running_means_the_sandbox_container_runs() -> None:
    assert is_running({"status": {"phase": "Running", "containerStatuses": [{"state": {"running": {}}}]}})
    assert not is_running({"status": {"phase": "Running", "containerStatuses": [
        {"state": {"terminated": {"exitCode": 1}}}]}})
    assert not is_running({"status": {"phase": "Pending"}})


def test_a_pending_pod_is_waited_for_until_the_deadline() -> None:
    pod = {"metadata": {"name": "p"}, "status": {"phase": "Pending", "initContainerStatuses": [
        {"name": "checkout", "state": {"running": {}}}]}}
    assert start_failure(pod, deadline_passed=False, waited=1) is None
    error = start_failure(pod, deadline_passed=True, waited=120)
    assert error is not None and error.reason == "SandboxStartTimeout" and "120s" in str(error)


def test_a_completed_checkout_is_not_a_failure() -> None:
    pod = {"status": {"phase": "Pending", "initContainerStatuses": [
        {"name": "checkout", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}],
        "containerStatuses": [{"name": "sandbox", "state": {"waiting": {"reason": "ContainerCreating"}}}]}}
    assert start_failure(pod, deadline_passed=False, waited=1) is None
    error = start_failure(pod, deadline_passed=True, waited=5)
    assert error is not None and "sandbox: ContainerCreating" in str(error)


def test_an_image_without_sh_is_reported() -> None:
    pod = {"status": {"phase": "Failed", "containerStatuses": [{"name": "sandbox", "state": {"terminated": {
        "exitCode": 128, "reason": "StartError", "message": 'exec: "sh": executable file not found in $PATH'}}}]}}
    error = start_failure(pod, deadline_passed=False, waited=1)
    assert error is not None and error.reason == "ContainerStartFailed" and '"sh"' in str(error)
