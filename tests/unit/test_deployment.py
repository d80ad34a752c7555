"""Docker, Compose and Kubernetes artefacts, checked statically (no engine here)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from wsrt.config import VARIABLES

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infrastructure" / "kubernetes" / "ws-realtime"
KNOWN = {v.name for v in VARIABLES}
K8S_VERSION = "1.30"


def tool(name: str) -> str:
    path = shutil.which(name) or str(Path(sys.executable).parent / name)
    assert Path(path).exists(), f"{name} is part of the test extra"
    return path


def ws_names(text: str) -> set[str]:
    return set(re.findall(r"\bWS_[A-Z0-9_]+\b", text))


def test_hadolint_passes_without_ignored_rules() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "hadolint ignore" not in dockerfile
    result = subprocess.run(
        [tool("hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_the_wheel_as_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(stages) == 2 and all(
        re.fullmatch(r"python:3\.11\.\d+-slim-\w+", s.split(" ")[0]) for s in stages
    )
    assert re.search(r"pip install [^\n]*\.whl", text)
    user = re.search(r"^USER (\S+)", text, re.M)
    assert user and not user.group(1).startswith(("root", "0"))
    for line in ("EXPOSE 8080", "STOPSIGNAL SIGTERM", 'ENTRYPOINT ["wsrt"]', 'CMD ["serve"]'):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    assert re.search(r'^HEALTHCHECK .*\n?.*CMD \["wsrt", "check"', text, re.M)
    assert (ROOT / ".dockerignore").read_text().count(".git") >= 1


def manifests() -> list[Path]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [K8S / name for name in kustomization["resources"]]


@pytest.mark.parametrize("path", manifests(), ids=lambda p: p.name)
def test_manifest_validates_against_the_kubernetes_schema(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def rendered() -> list[dict]:
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(K8S)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return list(yaml.safe_load_all(result.stdout))


def test_kustomization_renders_every_kind() -> None:
    docs = rendered()
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert sorted(d["kind"] for d in docs) == sorted(
        [
            "ConfigMap",
            "Secret",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "HorizontalPodAutoscaler",
        ]
    )
    assert {d["metadata"]["namespace"] for d in docs} == {"ws-realtime"}


def test_deployment_is_production_shaped() -> None:
    docs = {d["kind"]: d for d in rendered()}
    deployment, config = docs["Deployment"], docs["ConfigMap"]["data"]
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert deployment["spec"]["replicas"] == 2
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert {"requests", "limits"} <= container["resources"].keys()
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert (
        spec["terminationGracePeriodSeconds"]
        > float(config["WS_SHUTDOWN_TIMEOUT_SECONDS"]) + pre_stop
    )
    replica = next(e for e in container["env"] if e["name"] == "WS_REPLICA_ID")
    assert replica["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert (
        annotations["prometheus.io/scrape"] == "true"
        and annotations["prometheus.io/path"] == "/metrics"
    )
    assert spec["topologySpreadConstraints"]
    assert "WS_AUTH_SECRET" not in config  # the secret lives in the Secret only
    assert docs["Secret"]["stringData"].keys() == {"WS_AUTH_SECRET"}


def test_configmap_sets_every_non_secret_setting() -> None:
    config = yaml.safe_load((K8S / "configmap.yaml").read_text())["data"]
    secret_or_client = {
        "WS_AUTH_SECRET", "WS_KAFKA_SASL_USERNAME", "WS_KAFKA_SASL_PASSWORD", "WS_REPLICA_ID",
        "WS_KAFKA_SSL_CAFILE", "WS_KAFKA_SSL_CERTFILE", "WS_KAFKA_SSL_KEYFILE", "WS_URL", "WS_TOKEN",
        "WS_KAFKA_SASL_OAUTH_CLIENT_SECRET", "WS_SCHEMA_REGISTRY_PASSWORD",
    }  # fmt: skip
    assert set(config) == KNOWN - secret_or_client


def test_compose_parses_and_uses_known_settings() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "kafka-init", "ws-realtime", "demo-producer"} <= services.keys()
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["ws-realtime"]["build"] == "."
    assert services["demo-producer"]["profiles"] == ["demo"]
    assert services["demo-producer"]["command"][0] == "produce"
    depends = services["ws-realtime"]["depends_on"]["kafka-init"]["condition"]
    assert depends == "service_completed_successfully"
    for name in ("ws-realtime", "demo-producer"):
        assert set(services[name]["environment"]) <= KNOWN


def documented(path: Path) -> set[str]:
    """WS_* names in the first column of the Markdown configuration table."""
    return {
        m for row in re.findall(r"^\| `(WS_[A-Z0-9_]+)` \|", path.read_text(), re.M) for m in [row]
    }


def test_no_drift_between_config_and_docs() -> None:
    assert documented(ROOT / "RUNBOOK.md") == KNOWN
    assert documented(ROOT / "README.md") == KNOWN


def test_no_setting_in_the_artefacts_that_the_code_does_not_know() -> None:
    for path in [ROOT / "Dockerfile", ROOT / "docker-compose.yml", *K8S.glob("*.yaml")]:
        unknown = ws_names(path.read_text()) - KNOWN
        assert not unknown, f"{path.name}: {sorted(unknown)}"


def test_every_python_client_in_the_docs_lifts_the_frame_limit() -> None:
    """A client with websockets' default 1 MiB limit is closed by a 1 MiB record (1009)."""
    checked = 0
    for doc in (ROOT / "docs" / "protocol.md", ROOT / "README.md"):
        blocks = re.findall(r"^```python\n(.*?)^```", doc.read_text(), re.M | re.S)
        for block in blocks:
            for call in re.findall(r"websockets\.connect\((.*?)\) as", block, re.S):
                assert "max_size=" in call, f"{doc.name}: websockets.connect({call.strip()[:60]}…)"
                checked += 1
    assert checked >= 3
