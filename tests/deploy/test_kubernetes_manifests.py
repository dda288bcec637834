"""The example Kubernetes manifests in deploy/kubernetes: valid for the Kubernetes API with
`kubernetes-validate --strict` (it ships the schemas: no cluster, no network), and consistent with corral's
own settings as the Deployment's arguments set them (read by corral's own config loader)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from corral.config import load_config
from corral.master.arbiter import DRAIN_MARGIN

yaml = pytest.importorskip("yaml", reason="PyYAML comes with kubernetes-validate (the test extra)")

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
# Custom resources: their schemas come with their operators, which kubernetes-validate does not ship.
_CUSTOM_GROUPS = ("monitoring.coreos.com/",)


def documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((MANIFESTS / name).read_text()) if doc]


def manifest_files() -> list[Path]:
    return sorted(MANIFESTS.glob("*.yaml"))


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_every_manifest_passes_strict_kubernetes_validation(path: Path) -> None:
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed (pip install '.[test]')")
    if any(doc["apiVersion"].startswith(_CUSTOM_GROUPS) for doc in documents(path.name)):
        pytest.skip(f"{path.name} is a custom resource: kubernetes-validate has no schema for it")
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "--no-warn", str(path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_strict_validation_rejects_a_misspelt_field(tmp_path: Path) -> None:
    """The validation above proves something: an unknown property fails it."""
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed (pip install '.[test]')")
    bad = tmp_path / "bad.yaml"
    bad.write_text((MANIFESTS / "deployment.yaml").read_text().replace("failureThreshold: 30", "failureTreshold: 30"))
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0 and "failureTreshold" in result.stdout + result.stderr


def pod_spec() -> dict[str, Any]:
    (deployment,) = documents("deployment.yaml")
    return deployment["spec"]["template"]["spec"]


def container() -> dict[str, Any]:
    (app,) = pod_spec()["containers"]
    return app


def corral_config(tmp_path: Path) -> Any:
    """corral's effective settings for the container's command line and environment."""
    args = container()["args"]
    assert args[0] == "corral"
    environ = {item["name"]: item["value"] for item in container().get("env", [])}
    return load_config(args[1:], environ=environ, cwd=str(tmp_path))  # no config file in tmp_path


def test_termination_grace_period_outlasts_drain_delay_plus_graceful_timeout(tmp_path: Path) -> None:
    cfg = corral_config(tmp_path)
    # corral kills its own stragglers DRAIN_MARGIN after graceful_timeout: the kubelet must not before.
    assert pod_spec()["terminationGracePeriodSeconds"] > cfg.drain_delay + cfg.graceful_timeout + DRAIN_MARGIN


def test_drain_delay_outlasts_the_readiness_probe_noticing_the_drain(tmp_path: Path) -> None:
    cfg = corral_config(tmp_path)
    probe = container()["readinessProbe"]
    assert cfg.drain_delay > probe["periodSeconds"] * probe.get("failureThreshold", 3)
    assert "lifecycle" not in container(), "the drain delay is corral's, not a preStop sleep"


def test_probes_and_scrape_annotations_use_the_admin_endpoint(tmp_path: Path) -> None:
    cfg = corral_config(tmp_path)
    admin_port = int(cfg.admin_bind.rsplit(":", 1)[1])
    ports = {port["name"]: port["containerPort"] for port in container()["ports"]}
    assert ports["admin"] == admin_port
    assert ports["http"] == int(cfg.bind[0].rsplit(":", 1)[1])
    paths = {kind: container()[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert paths == {
        "startupProbe": {"path": "/readyz", "port": "admin"},
        "readinessProbe": {"path": "/readyz", "port": "admin"},
        "livenessProbe": {"path": "/livez", "port": "admin"},
    }
    (deployment,) = documents("deployment.yaml")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == admin_port
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_service_does_not_expose_the_admin_port() -> None:
    (service,) = documents("service.yaml")
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["http"]


def test_the_pod_runs_as_non_root_on_a_read_only_root_with_a_writable_tmp() -> None:
    pod, app = pod_spec(), container()
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert app["securityContext"]["readOnlyRootFilesystem"] is True
    assert app["securityContext"]["allowPrivilegeEscalation"] is False
    assert app["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # corral makes the app's metrics directory under TMPDIR (/tmp): it must be writable.
    mounts = {mount["mountPath"]: mount["name"] for mount in app["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert app["resources"]["limits"]["memory"] and app["resources"]["requests"]["cpu"]


def test_disruption_budget_and_autoscaler_select_the_deployment() -> None:
    (deployment,) = documents("deployment.yaml")
    (pdb,) = documents("pdb.yaml")
    (hpa,) = documents("hpa.yaml")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
