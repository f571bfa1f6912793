"""Choose the sandbox backend from settings."""

from __future__ import annotations

from functools import lru_cache

from core import settings
from sandboxes.base import Sandbox


@lru_cache
def get_sandbox() -> Sandbox:
    """The configured backend; raises ``SandboxUnavailable`` with a fix when it cannot run here."""
    cfg = settings.sandbox()
    if cfg.backend == "kubernetes":
        from sandboxes.kubernetes import KubernetesSandbox

        return KubernetesSandbox(settings.k8s())
    from sandboxes.local import LocalSandbox

    root = cfg.root or settings.state().root / "sandboxes"
    return LocalSandbox(root.expanduser().resolve(), isolation=cfg.isolation)
