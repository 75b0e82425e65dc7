"""The Kubernetes manifests parse and fit together, and fit the app and the image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.test_container import FINAL, env_of, instructions

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"

# Read by the roles and assignments features; the API contract names them (section "Roles").
DOCUMENTED_SETTINGS = {
    "TENSORGRADE_INSTRUCTOR_KEYS",
    "TENSORGRADE_STUDENT_KEYS",
    "TENSORGRADE_VARIANT_SECRET",
}
OTHER_VARIABLES = {"PROMETHEUS_MULTIPROC_DIR"}  # read by prometheus-client (service/metrics.py)


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


MANIFESTS = {p.relative_to(K8S).as_posix(): load(p) for p in sorted(K8S.rglob("*.yaml"))}
BY_KIND: dict[str, list[dict[str, Any]]] = {}
for _docs in MANIFESTS.values():
    for _doc in _docs:
        BY_KIND.setdefault(_doc["kind"], []).append(_doc)
DEPLOYMENTS = {d["metadata"]["name"]: d for d in BY_KIND["Deployment"]}


def settings_variables() -> set[str]:
    prefix = Settings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in Settings.model_fields}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(only)


def configmap() -> dict[str, str]:
    (config,) = BY_KIND["ConfigMap"]
    return dict(config["data"])


def effective_env(deployment: dict[str, Any]) -> dict[str, str]:
    """What the container's environment holds: the ConfigMap, then its own ``env`` on top."""
    env = dict(configmap())
    env.update({e["name"]: e["value"] for e in container(deployment).get("env", [])})
    return env


def selected(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_every_manifest_parses_with_the_expected_kinds() -> None:
    assert set(MANIFESTS) == {
        "configmap.yaml",
        "deployment.yaml",
        "hpa.yaml",
        "pdb.yaml",
        "secret.yaml",
        "service.yaml",
        "gpu/deployment.yaml",
        "gpu/service.yaml",
    }
    assert {k: len(v) for k, v in BY_KIND.items()} == {
        "ConfigMap": 1,
        "Deployment": 2,
        "HorizontalPodAutoscaler": 1,
        "PodDisruptionBudget": 1,
        "Secret": 1,
        "Service": 2,
    }
    for docs in MANIFESTS.values():
        for doc in docs:
            assert doc["apiVersion"] and doc["metadata"]["name"]


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_selectors_select_their_pods_and_no_one_elses(name: str) -> None:
    deployment = DEPLOYMENTS[name]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selected(deployment["spec"]["selector"]["matchLabels"], labels)
    for other_name, other in DEPLOYMENTS.items():
        if other_name != name:  # two Deployments must never claim each other's pods
            other_labels = other["spec"]["template"]["metadata"]["labels"]
            assert not selected(deployment["spec"]["selector"]["matchLabels"], other_labels)
    services = [s for s in BY_KIND["Service"] if selected(s["spec"]["selector"], labels)]
    assert len(services) == 1, "exactly one Service reaches these pods"
    ports = {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}
    for port in services[0]["spec"]["ports"]:
        assert port["targetPort"] in ports
    assert ports["http"] == int(effective_env(deployment)["TENSORGRADE_PORT"])


def test_autoscaler_and_disruption_budget_target_the_cpu_deployment() -> None:
    (hpa,) = BY_KIND["HorizontalPodAutoscaler"]
    target = hpa["spec"]["scaleTargetRef"]
    assert target["kind"] == "Deployment" and target["name"] in DEPLOYMENTS
    deployment = DEPLOYMENTS[target["name"]]
    assert (
        hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    )
    (pdb,) = BY_KIND["PodDisruptionBudget"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selected(pdb["spec"]["selector"]["matchLabels"], labels)
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]  # drains can proceed


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_probes_hit_routes_the_app_serves(name: str, client: TestClient) -> None:
    paths = set(client.get("/openapi.json").json()["paths"])
    assert client.app.state.ready.wait(timeout=30)  # type: ignore[attr-defined]
    spec = container(DEPLOYMENTS[name])
    probes = {
        kind: spec[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    port_names = {p["name"] for p in spec["ports"]}
    for probe in probes.values():
        assert probe["path"] in paths and probe["port"] in port_names
        assert client.get(probe["path"]).status_code == 200
    annotations = DEPLOYMENTS[name]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] in paths


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_environment_names_are_ones_the_service_reads(name: str) -> None:
    known = settings_variables() | DOCUMENTED_SETTINGS | OTHER_VARIABLES
    (secret,) = BY_KIND["Secret"]
    assert set(secret["stringData"]) == DOCUMENTED_SETTINGS
    assert set(configmap()) <= known
    spec = container(DEPLOYMENTS[name])
    assert {e["name"] for e in spec.get("env", [])} <= known
    sources = {next(iter(s)): next(iter(s.values()))["name"] for s in spec["envFrom"]}
    assert sources == {
        "configMapRef": BY_KIND["ConfigMap"][0]["metadata"]["name"],
        "secretRef": secret["metadata"]["name"],
    }
    Settings.model_validate({k.removeprefix("TENSORGRADE_").lower(): v
                             for k, v in effective_env(DEPLOYMENTS[name]).items()
                             if k in settings_variables()})  # fmt: skip


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_cpu_matches_workers_times_torch_threads(name: str) -> None:
    env = effective_env(DEPLOYMENTS[name])
    cpus = int(env["TENSORGRADE_WORKERS"]) * int(env["TENSORGRADE_TORCH_THREADS"])
    resources = container(DEPLOYMENTS[name])["resources"]
    assert int(resources["requests"]["cpu"]) == int(resources["limits"]["cpu"]) == cpus
    assert resources["requests"]["memory"] == resources["limits"]["memory"]


# Resident memory measured on the CPU build (README, "Scaling out"), rounded up: the
# supervisor of several workers (no torch), an idle worker (CPU build; CUDA build with its
# CUDA context), and what one computation adds while it runs and its answer is written: about
# 120 bytes per element of the request, or 60 per output element or Jacobian entry, whichever
# is more (measured: 8M request elements +1,000 MiB; 16M output elements +930 MiB; half of
# each, +460 to +510 MiB).
SUPERVISOR_MIB = 64
IDLE_WORKER_MIB = {"tensorgrade": 400, "tensorgrade-gpu": 1300}
BYTES_PER_REQUEST_ELEMENT = 128
BYTES_PER_OUTPUT_ELEMENT = 64


def mebibytes(quantity: str) -> int:
    units = {"Mi": 1, "Gi": 1024}
    return int(float(quantity[:-2]) * units[quantity[-2:]])


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_memory_holds_every_worker_running_its_largest_computations(name: str) -> None:
    """Each worker may run MAX_CONCURRENT_COMPUTATIONS computations at the element budgets at
    once; the pod must hold them all, or it is OOM-killed by the requests it accepts."""
    env = effective_env(DEPLOYMENTS[name])
    settings = Settings.model_validate(
        {
            k.removeprefix("TENSORGRADE_").lower(): v
            for k, v in env.items()
            if k in settings_variables()
        }
    )
    largest = max(
        settings.max_request_elements * BYTES_PER_REQUEST_ELEMENT,
        max(settings.max_output_elements, settings.max_jacobian_elements)
        * BYTES_PER_OUTPUT_ELEMENT,
    )
    worker = IDLE_WORKER_MIB[name] + settings.max_concurrent_computations * largest / 2**20
    needed = settings.workers * worker + (SUPERVISOR_MIB if settings.workers > 1 else 0)
    limit = mebibytes(container(DEPLOYMENTS[name])["resources"]["limits"]["memory"])
    assert needed <= limit, f"{name}: {needed:.0f} MiB needed, {limit} MiB given"


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_runs_locked_down_as_the_images_user_with_writable_scratch(name: str) -> None:
    pod = DEPLOYMENTS[name]["spec"]["template"]["spec"]
    (user,) = instructions(FINAL, "USER")
    uid, gid = (int(part) for part in user.split(":"))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (uid, gid)
    spec = container(DEPLOYMENTS[name])
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["securityContext"]["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in spec["volumeMounts"]}
    multiproc = effective_env(DEPLOYMENTS[name])["PROMETHEUS_MULTIPROC_DIR"]
    for path in ("/tmp", multiproc):
        assert "emptyDir" in volumes[mounts[path]], path
    assert env_of(FINAL)["HOME"] == "/tmp"  # the only writable place of the image's user


def test_the_gpu_variant_asks_for_a_gpu_on_a_gpu_node() -> None:
    gpu = DEPLOYMENTS["tensorgrade-gpu"]
    pod = gpu["spec"]["template"]["spec"]
    resources = container(gpu)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert effective_env(gpu)["TENSORGRADE_WORKERS"] == "1"  # one CUDA context per GPU
    assert container(gpu)["image"].endswith("-cuda")
    assert "nvidia.com/gpu" not in str(DEPLOYMENTS["tensorgrade"])


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_the_grace_period_outlasts_the_pause_and_the_longest_request(name: str) -> None:
    """SIGKILL comes terminationGracePeriodSeconds after the pod is told to stop: the preStop
    pause, then the service's own graceful shutdown, which must outlast an experiment."""
    env = effective_env(DEPLOYMENTS[name])
    settings = Settings.model_validate(
        {
            k.removeprefix("TENSORGRADE_").lower(): v
            for k, v in env.items()
            if k in settings_variables()
        }
    )
    assert settings.graceful_shutdown_seconds > settings.experiment_max_seconds
    spec = DEPLOYMENTS[name]["spec"]["template"]["spec"]
    command = container(DEPLOYMENTS[name])["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pause = int(command[1])
    assert spec["terminationGracePeriodSeconds"] >= pause + settings.graceful_shutdown_seconds + 5


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_no_service_links_reach_the_settings(name: str) -> None:
    """Kubernetes would set TENSORGRADE_PORT=tcp://... for the Service named tensorgrade."""
    assert DEPLOYMENTS[name]["spec"]["template"]["spec"]["enableServiceLinks"] is False
