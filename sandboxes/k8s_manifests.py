"""Pure builders of the Kubernetes objects behind one sandbox: its Pod, NetworkPolicies and Secret.

Nothing here talks to a cluster, so every manifest can be checked against the official schemas in tests. A
sandbox is a Pod named after the sandbox id; the same id names its NetworkPolicy and Secret and is the value of
the ``devart.dev/sandbox`` label on all of them, which is what teardown and sweeping go by.

What a pod can touch, as on the local backend: no service-account token, no host path, network, PID or IPC
namespace; a non-root uid without capabilities, ``RuntimeDefault`` seccomp and a read-only root filesystem; the
workspace, ``HOME`` and ``/tmp`` are emptyDirs of ``disk_mb`` each. They are disk-backed, not ``medium: Memory``:
a workspace routinely holds hundreds of MiB of virtualenvs and build output, which in memory would count against
``memory_mb`` and get the stage OOM-killed; on disk the kubelet evicts a pod past its ``sizeLimit`` (and past
its ``ephemeral-storage`` limit), so the limit holds, enforced by eviction rather than ENOSPC.

Network: the sandbox policy always denies ingress and denies egress unless the stage asks for it. The init
container needs the network to clone, so a second, temporary policy allows DNS and the git server's port while
the pod starts; the backend deletes it once the pod runs, before any untrusted command. A ``network: egress``
stage may reach DNS and public addresses only: every IPv4 and IPv6 address except ``PRIVATE_RANGES`` (loopback,
private, shared, link-local, unique-local, multicast and reserved) and ``DEVART_K8S_EGRESS_EXCEPT`` (where the
cluster's own pod and service ranges belong when they are not private ones). A ``network: packages``
stage may reach only DNS and the in-cluster package index proxy of ``DEVART_K8S_PACKAGE_PROXY``: its port on
the pods labelled ``devart.dev/package-index=true`` (in any namespace), or on its address when the URL names an
IP; its commands get the same uv/pip variables as on the local backend, pointing at that proxy.
"""

from __future__ import annotations

import base64
import ipaddress
import math
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from devart.core.contracts import SandboxSpec, Source
from devart.core.errors import SandboxError
from devart.core.settings import KubernetesSettings
from devart.sandboxes.egress_routes import NON_PUBLIC_IPV4
from devart.sandboxes.index_pages import package_environment

MANAGED_BY = "app.kubernetes.io/managed-by"
SANDBOX_LABEL = "devart.dev/sandbox"
RUN_LABEL = "devart.dev/run"
STAGE_LABEL = "devart.dev/stage"
RUN_ANNOTATION = "devart.dev/run-id"
CREATED_ANNOTATION = "devart.dev/created"
TTL_ANNOTATION = "devart.dev/ttl-seconds"
SPEC_ANNOTATION = "devart.dev/spec"
#: Label of the pods serving the in-cluster package index proxy, which ``network: packages`` pods may reach.
PACKAGE_INDEX_LABEL = "devart.dev/package-index"
#: Where the checkout lives in both containers; also the working directory of every command.
WORKSPACE = "/workspace"
#: The commands' ``HOME`` (caches, configuration), writable on a read-only root filesystem.
HOME = "/home/sandbox"
#: Addresses a ``network: egress`` pod never reaches, whatever ``DEVART_K8S_EGRESS_EXCEPT`` adds: the node's and
#: the cluster's private networks, a cloud's metadata service (link-local), loopback, multicast and reserved.
PRIVATE_RANGES = (*NON_PUBLIC_IPV4, "::1/128", "fc00::/7", "fe80::/10", "ff00::/8")
#: The container commands run in (the init container is "checkout").
CONTAINER = "sandbox"
#: Keeps the container alive for execs and exits at once on SIGTERM (a plain ``sleep`` as PID 1 ignores it).
KEEPALIVE = "trap 'exit 0' TERM; while :; do sleep 3600 & wait; done"
#: Clones ``$DEVART_REPO`` into the workspace and checks out ``$DEVART_REF`` if set; values come in through the
#: environment, never through the script text, so a URL or ref can't inject shell code.
CHECKOUT = ('git clone --quiet -- "$DEVART_REPO" /workspace && '
            'if [ -n "$DEVART_REF" ]; then git -C /workspace checkout --quiet "$DEVART_REF" --; fi')
#: Default ports of the git URL schemes this backend clones from.
GIT_PORTS = {"https": 443, "http": 80, "ssh": 22, "git": 9418}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_NOT_LABEL = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Sandbox:
    """Everything the builders need about one sandbox, decided once at provision."""

    id: str
    run_id: str
    stage: str
    source: Source
    spec: SandboxSpec
    created: datetime
    git_port: int
    secret_values: dict[str, str] = field(default_factory=dict)


def sandbox_id(run_id: str, stage: str) -> str:
    """``devart-<run>-<stage>-<random>``: a DNS label (so also a valid pod, policy, secret name and label value)."""
    run = re.sub(r"[^a-z0-9]", "", run_id.lower())[:8] or "run"
    name = re.sub(r"[^a-z0-9-]+", "-", stage.lower()).strip("-")[:30].strip("-") or "stage"
    return f"devart-{run}-{name}-{secrets.token_hex(3)}"


def label_value(text: str) -> str:
    """``text`` as a label value: at most 63 of ``[A-Za-z0-9_.-]``, starting and ending alphanumeric."""
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", _NOT_LABEL.sub("-", text)[:63])


def git_port(source: Source) -> int:
    """The TCP port the init container clones from; refuses sources a pod can't fetch."""
    repo = source.repo.strip()
    if source.ref is not None and (not source.ref.strip() or source.ref.strip().startswith("-")):
        raise SandboxError(f"invalid git ref {source.ref!r}: give a branch, tag or commit", reason="InvalidSource")
    if re.match(r"^[\w.-]+@[\w.-]+:", repo):  # scp-like git@host:owner/repo
        return GIT_PORTS["ssh"]
    parts = urlsplit(repo)
    if parts.scheme not in GIT_PORTS or not parts.hostname:
        raise SandboxError(
            f"source {source.repo!r} can't be used by the Kubernetes backend: pods clone the repository "
            "themselves, so give a git URL they can reach (https://, http://, ssh://, git:// or git@host:path), "
            "not a local path; push the repository somewhere reachable or use the local backend",
            reason="SourceNotSupported")
    try:
        return parts.port or GIT_PORTS[parts.scheme]
    except ValueError:
        raise SandboxError(f"source {source.repo!r} has an invalid port", reason="InvalidSource") from None


@dataclass(frozen=True)
class PackageProxy:
    """The in-cluster package index proxy of ``DEVART_K8S_PACKAGE_PROXY``: its simple index URL, host and port."""

    url: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str | None) -> PackageProxy:
        """Read the setting; refuses (for good: retrying can't help) when it is unset or not an http(s) URL."""
        if not url:
            raise SandboxError("this stage asks for 'network: packages', and the Kubernetes backend has no package "
                               "index proxy to give it: set DEVART_K8S_PACKAGE_PROXY to the URL of an in-cluster "
                               "index proxy (its pods labelled devart.dev/package-index=true), or use "
                               "'network: egress'", reason="PackageIndexUnavailable")
        parts = urlsplit(url.strip())
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            port = 0
        if parts.scheme not in ("http", "https") or not parts.hostname or not port:
            raise SandboxError(f"DEVART_K8S_PACKAGE_PROXY={url!r} is not an http(s) URL of a package index proxy",
                               reason="PackageIndexUnavailable")
        path = parts.path.rstrip("/") or "/simple"
        return cls(url=f"{parts.scheme}://{parts.netloc}{path}", host=parts.hostname, port=port)

    def environment(self) -> dict[str, str]:
        """The uv/pip variables of a packages-mode command; pip trusts the proxy when it speaks plain http."""
        variables = package_environment(self.url)
        if self.url.startswith("http://"):
            variables["PIP_TRUSTED_HOST"] = self.host
        return variables

    def peer(self) -> dict[str, Any]:
        """The NetworkPolicy peer the proxy is: its IP address, or its labelled pods in any namespace."""
        try:
            address = ipaddress.ip_address(self.host)
        except ValueError:
            return {"namespaceSelector": {}, "podSelector": {"matchLabels": {PACKAGE_INDEX_LABEL: "true"}}}
        return {"ipBlock": {"cidr": f"{address}/{address.max_prefixlen}"}}


def check_env_names(names: list[str]) -> None:
    """Refuse variable names Kubernetes or ``env`` would reject or misread (a leading '-' is an option)."""
    for name in names:
        if not _ENV_NAME.match(name):
            raise SandboxError(f"invalid environment variable name {name!r}: use letters, digits, '_', '.' or "
                               "'-', not starting with a digit, '.' or '-'", reason="InvalidEnvironment")


def deadline_seconds(spec: SandboxSpec, cfg: KubernetesSettings) -> int:
    """The pod's ``activeDeadlineSeconds``: start-up, one full command timeout and the configured margin."""
    return math.ceil(cfg.ready_timeout + spec.timeout.total_seconds()) + cfg.deadline_margin


def labels(sb: Sandbox) -> dict[str, str]:
    return {MANAGED_BY: "devart", SANDBOX_LABEL: sb.id, RUN_LABEL: label_value(sb.run_id),
            STAGE_LABEL: label_value(sb.stage)}


def metadata(sb: Sandbox, cfg: KubernetesSettings, name: str | None = None) -> dict[str, Any]:
    return {
        "name": name or sb.id, "namespace": cfg.namespace, "labels": labels(sb),
        "annotations": {RUN_ANNOTATION: sb.run_id, STAGE_LABEL: sb.stage, CREATED_ANNOTATION: sb.created.isoformat(),
                        TTL_ANNOTATION: str(deadline_seconds(sb.spec, cfg)),
                        SPEC_ANNOTATION: sb.spec.model_dump_json()},
    }


def _resources(spec: SandboxSpec) -> dict[str, Any]:
    amounts = {"cpu": f"{max(1, round(spec.cpu * 1000))}m", "memory": f"{spec.memory_mb}Mi",
               "ephemeral-storage": f"{spec.disk_mb}Mi"}
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _container_security(cfg: KubernetesSettings) -> dict[str, Any]:
    return {
        "runAsNonRoot": True, "runAsUser": cfg.run_as_user, "runAsGroup": cfg.run_as_user,
        "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False, "privileged": False,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod(sb: Sandbox, cfg: KubernetesSettings) -> dict[str, Any]:
    """The sandbox Pod: a hardened keepalive container over an emptyDir workspace the init container fills."""
    mounts = [{"name": "workspace", "mountPath": WORKSPACE}, {"name": "home", "mountPath": HOME},
              {"name": "tmp", "mountPath": "/tmp"}]
    variables = PackageProxy.parse(cfg.package_proxy).environment() if sb.spec.network == "packages" else {}
    variables.update(sb.spec.env)  # the stage's own variables may adjust the package ones
    env = [{"name": "HOME", "value": HOME}, *({"name": k, "value": v} for k, v in variables.items()),
           *({"name": k, "valueFrom": {"secretKeyRef": {"name": sb.id, "key": k}}} for k in sorted(sb.secret_values))]
    checkout = {
        "name": "checkout", "image": cfg.git_image, "command": ["sh", "-c", CHECKOUT],
        "env": [{"name": "HOME", "value": "/tmp"}, {"name": "DEVART_REPO", "value": sb.source.repo.strip()},
                {"name": "DEVART_REF", "value": (sb.source.ref or "").strip()},
                {"name": "GIT_TERMINAL_PROMPT", "value": "0"},
                {"name": "GIT_SSH_COMMAND", "value": "ssh -o BatchMode=yes"}],
        "resources": _resources(sb.spec), "securityContext": _container_security(cfg), "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    main = {
        "name": CONTAINER, "image": sb.spec.image or cfg.image, "command": ["sh", "-c", KEEPALIVE],
        "workingDir": WORKSPACE, "env": env, "resources": _resources(sb.spec),
        "securityContext": _container_security(cfg), "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    size = f"{sb.spec.disk_mb}Mi"
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": deadline_seconds(sb.spec, cfg),
        "terminationGracePeriodSeconds": 1,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,  # no environment variables describing the cluster's services
        "hostNetwork": False, "hostPID": False, "hostIPC": False,
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": cfg.run_as_user, "runAsGroup": cfg.run_as_user,
            "fsGroup": cfg.run_as_user, "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": [checkout],
        "containers": [main],
        "volumes": [{"name": name, "emptyDir": {"sizeLimit": size}} for name in ("workspace", "home", "tmp")],
    }
    if cfg.service_account:
        spec["serviceAccountName"] = cfg.service_account
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata(sb, cfg), "spec": spec}


def _dns() -> dict[str, Any]:
    return {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}


def _anywhere(blocked: list[str]) -> list[dict[str, Any]]:
    """ipBlocks for all of IPv4 and IPv6 except ``blocked`` (each ``except`` must lie in its block's family)."""
    nets = dict.fromkeys(ipaddress.ip_network(cidr, strict=False) for cidr in blocked)
    v4 = [str(n) for n in nets if n.version == 4]
    v6 = [str(n) for n in nets if n.version == 6]
    return [{"ipBlock": {"cidr": "0.0.0.0/0", **({"except": v4} if v4 else {})}},
            {"ipBlock": {"cidr": "::/0", **({"except": v6} if v6 else {})}}]


def network_policy(sb: Sandbox, cfg: KubernetesSettings) -> dict[str, Any]:
    """Ingress denied always; egress denied (``network: none``), open to DNS and public addresses only
    (``network: egress``: all but ``PRIVATE_RANGES`` and ``cfg.egress_except``), or only to DNS and the package
    index proxy (``network: packages``)."""
    egress: list[dict[str, Any]] = []
    if sb.spec.network == "egress":
        egress = [_dns(), {"to": _anywhere([*PRIVATE_RANGES, *cfg.egress_except])}]
    elif sb.spec.network == "packages":
        proxy = PackageProxy.parse(cfg.package_proxy)
        egress = [_dns(), {"to": [proxy.peer()], "ports": [{"protocol": "TCP", "port": proxy.port}]}]
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": metadata(sb, cfg),
        "spec": {"podSelector": {"matchLabels": {SANDBOX_LABEL: sb.id}}, "policyTypes": ["Ingress", "Egress"],
                 "ingress": [], "egress": egress},
    }


def checkout_policy_name(sandbox: str) -> str:
    return f"{sandbox}-checkout"


def checkout_policy(sb: Sandbox, cfg: KubernetesSettings) -> dict[str, Any]:
    """While the pod starts: DNS and the git server's port, so the init container can clone. Deleted after."""
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": metadata(sb, cfg, checkout_policy_name(sb.id)),
        "spec": {"podSelector": {"matchLabels": {SANDBOX_LABEL: sb.id}}, "policyTypes": ["Egress"],
                 "egress": [_dns(), {"ports": [{"protocol": "TCP", "port": sb.git_port}]}]},
    }


def secret(sb: Sandbox, cfg: KubernetesSettings) -> dict[str, Any]:
    """The stage's secret values, referenced by the pod's environment (never written into the pod spec)."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": metadata(sb, cfg),
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in sb.secret_values.items()}}
