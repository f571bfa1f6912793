"""The Kubernetes backend's blocking calls to the API server; ``KubernetesSandbox`` runs each in a worker thread.

Objects are sent and read as plain JSON dicts (``_preload_content=False``), never through the client's models:
the manifests are built and schema-checked as dicts, and a pod's status is classified as the API returns it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, config
from kubernetes.client import ApiClient, Configuration
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import stream
from urllib3.exceptions import HTTPError

from devart.core.contracts import SandboxHandle, SandboxSpec
from devart.core.errors import SandboxUnavailable
from devart.core.settings import KubernetesSettings
from devart.sandboxes import k8s_manifests as m
from devart.sandboxes.k8s_errors import api_error, exec_refused
from devart.sandboxes.k8s_exec import Streamed, pump

#: Errors of the API client: HTTP answers, and connections that failed before any answer.
CLIENT_ERRORS = (ApiException, HTTPError, OSError)
#: A sandbox id is a DNS label: the name of its pod, policy and secret, and a label value.
VALID_ID = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class SandboxApi:
    """Create, read, delete and exec in sandbox objects of one namespace. Thread-safe; every call blocks.

    Args:
        settings: the namespace, and how to reach the cluster.
        configuration: a ready client configuration; otherwise one is loaded from ``settings`` on first use.
    """

    def __init__(self, settings: KubernetesSettings, configuration: Configuration | None = None) -> None:
        self.settings = settings
        self.namespace = settings.namespace
        self._configuration = configuration
        self._client: ApiClient | None = None
        self._lock = threading.RLock()

    def configuration(self) -> Configuration:
        with self._lock:
            if self._configuration is None:
                self._configuration = self._load_config()
            return self._configuration

    def _load_config(self) -> Configuration:
        cfg = Configuration()
        try:
            if self.settings.in_cluster:
                config.load_incluster_config(client_configuration=cfg)
            else:
                path = self.settings.kubeconfig
                config.load_kube_config(config_file=str(path.expanduser()) if path else None,
                                        context=self.settings.context, client_configuration=cfg, persist_config=False)
        except Exception as exc:  # ConfigException, a missing file, a broken exec plugin …
            raise SandboxUnavailable(
                f"the Kubernetes sandbox backend can't load its cluster configuration ({exc}): set KUBECONFIG or "
                "DEVART_K8S_KUBECONFIG (and DEVART_K8S_CONTEXT), or DEVART_K8S_IN_CLUSTER=true when devart runs "
                "in a pod, or choose DEVART_SANDBOX_BACKEND=local") from exc
        return cfg

    def _api(self) -> ApiClient:
        with self._lock:
            if self._client is None:
                self._client = ApiClient(self.configuration())
            return self._client

    def _operation(self, verb: str, kind: str) -> Callable[..., Any]:
        core, net = client.CoreV1Api(self._api()), client.NetworkingV1Api(self._api())
        target = {"Pod": (core, "pod"), "Secret": (core, "secret"), "NetworkPolicy": (net, "network_policy")}[kind]
        return getattr(target[0], f"{verb}_namespaced_{target[1]}")  # type: ignore[no-any-return]

    def create(self, manifest: dict[str, Any]) -> None:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        try:
            self._operation("create", kind)(self.namespace, manifest, _preload_content=False)
        except CLIENT_ERRORS as exc:
            raise api_error(exc, f"creating {kind} {name} in namespace {self.namespace!r}") from exc

    def create_all(self, manifests: list[dict[str, Any]]) -> None:
        for manifest in manifests:
            self.create(manifest)

    def delete(self, kind: str, name: str) -> None:
        """Delete one object at once (no grace period); one that is already gone is fine."""
        try:
            self._operation("delete", kind)(name, self.namespace, grace_period_seconds=0,
                                            propagation_policy="Background", _preload_content=False)
        except CLIENT_ERRORS as exc:
            if not (isinstance(exc, ApiException) and exc.status == 404):
                raise api_error(exc, f"deleting {kind} {name} in namespace {self.namespace!r}") from exc

    def remove(self, sandbox: str) -> None:
        """Delete every object of a sandbox; the pod first, so its policies hold until its code is gone."""
        for kind, name in (("Pod", sandbox), ("Secret", sandbox), ("NetworkPolicy", m.checkout_policy_name(sandbox)),
                           ("NetworkPolicy", sandbox)):
            self.delete(kind, name)

    def read_pod(self, name: str) -> dict[str, Any] | None:
        """The pod as JSON, or None when it does not exist."""
        try:
            response = self._operation("read", "Pod")(name, self.namespace, _preload_content=False)
        except CLIENT_ERRORS as exc:
            if isinstance(exc, ApiException) and exc.status == 404:
                return None
            raise api_error(exc, f"reading pod {name}") from exc
        return dict(json.loads(response.data))

    def secret_values(self, name: str) -> list[str]:
        """The values in a sandbox's Secret (to redact them from output); none when it has no Secret."""
        try:
            response = self._operation("read", "Secret")(name, self.namespace, _preload_content=False)
        except CLIENT_ERRORS as exc:
            if isinstance(exc, ApiException) and exc.status == 404:
                return []
            raise api_error(exc, f"reading secret {name}") from exc
        values = []
        for encoded in (json.loads(response.data).get("data") or {}).values():
            try:
                values.append(base64.b64decode(encoded).decode("utf-8", errors="replace"))
            except (binascii.Error, TypeError):
                continue
        return values

    def handles(self) -> list[SandboxHandle]:
        """A handle for every sandbox with any object left (a provision that died half-way leaves no pod)."""
        found: dict[str, SandboxHandle] = {}
        for kind in ("Pod", "Secret", "NetworkPolicy"):
            try:
                response = self._operation("list", kind)(self.namespace, label_selector=f"{m.MANAGED_BY}=devart",
                                                         _preload_content=False)
            except CLIENT_ERRORS as exc:
                raise api_error(exc, f"listing sandboxes in namespace {self.namespace!r}") from exc
            for item in json.loads(response.data).get("items") or []:
                meta = item.get("metadata") or {}
                labels, notes = meta.get("labels") or {}, meta.get("annotations") or {}
                sandbox = labels.get(m.SANDBOX_LABEL, "")
                if labels.get(m.MANAGED_BY) != "devart" or not VALID_ID.match(sandbox) or sandbox in found:
                    continue
                found[sandbox] = SandboxHandle(
                    backend="kubernetes", id=sandbox, run_id=notes.get(m.RUN_ANNOTATION, ""),
                    created_at=_timestamp(notes.get(m.CREATED_ANNOTATION) or meta.get("creationTimestamp")),
                    workspace=m.WORKSPACE, spec=_spec(notes.get(m.SPEC_ANNOTATION)))
        epoch = datetime.min.replace(tzinfo=UTC)
        return sorted(found.values(), key=lambda handle: handle.created_at or epoch)

    def stream(self, name: str, argv: list[str], deadline: float, stop: threading.Event,
               emit: Callable[[bytes], None]) -> Streamed:
        """Exec ``argv`` in the pod's sandbox container and pump its output until it ends (see ``k8s_exec.pump``)."""
        api = ApiClient(self.configuration())  # its own client: stream() swaps call_api on the client it is given
        try:
            try:
                ws = stream(client.CoreV1Api(api).connect_get_namespaced_pod_exec, name, self.namespace,
                            container=m.CONTAINER, command=argv, stdin=False, stdout=True, stderr=True, tty=False,
                            binary=True, _preload_content=False)
            except CLIENT_ERRORS as exc:
                raise exec_refused(exc, name) from exc
            return pump(ws, deadline=deadline, stop=stop, emit=emit)
        finally:
            api.close()


def _timestamp(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


def _spec(text: str | None) -> SandboxSpec:
    try:
        return SandboxSpec.model_validate_json(text) if text else SandboxSpec()
    except ValueError:
        return SandboxSpec()
