"""Settings of where agent work runs: the sandbox backend, the package index, Kubernetes, and allowed sources.

Split from ``core/settings.py``, which re-exports every name here (``settings.k8s()`` and
``from devart.core.settings import KubernetesSettings`` keep working): these are read by the sandboxes and the
agents' index proxy only, while the rest configure the services of the stack.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings

from devart.core.settings_base import env_config as _config


class SandboxSettings(BaseSettings):
    """Which sandbox backend runs agent tasks."""

    model_config = _config("DEVART_SANDBOX_")
    backend: Literal["local", "kubernetes"] = Field(default="local", description="Sandbox backend.")
    root: Path | None = Field(default=None, description="Folder of local sandboxes (default: <home>/sandboxes).")
    isolation: Literal["bubblewrap", "none"] = Field(
        default="bubblewrap", description="Local isolation; 'none' runs untrusted code unisolated."
    )


class PackageIndexSettings(BaseSettings):
    """The package index a ``network: packages`` stage may reach, through the agent's caching index proxy."""

    model_config = _config("DEVART_PACKAGE_INDEX_")
    url: str = Field(default="https://pypi.org/simple", description="Upstream simple index (PEP 503/691).")
    files_url: str = Field(
        default="https://files.pythonhosted.org",
        description="Upstream host of the index's files; their links are rewritten to go through the proxy.",
    )
    cache: Path | None = Field(
        default=None, description="Shared cache of index files and pages (default: <home>/cache/packages)."
    )
    page_ttl: float = Field(
        default=300.0, ge=0, description="Seconds an index page is served from cache before it is fetched again."
    )


class KubernetesSettings(BaseSettings):
    """The Kubernetes sandbox backend: where sandbox pods run and how they are built."""

    model_config = _config("DEVART_K8S_")
    namespace: str = Field(default="devart-sandboxes", description="Namespace holding sandbox pods (must exist).")
    image: str = Field(default="python:3.11-slim", description="Image of a stage that names none.")
    service_account: str = Field(default="", description="Service account of sandbox pods ('' = the default one).")
    kubeconfig: Path | None = Field(default=None, description="Kubeconfig file (default: $KUBECONFIG or ~/.kube).")
    in_cluster: bool = Field(default=False, description="Use the pod's service account instead of a kubeconfig.")
    context: str | None = Field(default=None, description="Kubeconfig context (default: the current one).")
    git_image: str = Field(default="alpine/git:2.47.2", description="Image of the init container that clones.")
    run_as_user: int = Field(default=10001, ge=1, description="Non-root uid (and gid) sandbox containers run as.")
    ready_timeout: float = Field(default=120.0, gt=0, description="Seconds a pod may take to start running.")
    deadline_margin: int = Field(
        default=300, ge=0, description="Seconds a pod may live beyond ready_timeout + the stage's command timeout."
    )
    egress_except: list[str] = Field(
        default_factory=lambda: ["169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                 "100.64.0.0/10", "fc00::/7", "fe80::/10"],
        description="CIDRs a 'network: egress' stage still can't reach (cloud metadata, cluster-private ranges); "
        "DNS stays allowed. '[]' allows all egress.",
    )
    package_proxy: str | None = Field(
        default=None,
        description="URL of an in-cluster package index proxy (e.g. http://devart-index.devart:3141); a "
        "'network: packages' stage may reach only it (and DNS). Unset: such stages are refused.",
    )



class SourceSettings(BaseSettings):
    """Where a run's source may be fetched from (``sandboxes/source_hosts.py``)."""

    model_config = _config("DEVART_SOURCE_")
    allowed_hosts: str = Field(
        default="",
        description="Host names or CIDRs (comma-separated) a source URL may reach although they are loopback, "
        "private, link-local or this host's own: an operator's internal git server.",
    )
    local_roots: str = Field(
        default="",
        description="Folders (comma-separated, absolute) a run's local repository may lie in; unset: the project "
        "devart's state folder belongs to (the folder holding .devart), so its examples too.",
    )

    def roots(self, state_root: Path) -> list[Path]:
        """The folders local sources may come from, resolved (links followed, as a source path will be)."""
        listed = [Path(p.strip()) for p in self.local_roots.split(",") if p.strip()]
        return [p.resolve() for p in listed] or [state_root.parent]


@lru_cache
def source() -> SourceSettings:
    return SourceSettings()


@lru_cache
def sandbox() -> SandboxSettings:
    return SandboxSettings()


@lru_cache
def package_index() -> PackageIndexSettings:
    return PackageIndexSettings()


@lru_cache
def k8s() -> KubernetesSettings:
    return KubernetesSettings()



class SecretSettings(BaseSettings):
    """Which of an agent's environment variables a stage may take as secrets (``secrets: {NAME: env:VAR}``).

    A pipeline is data anyone who may publish one writes; without this list, a stage could name any variable of the
    agent's environment (its own API key included) and send it out through a ``network: egress`` command.
    """

    model_config = _config("DEVART_SECRETS_")
    allowed: str = Field(
        default="",
        description="Names of the agents' environment variables stages may use as secrets, comma-separated; any "
        "other reference is refused when a pipeline is validated, and again before a command runs.",
    )
    key: str | None = Field(
        default=None,
        description="Fernet key encrypting the organisation's secret store at rest (`devart secrets keygen` makes "
        "one). Unset: the local stack keeps a generated one in the state folder (file secrets-key); a deployment "
        "whose database password is configured must set it.",
    )

    def names(self) -> frozenset[str]:
        return frozenset(n.strip() for n in self.allowed.split(",") if n.strip())


def secret_sources() -> frozenset[str]:
    """Read at each use, not cached: a list widened or narrowed applies to the next validation and command."""
    return SecretSettings().names()
