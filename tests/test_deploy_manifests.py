"""The deployment files as data, without containers: every Kubernetes manifest under deploy/k8s
validates against the Kubernetes schemas kubernetes-validate ships (offline, strict: an unknown
field is an error), the kustomization names every one of them, and the probes, secrets and
settings say what docs/deploy.md says. Running them is tests/test_containers.py's job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from churnops.config import Settings

K8S = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30"


def manifests() -> dict[str, list[dict[str, Any]]]:
    """Every resource of every manifest file, by file name (the kustomization left out)."""
    return {
        path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for path in sorted(K8S.glob("*.yaml"))
        if path.name != "kustomization.yaml"
    }


def resources(kind: str) -> dict[str, dict[str, Any]]:
    """The resources of one kind, by name."""
    return {
        doc["metadata"]["name"]: doc
        for docs in manifests().values()
        for doc in docs
        if doc["kind"] == kind
    }


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    """The containers of a Deployment or a CronJob."""
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]["containers"]


@pytest.mark.parametrize(
    "name, resource",
    [
        (f"{file}:{doc['kind']}/{doc['metadata']['name']}", doc)
        for file, docs in manifests().items()
        for doc in docs
    ],
)
def test_every_manifest_validates_against_the_kubernetes_schemas(
    name: str, resource: dict[str, Any]
) -> None:
    kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_a_manifest_with_a_misspelt_field_is_refused_by_the_schema_check() -> None:
    deployment = resources("Deployment")["churnops-api"]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_kustomization_lists_every_manifest_and_names_the_image_the_workloads_use() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(manifests())
    (image,) = kustomization["images"]
    workloads = [*resources("Deployment").values(), *resources("CronJob").values()]
    assert {c["image"] for w in workloads for c in containers(w)} == {image["name"]}


def test_the_api_is_ready_on_ready_alive_on_health_and_kept_available_by_a_budget() -> None:
    api = resources("Deployment")["churnops-api"]
    (container,) = containers(api)
    assert api["spec"]["replicas"] >= 2
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    budget = resources("PodDisruptionBudget")["churnops-api"]
    assert budget["spec"]["selector"] == api["spec"]["selector"]
    assert budget["spec"]["minAvailable"] < api["spec"]["replicas"]
    service = resources("Service")["churnops-api"]
    assert service["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]


def test_every_workload_runs_as_the_images_non_root_user_on_a_read_only_root() -> None:
    workloads = [*resources("Deployment").values(), *resources("CronJob").values()]
    for workload in workloads:
        spec = workload["spec"]
        if workload["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        for container in containers(workload):
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert {"/data", "/tmp"} <= mounts, workload["metadata"]["name"]


def test_secrets_hold_every_credential_and_the_config_map_only_settings_churnops_reads() -> None:
    secret = resources("Secret")["churnops-secrets"]["stringData"]
    assert {
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
        "CHURNOPS_API_TOKEN",
        "CHURNOPS_BACKEND_STORE_URI",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    } <= set(secret)
    settings = resources("ConfigMap")["churnops-settings"]["data"]
    assert not [k for k in settings if "PASSWORD" in k or "SECRET" in k or "TOKEN" in k]
    # NB: a misspelt CHURNOPS_ variable would be ignored silently (extra="ignore"): every one
    # here must be a field of Settings.
    known = {f"CHURNOPS_{name.upper()}" for name in Settings.model_fields}
    assert {k for k in settings if k.startswith("CHURNOPS_")} <= known
    parsed = Settings.model_validate(
        {k.removeprefix("CHURNOPS_").lower(): v for k, v in settings.items()}
    )
    assert parsed.workers == int(settings["CHURNOPS_WORKERS"])


def test_every_secret_a_workload_references_exists_with_that_key() -> None:
    secret = resources("Secret")["churnops-secrets"]
    workloads = [*resources("Deployment").values(), *resources("CronJob").values()]
    referenced = [
        e["valueFrom"]["secretKeyRef"]
        for w in workloads
        for c in containers(w)
        for e in c.get("env", [])
        if "valueFrom" in e
    ]
    assert referenced
    for ref in referenced:
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"]
