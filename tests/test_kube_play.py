"""deploy/k8s run by `podman kube play`, the closest thing to a cluster these machines have: the
tracking server (--auth) and API Deployments from the same files, with their ConfigMap, probes,
non-root user and read-only root. A test-only overlay, made here from the files, changes what
podman 4.3 cannot run or what must stay on loopback (docs/deploy.md lists it): the image tag, the
Secret served as a ConfigMap, the host network with free 127.0.0.1 ports instead of Services,
SQLite and local folders instead of PostgreSQL and S3, one API replica (replicas on one host
network would share a port)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import free_port, run_churnops, wait_for
from tests.containers import CUSTOMER, answers, build_image, kube_down, podman
from tests.test_deploy_manifests import manifests

pytestmark = [pytest.mark.slow, pytest.mark.containers]

TOKEN = "kube-play-token-0123456789abcdef"
ADMIN_PASSWORD = "kube-play-admin-password"
# NB: what the overlay leaves out of the settings: the team's PostgreSQL and S3.
NOT_HERE = (
    "CHURNOPS_PREDICTION_STORE",
    "MLFLOW_S3_ENDPOINT_URL",
    "CHURNOPS_ARTIFACTS_DESTINATION",
    "CHURNOPS_BACKEND_STORE_URI",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
)


def _loopback(container: dict[str, Any], port: int) -> None:
    """Bind the container's server to 127.0.0.1:port and point its probes there."""
    args = []
    for arg in container["args"]:
        if arg.startswith("--host="):
            arg = "--host=127.0.0.1"
        elif arg.startswith("--port="):
            arg = f"--port={port}"
        args.append(arg)
    container["args"] = args
    # NB: on the host network podman 4.3 refuses any port mapping, and a declared port is one.
    del container["ports"]
    for probe in ("readinessProbe", "livenessProbe"):
        container[probe]["httpGet"]["port"] = port


def _secret_as_config_map(container: dict[str, Any], keys: set[str]) -> None:
    """Read the Secret's values from the ConfigMap of the same name (podman 4.3 fails on
    Secrets), leaving out the keys the overlay dropped."""
    for source in container.get("envFrom", []):
        if "secretRef" in source:
            source["configMapRef"] = source.pop("secretRef")
    kept = []
    for variable in container.get("env", []):
        ref = variable.get("valueFrom", {}).pop("secretKeyRef", None)
        if ref is not None:
            if ref["key"] not in keys:
                continue
            variable["valueFrom"]["configMapKeyRef"] = ref
        kept.append(variable)
    container["env"] = kept


def podman_overlay(image: str, model: str, ports: dict[str, int]) -> list[dict[str, Any]]:
    """The manifests as `podman kube play` runs them here (see the module's docstring)."""
    found = {
        (doc["kind"], doc["metadata"]["name"]): doc for docs in manifests().values() for doc in docs
    }
    settings = found["ConfigMap", "churnops-settings"]
    settings["data"] = {k: v for k, v in settings["data"].items() if k not in NOT_HERE} | {
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports['churnops-tracking']}",
        "CHURNOPS_MODEL_NAME": model,
    }
    secret = found["Secret", "churnops-secrets"]
    values = {k: v for k, v in secret["stringData"].items() if k not in NOT_HERE} | {
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex,
        "CHURNOPS_API_TOKEN": TOKEN,
    }
    secrets = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": secret["metadata"]}
    secrets["data"] = values
    deployments = []
    for name in ("churnops-tracking", "churnops-api"):
        deployment = found["Deployment", name]
        deployment["spec"]["replicas"] = 1
        pod = deployment["spec"]["template"]["spec"]
        pod["hostNetwork"] = True
        for container in pod["containers"]:
            container["image"] = image
            _loopback(container, ports[name])
            _secret_as_config_map(container, set(values))
        for volume in pod["volumes"]:
            if "persistentVolumeClaim" in volume:
                # NB: a claim becomes a named podman volume that outlives `kube down`.
                del volume["persistentVolumeClaim"]
                volume["emptyDir"] = {}
        deployments.append(deployment)
    return [settings, secrets, *deployments]


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The overlay played; `podman kube down` afterwards."""
    image = build_image()
    ports = {"churnops-tracking": free_port(), "churnops-api": free_port()}
    model = f"churn_kube_{uuid.uuid4().hex[:8]}"
    manifest = tmp_path_factory.mktemp("kube") / "churnops-podman.yaml"
    manifest.write_text(yaml.safe_dump_all(podman_overlay(image, model, ports)))
    try:
        podman("kube", "play", str(manifest), timeout=300)
        yield {"ports": ports, "model": model, "manifest": manifest}
    finally:
        kube_down(manifest)


def containers_of(pod: str) -> list[dict[str, Any]]:
    """`podman inspect` of the containers of the pods a Deployment became (no infra)."""
    listed = podman("ps", "--all", "--format", "json", "--filter", f"pod={pod}-pod-0").stdout
    names = [c["Names"][0] for c in json.loads(listed) if not c.get("IsInfra")]
    assert names, f"no containers in {pod}-pod-0"
    return json.loads(podman("inspect", *names).stdout)


def test_kube_play_runs_the_manifests_tracking_server_and_api_with_auth_token_and_probes(
    played: dict[str, Any], tmp_path: Path
) -> None:
    tracking = f"http://127.0.0.1:{played['ports']['churnops-tracking']}"
    api = f"http://127.0.0.1:{played['ports']['churnops-api']}"
    wait_for(lambda: answers(tracking, "/health") == 200, timeout=180, interval=0.5)
    # NB: --auth from the manifest: a client without the admin's password is refused.
    assert answers(tracking, "/api/2.0/mlflow/registered-models/search") == 401
    assert answers(api, "/health") == 200
    assert answers(api, "/ready") == 503
    env = {
        "MLFLOW_TRACKING_URI": tracking,
        "CHURNOPS_MODEL_NAME": played["model"],
        "CHURNOPS_DATA_DIR": str(tmp_path),
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD,
    }
    for command in (("train", "--json", "--seed", "1"), ("promote", "--json")):
        done = run_churnops(*command, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    wait_for(lambda: answers(api, "/ready") == 200, timeout=120, interval=0.5)
    refused = httpx.post(f"{api}/predict", json=CUSTOMER, timeout=10)
    assert refused.status_code == 401
    scored = httpx.post(
        f"{api}/predict", json=CUSTOMER, timeout=10, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert scored.status_code == 200 and scored.json()["model_version"] == 1
    for deployment in ("churnops-tracking", "churnops-api"):
        (inspected,) = containers_of(deployment)
        assert inspected["State"]["Running"] is True
        assert inspected["HostConfig"]["ReadonlyRootfs"] is True
        assert inspected["Config"]["User"] == "10001:10001"
        assert inspected["Config"]["Healthcheck"]["Test"], "the probe did not become a check"
