"""Reading a sandbox pod's status, and the API server's errors, as ``SandboxError``s with a reason and a verdict.

The verdict is ``retryable``: a busy cluster (unschedulable, slow to start, throttling) may do better on the next
attempt; a wrong image, a failed checkout or a stage that needs more memory will fail the same way again. Every
function here is pure, over the pod as the API returns it (a JSON dict), so each class of failure is testable.
"""

from __future__ import annotations

import json
import re
from typing import Any

from devart.core.errors import SandboxError

#: Waiting reasons meaning the image can't be pulled: the name, tag or registry credentials are wrong.
IMAGE_PULL = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
#: Waiting or terminated reasons meaning the container can't be created or started from its spec.
START_FAILED = frozenset({"CreateContainerConfigError", "CreateContainerError", "RunContainerError", "StartError",
                          "PreCreateHookError", "PostStartHookError"})
#: Characters of a termination message (git's error, via FallbackToLogsOnError) kept in an error.
MESSAGE_TAIL = 2000


def is_running(pod: dict[str, Any]) -> bool:
    """The pod runs and its sandbox container is up, so commands can be exec'd in it."""
    status = pod.get("status") or {}
    if status.get("phase") != "Running":
        return False
    return all("running" in (cs.get("state") or {}) for cs in status.get("containerStatuses") or [])


def start_failure(pod: dict[str, Any], *, deadline_passed: bool, waited: float) -> SandboxError | None:
    """Why the pod will not (or did not in time) start running; None while it may still start.

    Args:
        pod: the pod as read from the API.
        deadline_passed: the wait for Running is over; a pod still pending is then reported as such.
        waited: seconds waited so far, for the message.
    """
    name = (pod.get("metadata") or {}).get("name", "?")
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase == "Failed" and status.get("reason") == "DeadlineExceeded":
        return deadline_exceeded(name)
    for kind, key in (("checkout init container", "initContainerStatuses"), ("sandbox container",
                                                                             "containerStatuses")):
        for cs in status.get(key) or []:
            if error := container_failure(name, kind, cs, init=key == "initContainerStatuses"):
                return error
    if phase == "Failed":
        if status.get("reason") == "Evicted":
            return SandboxError(f"sandbox pod {name} was evicted: {status.get('message', '')}. The node ran short "
                                "of resources or the workspace outgrew sandbox.disk_mb", retryable=True,
                                reason="Evicted")
        return SandboxError(f"sandbox pod {name} failed: {status.get('reason', '')} {status.get('message', '')}"
                            .strip(), reason="SandboxFailed")
    if phase == "Succeeded":
        return SandboxError(f"sandbox pod {name} exited before any command ran: its image must provide `sh` "
                            "and `sleep`", reason="SandboxExited")
    if not deadline_passed:
        return None
    scheduled: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), {})
    if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        return SandboxError(f"sandbox pod {name} could not be scheduled within {waited:g}s: "
                            f"{scheduled.get('message', 'no node fits')}. Free capacity, lower the stage's "
                            "sandbox.cpu / memory_mb / disk_mb, or raise DEVART_K8S_READY_TIMEOUT",
                            retryable=True, reason="Unschedulable")
    return SandboxError(f"sandbox pod {name} did not start within {waited:g}s (phase {phase}{_waiting(status)}): "
                        "the node may still be pulling a large image or cloning a large repository; raise "
                        "DEVART_K8S_READY_TIMEOUT if this is expected", retryable=True, reason="SandboxStartTimeout")


def container_failure(pod: str, kind: str, cs: dict[str, Any], *, init: bool = False) -> SandboxError | None:
    """Why one container (from ``status.*ContainerStatuses``) failed, or None if it hasn't."""
    state = cs.get("state") or {}
    waiting = state.get("waiting") or {}
    terminated = state.get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
    reason, message = waiting.get("reason", ""), waiting.get("message", "")
    if reason in IMAGE_PULL:
        return SandboxError(f"sandbox pod {pod}: image {cs.get('image', '?')!r} of the {kind} can't be pulled "
                            f"({reason}: {message or 'no details'}). Check the image name and tag, and that the "
                            "cluster can reach its registry (imagePullSecrets for a private one)",
                            reason="ImagePullFailed")
    if reason in START_FAILED:
        return SandboxError(f"sandbox pod {pod}: the {kind} can't start ({reason}: {message or 'no details'})",
                            reason="ContainerStartFailed")
    if not terminated:
        return None
    code = terminated.get("exitCode")
    if terminated.get("reason") == "OOMKilled":
        return SandboxError(f"sandbox pod {pod}: the {kind} ran out of memory (OOMKilled): raise the stage's "
                            "sandbox.memory_mb", reason="OutOfMemory")
    if init and code == 0:
        return None  # the checkout finished
    detail = (terminated.get("message") or "").strip()[-MESSAGE_TAIL:] or terminated.get("reason", "no details")
    if init:
        return SandboxError(f"sandbox pod {pod}: checking out the repository failed (exit code {code}): {detail}. "
                            "Check the URL and ref, and that the cluster can reach the git server",
                            reason="CheckoutFailed")
    if terminated.get("reason") in START_FAILED:
        return SandboxError(f"sandbox pod {pod}: the {kind} can't start ({terminated['reason']}: {detail})",
                            reason="ContainerStartFailed")
    return SandboxError(f"sandbox pod {pod}: the {kind} exited (exit code {code}: {detail}); its image must "
                        "provide `sh` and `sleep`", reason="SandboxExited")


def deadline_exceeded(pod: str) -> SandboxError:
    return SandboxError(f"sandbox pod {pod} outlived its activeDeadlineSeconds and was stopped by Kubernetes: "
                        "raise the stage's sandbox.timeout (or DEVART_K8S_DEADLINE_MARGIN)", reason="DeadlineExceeded")


def api_error(exc: Exception, doing: str) -> SandboxError:
    """An error of the API client (``ApiException`` or a connection error) while ``doing`` something."""
    status = getattr(exc, "status", None)
    if not isinstance(status, int) or status == 0:  # no HTTP answer at all
        return SandboxError(f"{doing}: the Kubernetes API server can't be reached ({exc}). Check the cluster is "
                            "up and the kubeconfig / in-cluster settings point at it", retryable=True,
                            reason="ClusterUnavailable")
    message = _status_message(getattr(exc, "body", None)) or str(getattr(exc, "reason", "") or exc)
    if status == 403 and "exceeded quota" in message:
        return SandboxError(f"{doing}: the namespace's ResourceQuota is used up ({message})", retryable=True,
                            reason="QuotaExceeded")
    if status in (401, 403):
        return SandboxError(f"{doing}: the cluster refused devart's credentials ({message}). Grant the Role "
                            "described in docs/kubernetes.md to the identity devart uses", reason="Forbidden")
    if status == 404:
        return SandboxError(f"{doing}: not found ({message}). Create the namespace (kubectl create namespace …) or "
                            "set DEVART_K8S_NAMESPACE", reason="NotFound")
    if status == 409:
        return SandboxError(f"{doing}: conflict ({message})", retryable=True, reason="Conflict")
    if status in (400, 422):
        return SandboxError(f"{doing}: the cluster rejected the manifest ({message})", reason="InvalidManifest")
    transient = status == 429 or status >= 500
    return SandboxError(f"{doing}: the API server answered {status} ({message})", retryable=transient,
                        reason="ClusterUnavailable" if transient else "ApiError")


def exec_refused(exc: Exception, pod: str) -> SandboxError:
    """The API refused to open an exec stream (the client puts the handshake's HTTP status in its reason)."""
    text = str(getattr(exc, "reason", "") or exc)
    match = re.search(r"Handshake status (\d{3})", text)
    status = int(match.group(1)) if match else None
    if status == 404:
        return SandboxError(f"sandbox pod {pod} does not exist (torn down, swept, or in another namespace)",
                            retryable=True, reason="SandboxGone")
    if status in (401, 403):
        return SandboxError(f"exec in sandbox pod {pod}: the cluster refused devart's credentials ({text[:300]}). "
                            "The Role in docs/kubernetes.md must allow create and get on pods/exec",
                            reason="Forbidden")
    if status is not None:
        return SandboxError(f"exec in sandbox pod {pod} was refused ({text[:300]}): the pod may have stopped",
                            retryable=True, reason="ExecFailed")
    return api_error(exc, f"exec in sandbox pod {pod}")


def _status_message(body: Any) -> str:
    try:
        return str(json.loads(body).get("message", "")) if body else ""
    except (ValueError, AttributeError, TypeError):
        return str(body)[:500]


def _waiting(status: dict[str, Any]) -> str:
    reasons = [f"{cs.get('name')}: {cs['state']['waiting'].get('reason', 'waiting')}"
               for key in ("initContainerStatuses", "containerStatuses") for cs in status.get(key) or []
               if "waiting" in (cs.get("state") or {})]
    return f"; {', '.join(reasons)}" if reasons else ""
