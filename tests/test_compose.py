"""deploy/compose.yaml for real under podman-compose: PostgreSQL and SeaweedFS (local stand-ins
from `make standins`, as no registry can be reached here), the tracking server with --auth, two
API replicas and the job that promotes a first version. A client outside trains and promotes;
both replicas follow; one replica stopped mid-load costs the other no request."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port, wait_for, worker_versions
from tests.containers import ROOT, Load, answers, build_image, podman

pytestmark = [pytest.mark.slow, pytest.mark.containers]

COMPOSE = ROOT / "deploy" / "compose.yaml"
TOKEN = "compose-token-0123456789abcdef"
ADMIN_PASSWORD = "compose-admin-password"


def compose(env_file: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """podman-compose with the test's variables on deploy/compose.yaml."""
    # NB: PyPI's podman-compose, beside this interpreter: Debian's podman 4.3 has no `compose`.
    command = [str(Path(sys.executable).parent / "podman-compose"), "--env-file", str(env_file)]
    result = subprocess.run(
        [*command, "-f", str(COMPOSE), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The stack up with stand-ins and free loopback ports; `down -v` afterwards."""
    image = build_image()
    built = subprocess.run(
        ["make", "standins"], cwd=ROOT, capture_output=True, text=True, timeout=1200, check=False
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    project = f"churnops-test-{uuid.uuid4().hex[:8]}"
    ports = {"MLFLOW_PORT": free_port(), "API_1_PORT": free_port(), "API_2_PORT": free_port()}
    variables = {
        "COMPOSE_PROJECT_NAME": project,
        "CHURNOPS_IMAGE": image,
        "POSTGRES_IMAGE": "localhost/churnops-postgres:standin",
        "S3_IMAGE": "localhost/churnops-seaweedfs:standin",
        "POSTGRES_PASSWORD": uuid.uuid4().hex,
        "S3_ACCESS_KEY": "churnops-compose",
        "S3_SECRET_KEY": uuid.uuid4().hex,
        "MLFLOW_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MLFLOW_SECRET_KEY": uuid.uuid4().hex,
        "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD,
        "CHURNOPS_API_TOKEN": TOKEN,
        **{k: str(v) for k, v in ports.items()},
    }
    env_file = tmp_path_factory.mktemp("compose") / "env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in variables.items()))
    try:
        compose(env_file, "up", "-d")
        yield {
            "project": project,
            "image": image,
            "tracking": f"http://127.0.0.1:{ports['MLFLOW_PORT']}",
            "apis": [f"http://127.0.0.1:{ports[p]}" for p in ("API_1_PORT", "API_2_PORT")],
        }
    finally:
        compose(env_file, "down", "-v", timeout=300)


def exited(container: str) -> int | None:
    """A container's exit code once it has exited, else None."""
    state = json.loads(podman("inspect", container).stdout)[0]["State"]
    return None if state["Running"] or state["Status"] != "exited" else int(state["ExitCode"])


def ready(url: str) -> bool:
    """Whether the replica at ``url`` says it is ready."""
    return answers(url, "/ready") == 200


def serves(url: str, version: int) -> bool:
    """Whether every worker of the replica at ``url`` serves ``version``."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        with httpx.Client(base_url=url, timeout=5, headers=headers) as client:
            versions = worker_versions(client)
    except httpx.HTTPError:
        return False
    return bool(versions) and set(versions.values()) == {float(version)}


def test_compose_brings_up_a_team_stack_whose_replicas_follow_and_cover_for_each_other(
    stack: dict[str, Any],
) -> None:
    project, tracking, (api_1, api_2) = stack["project"], stack["tracking"], stack["apis"]
    job = f"{project}_first-model_1"
    assert wait_for(lambda: exited(job) is not None, timeout=300, interval=1) is not None
    assert exited(job) == 0, podman("logs", job).stderr[-2000:]
    for api in (api_1, api_2):
        wait_for(functools.partial(ready, api), timeout=120, interval=0.5)
        assert serves(api, 1)
    # NB: --auth from the Compose file: no password, no registry.
    assert answers(tracking, "/api/2.0/mlflow/registered-models/search") == 401
    # NB: the client is a one-off container on the stack's network, as a CI job would be:
    # from the host, through the published port, artifact downloads hung here (docs/deploy.md).
    client = [
        "run", "--rm", "--network", f"{project}_default",
        "--env", "MLFLOW_TRACKING_URI=http://tracking:5000",
        "--env", "MLFLOW_TRACKING_USERNAME=admin",
        "--env", f"MLFLOW_TRACKING_PASSWORD={ADMIN_PASSWORD}",
        stack["image"],
    ]  # fmt: skip
    trained = podman(*client, "train", "--json", "--seed", "7", timeout=600)
    assert json.loads(trained.stdout)["version"] == 2
    promoted = podman(*client, "promote", "--json", timeout=600)
    assert json.loads(promoted.stdout)["to_version"] == 2
    for api in (api_1, api_2):
        wait_for(functools.partial(serves, api, 2), timeout=60, interval=0.5)
    with Load(api_2, threads=4, requests=1500, seconds=60, token=TOKEN) as load:
        load.until(answered=100)
        podman("stop", "--time", "30", f"{project}_api-1_1", timeout=60)
        before = len(load.answered)
        load.until(answered=before + 100)
    assert load.failed == []
    assert answers(api_1, "/health") is None
