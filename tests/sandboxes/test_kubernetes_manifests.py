"""The Kubernetes backend's manifests: valid against the official schemas, and carrying every hardening field."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import kubernetes_validate
import pytest

from devart.core.contracts import SandboxSpec, Source
from devart.core.errors import SandboxError
from devart.core.settings import KubernetesSettings
from devart.sandboxes import k8s_manifests as m

#: The oldest Kubernetes minor still commonly run, and the newest the validator ships.
VERSIONS = ["1.29", kubernetes_validate.latest_version()]
REPO = Source(repo="https://git.example.com/team/app.git", ref="main")


@pytest.fixture
def cfg() -> KubernetesSettings:
    return KubernetesSettings(namespace="devart-test", service_account="sandbox-runner")


def sandbox(spec: SandboxSpec | None = None, secrets: dict[str, str] | None = None,
            source: Source = REPO) -> m.Sandbox:
    return m.Sandbox(id=m.sandbox_id("3f2a9c1e-77aa-4b1c-9e0f-1234567890ab", "unit-tests"),
                     run_id="3f2a9c1e-77aa-4b1c-9e0f-1234567890ab", stage="unit-tests", source=source,
                     spec=spec or SandboxSpec(cpu=1.5, memory_mb=768, disk_mb=4096, timeout=timedelta(minutes=20),
                                              env={"CI": "true"}),
                     created=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), git_port=m.git_port(source),
                     secret_values=secrets or {})


#: An in-cluster package index proxy, by service name and by address.
PROXY = "http://devart-index.devart.svc:3141"
PROXY_IP = "http://10.96.0.42:8080/root/pypi/+simple/"


def all_manifests(cfg: KubernetesSettings) -> list[dict[str, Any]]:
    closed = sandbox(secrets={"API_TOKEN": "s3cret"})
    open_ = sandbox(SandboxSpec(network="egress"))
    packages = sandbox(SandboxSpec(network="packages", env={"CI": "true"}))
    by_name, by_ip = cfg.model_copy(update={"package_proxy": PROXY}), cfg.model_copy(update={"package_proxy": PROXY_IP})
    return [m.pod(closed, cfg), m.network_policy(closed, cfg), m.network_policy(open_, cfg),
            m.checkout_policy(closed, cfg), m.secret(closed, cfg), m.pod(open_, cfg),
            m.pod(packages, by_name), m.network_policy(packages, by_name), m.network_policy(packages, by_ip)]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_passes_strict_schema_validation(cfg: KubernetesSettings, version: str) -> None:
    for manifest in all_manifests(cfg):
        kubernetes_validate.validate(manifest, desired_version=version, strict=True)


def test_a_misspelt_field_fails_strict_validation(cfg: KubernetesSettings) -> None:
    """The validator really checks: strict mode refuses a field Kubernetes doesn't know."""
    manifest = m.pod(sandbox(), cfg)
    manifest["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesytem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, desired_version=VERSIONS[-1], strict=True)


def test_pod_level_hardening(cfg: KubernetesSettings) -> None:
    spec = m.pod(sandbox(), cfg)["spec"]
    pod_security = spec["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] == 10001
    assert pod_security["runAsGroup"] == 10001
    assert pod_security["fsGroup"] == 10001
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert spec["hostNetwork"] is False and spec["hostPID"] is False and spec["hostIPC"] is False
    assert spec["restartPolicy"] == "Never"
    assert spec["serviceAccountName"] == "sandbox-runner"
    # 120 s to start + one 20 min command + the 300 s margin
    assert spec["activeDeadlineSeconds"] == 120 + 1200 + 300


@pytest.mark.parametrize("index", [0, 1], ids=["checkout", "sandbox"])
def test_container_hardening(cfg: KubernetesSettings, index: int) -> None:
    spec = m.pod(sandbox(), cfg)["spec"]
    container = [*spec["initContainers"], *spec["containers"]][index]
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 10001
    assert security["runAsGroup"] == 10001
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["privileged"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    amounts = {"cpu": "1500m", "memory": "768Mi", "ephemeral-storage": "4096Mi"}
    assert container["resources"] == {"requests": amounts, "limits": amounts}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    assert mounts == {"/workspace": "workspace", "/home/sandbox": "home", "/tmp": "tmp"}


def test_workspace_home_and_tmp_are_size_limited_empty_dirs_and_nothing_of_the_host(cfg: KubernetesSettings) -> None:
    spec = m.pod(sandbox(), cfg)["spec"]
    # Only the three writable places a read-only root filesystem leaves, each of disk_mb, on the node's disk
    assert spec["volumes"] == [{"name": name, "emptyDir": {"sizeLimit": "4096Mi"}} for name in ("workspace", "home",
                                                                                              "tmp")]
    assert "hostPath" not in repr(spec) and "hostAliases" not in spec
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["HOME"] == "/home/sandbox"


def test_containers_images_commands_and_environment(cfg: KubernetesSettings) -> None:
    sb = sandbox(secrets={"API_TOKEN": "s3cret"})
    spec = m.pod(sb, cfg)["spec"]
    checkout, main = spec["initContainers"][0], spec["containers"][0]
    assert checkout["image"] == "alpine/git:2.47.2"
    env = {e["name"]: e.get("value") for e in checkout["env"]}
    assert env["DEVART_REPO"] == REPO.repo and env["DEVART_REF"] == "main"  # data, never part of the script
    assert REPO.repo not in checkout["command"][2]
    assert main["image"] == "python:3.11-slim"
    assert main["workingDir"] == "/workspace"
    assert main["command"] == ["sh", "-c", m.KEEPALIVE]
    variables = {e["name"]: e for e in main["env"]}
    assert variables["CI"] == {"name": "CI", "value": "true"}
    assert variables["API_TOKEN"] == {"name": "API_TOKEN",
                                      "valueFrom": {"secretKeyRef": {"name": sb.id, "key": "API_TOKEN"}}}
    assert "s3cret" not in repr(m.pod(sb, cfg))  # the value lives in the Secret only
    assert m.secret(sb, cfg)["data"] == {"API_TOKEN": base64.b64encode(b"s3cret").decode()}


def test_an_empty_image_falls_back_to_the_configured_default(cfg: KubernetesSettings) -> None:
    pod = m.pod(sandbox(SandboxSpec(image="")), cfg)
    assert pod["spec"]["containers"][0]["image"] == cfg.image


def test_labels_and_annotations(cfg: KubernetesSettings) -> None:
    sb = sandbox(secrets={"API_TOKEN": "s3cret"})
    for manifest in (m.pod(sb, cfg), m.network_policy(sb, cfg), m.checkout_policy(sb, cfg), m.secret(sb, cfg)):
        meta = manifest["metadata"]
        assert meta["namespace"] == "devart-test"
        assert meta["labels"] == {"app.kubernetes.io/managed-by": "devart", "devart.dev/sandbox": sb.id,
                                  "devart.dev/run": "3f2a9c1e-77aa-4b1c-9e0f-1234567890ab",
                                  "devart.dev/stage": "unit-tests"}
        notes = meta["annotations"]
        assert notes["devart.dev/run-id"] == sb.run_id
        assert notes["devart.dev/created"] == "2026-01-02T03:04:05+00:00"
        assert notes["devart.dev/ttl-seconds"] == str(120 + 1200 + 300)
        assert SandboxSpec.model_validate_json(notes["devart.dev/spec"]) == sb.spec
    assert m.pod(sb, cfg)["metadata"]["name"] == sb.id


def test_policy_denies_all_traffic_unless_the_stage_asks_for_egress(cfg: KubernetesSettings) -> None:
    sb = sandbox()
    closed = m.network_policy(sb, cfg)["spec"]
    assert closed["podSelector"] == {"matchLabels": {"devart.dev/sandbox": sb.id}}
    assert closed["policyTypes"] == ["Ingress", "Egress"]
    assert closed["ingress"] == [] and closed["egress"] == []  # selected, with no rule: nothing allowed

    opened = m.network_policy(sandbox(SandboxSpec(network="egress")), cfg)["spec"]
    assert opened["ingress"] == []
    rules = opened["egress"]
    assert {"protocol": "UDP", "port": 53} in rules[0]["ports"]
    assert len(rules) == 2 and "ports" not in rules[1]
    blocks = [peer["ipBlock"] for peer in rules[1]["to"]]
    assert blocks[0]["cidr"] == "0.0.0.0/0" and "169.254.0.0/16" in blocks[0]["except"]  # cloud metadata
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8"} <= set(blocks[0]["except"])
    assert blocks[1]["cidr"] == "::/0" and {"fe80::/10", "fc00::/7", "::1/128"} <= set(blocks[1]["except"])
    assert len(blocks[0]["except"]) == len(set(blocks[0]["except"]))  # the settings' defaults repeat some


def test_egress_except_adds_the_clusters_ranges_to_the_private_ones() -> None:
    # A cluster whose pods and services use public addresses lists them; the private ranges stay closed anyway
    cfg = KubernetesSettings(egress_except=["203.0.113.0/24", "2001:db8::/32"])
    blocks = [peer["ipBlock"] for peer in m.network_policy(sandbox(SandboxSpec(network="egress")), cfg)["spec"]
              ["egress"][1]["to"]]
    assert blocks[0]["except"] == [*(c for c in m.PRIVATE_RANGES if ":" not in c), "203.0.113.0/24"]
    assert blocks[1]["except"] == [*(c for c in m.PRIVATE_RANGES if ":" in c), "2001:db8::/32"]
    emptied = m.network_policy(sandbox(SandboxSpec(network="egress")), KubernetesSettings(egress_except=[]))
    assert "10.0.0.0/8" in emptied["spec"]["egress"][1]["to"][0]["ipBlock"]["except"]


def test_a_packages_stage_reaches_only_dns_and_the_package_index_proxy(cfg: KubernetesSettings) -> None:
    sb = sandbox(SandboxSpec(network="packages"))
    rules = m.network_policy(sb, cfg.model_copy(update={"package_proxy": PROXY}))["spec"]["egress"]
    proxy_pods = {"namespaceSelector": {}, "podSelector": {"matchLabels": {m.PACKAGE_INDEX_LABEL: "true"}}}
    assert rules == [{"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
                     {"to": [proxy_pods], "ports": [{"protocol": "TCP", "port": 3141}]}]
    by_ip = m.network_policy(sb, cfg.model_copy(update={"package_proxy": PROXY_IP}))["spec"]["egress"]
    assert by_ip[1] == {"to": [{"ipBlock": {"cidr": "10.96.0.42/32"}}], "ports": [{"protocol": "TCP", "port": 8080}]}


def test_a_packages_stage_points_uv_and_pip_at_the_proxy(cfg: KubernetesSettings) -> None:
    sb = sandbox(SandboxSpec(network="packages", env={"UV_NO_CONFIG": "0"}))
    env = m.pod(sb, cfg.model_copy(update={"package_proxy": PROXY}))["spec"]["containers"][0]["env"]
    values = {item["name"]: item["value"] for item in env}
    simple = "http://devart-index.devart.svc:3141/simple"
    assert values["UV_DEFAULT_INDEX"] == values["UV_INDEX_URL"] == values["PIP_INDEX_URL"] == simple
    assert values["PIP_CONFIG_FILE"] == "/dev/null" and values["PIP_TRUSTED_HOST"] == "devart-index.devart.svc"
    assert values["UV_NO_CONFIG"] == "0"  # the stage's own variables win
    ip_env = m.pod(sb, cfg.model_copy(update={"package_proxy": PROXY_IP}))["spec"]["containers"][0]["env"]
    assert {item["name"]: item["value"] for item in ip_env}["PIP_INDEX_URL"] == "http://10.96.0.42:8080/root/pypi/+simple"
    closed = {item["name"] for item in m.pod(sandbox(), cfg)["spec"]["containers"][0]["env"]}
    assert not closed & {"UV_DEFAULT_INDEX", "PIP_INDEX_URL", "PIP_CONFIG_FILE"}


@pytest.mark.parametrize("proxy", [None, "", "devart-index:3141", "ftp://devart-index/simple", "http://:80/"])
def test_a_packages_stage_without_a_usable_proxy_is_refused_for_good(cfg: KubernetesSettings,
                                                                      proxy: str | None) -> None:
    sb = sandbox(SandboxSpec(network="packages"))
    configured = cfg.model_copy(update={"package_proxy": proxy})
    for build in (m.network_policy, m.pod):
        with pytest.raises(SandboxError) as caught:
            build(sb, configured)
        assert caught.value.reason == "PackageIndexUnavailable" and not caught.value.retryable
        assert "DEVART_K8S_PACKAGE_PROXY" in str(caught.value)


@pytest.mark.parametrize(("repo", "port"), [
    ("https://git.example.com/a.git", 443), ("http://git.example.com:3000/a.git", 3000),
    ("ssh://git@git.example.com/a.git", 22), ("git@github.com:owner/repo.git", 22), ("git://example.com/a", 9418),
])
def test_checkout_policy_opens_only_dns_and_the_git_port(cfg: KubernetesSettings, repo: str, port: int) -> None:
    sb = sandbox(source=Source(repo=repo))
    policy = m.checkout_policy(sb, cfg)
    assert policy["metadata"]["name"] == f"{sb.id}-checkout"
    assert policy["spec"]["policyTypes"] == ["Egress"]
    assert policy["spec"]["egress"][1] == {"ports": [{"protocol": "TCP", "port": port}]}
    assert "ingress" not in policy["spec"]


@pytest.mark.parametrize("repo", ["/home/me/project", "./project", "file:///srv/git/app.git", "https:///nohost"])
def test_sources_a_pod_cannot_clone_are_refused(repo: str) -> None:
    with pytest.raises(SandboxError) as caught:
        m.git_port(Source(repo=repo))
    assert caught.value.retryable is False
    assert caught.value.reason == "SourceNotSupported"
    assert "git URL" in str(caught.value)


def test_a_ref_looking_like_an_option_is_refused() -> None:
    with pytest.raises(SandboxError, match="invalid git ref"):
        m.git_port(Source(repo="https://example.com/a.git", ref="--upload-pack=evil"))


def test_sandbox_ids_are_dns_labels() -> None:
    ident = m.sandbox_id("RUN_42/Ü", "Build & Test " * 10)
    assert ident.startswith("devart-run42-build-test-") and len(ident) <= 63
    assert ident == ident.lower() and all(c.isalnum() or c == "-" for c in ident)
    assert m.sandbox_id("r", "s") != m.sandbox_id("r", "s")


def test_label_values_are_valid() -> None:
    assert m.label_value("-run:42/x-") == "run-42-x"
    assert len(m.label_value("a" * 100)) == 63


@pytest.mark.parametrize("name", ["-e", "1X", "A=B", "", "has space"])
def test_invalid_variable_names_are_refused(name: str) -> None:
    with pytest.raises(SandboxError, match="invalid environment variable name"):
        m.check_env_names([name])
