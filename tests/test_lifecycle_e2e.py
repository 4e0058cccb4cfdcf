"""The whole life cycle end to end: real tracking server, real `churnops serve`, real HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from click.testing import Result

from churnops import lifecycle, registry, tracking_server
from churnops.config import Settings
from tests.conftest import free_port, moved, start_api, stop_api, wait_for
from tests.test_api import CUSTOMER

# NB: how fast the API follows is measured in bench/serve.py (alias moves under load); the
# tests bound the wait generously, so a loaded machine cannot fail them.
FOLLOW_BOUND = 30.0


@pytest.fixture(scope="module", params=["sqlite+local", "postgresql+s3"])
def tracking_url(request: pytest.FixtureRequest) -> str:
    """The life cycle runs unchanged on the embedded store and on a team's PostgreSQL + S3."""
    if request.param == "sqlite+local":
        return str(request.getfixturevalue("embedded_tracking_url"))
    return str(request.getfixturevalue("team_backend").url)


def _ok(result: Result) -> dict:
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout) if result.stdout.startswith("{") else {}


def _served_within(client: httpx.Client, version: int, bound: float) -> float:
    """Seconds until both /model and the X-Model-Version header report ``version``."""
    start = time.monotonic()

    def follows() -> bool:
        model = client.get("/model").json()["version"]
        header = client.post("/predict", json=CUSTOMER).headers["X-Model-Version"]
        return model == version and header == str(version)

    wait_for(follows, timeout=bound, interval=0.05)
    return time.monotonic() - start


class Traffic:
    """Bounded background load that records every status and served version."""

    def __init__(self, url: str, max_requests: int = 5000, max_seconds: float = 120) -> None:
        self.statuses: Counter[int] = Counter()
        self.versions: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, max_requests, max_seconds))

    def _run(self, url: str, max_requests: int, max_seconds: float) -> None:
        deadline = time.monotonic() + max_seconds
        with httpx.Client(base_url=url, timeout=10) as client:
            for _ in range(max_requests):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                response = client.post("/predict", json=CUSTOMER)
                self.statuses[response.status_code] += 1
                self.versions[response.headers.get("X-Model-Version", "-")] += 1

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def test_the_api_follows_promotion_and_rollback_live_and_the_gate_guards_production(
    cli: Callable[..., Result], env: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    assert _ok(cli("train", "--version", "v1", "--json"))["version"] == 1
    assert moved(_ok(cli("promote", "--json"))) == (None, 1)
    api = start_api(env, tmp_path / "serve.log")
    try:
        api.wait_until_every_worker_serves()
        pid = api.process.pid
        with Traffic(api.url) as traffic:
            assert _ok(cli("train", "--version", "v2", "--json"))["version"] == 2
            assert moved(_ok(cli("promote", "--json"))) == (1, 2)
            _served_within(api.client, 2, FOLLOW_BOUND)

            assert moved(_ok(cli("rollback", "--json"))) == (2, 1)
            _served_within(api.client, 1, FOLLOW_BOUND)
            assert api.client.get("/model").json()["version"] == 1

            assert (
                _ok(cli("train", "--version", "v3", "--gate-f1", "0.99", "--json"))["version"] == 3
            )
            refused = cli("promote")
            assert refused.exit_code == 1 and "failed the gate" in refused.stderr

            no_target = cli("rollback")
            assert no_target.exit_code == 1
            assert "nothing earlier to roll back to" in no_target.stderr
            time.sleep(2 * settings.poll_interval)  # let the watcher see the unchanged alias
        assert registry.alias_version(settings) == 1
        assert api.client.get("/model").json()["version"] == 1
        assert api.process.pid == pid and api.process.poll() is None  # never restarted
        # Swaps never fail a request, and only versions 1 and 2 ever answered (v2's turn was
        # seen above; under load the background thread may not have been between the moves).
        assert set(traffic.statuses) == {200}, traffic.statuses
        assert "1" in traffic.versions and set(traffic.versions) <= {"1", "2"}
        assert sum(traffic.statuses.values()) > 20
    finally:
        stop_api(api)


def test_the_api_keeps_serving_when_the_registry_goes_away_and_follows_it_when_it_returns(
    tmp_path: Path,
) -> None:
    port = free_port()
    settings = Settings(
        tracking_uri=f"http://127.0.0.1:{port}",
        data_dir=tmp_path / "store",
        model_name="churn_model",
    )
    server = tracking_server.start(settings, port=port, quiet=True)
    api = None
    try:
        first = lifecycle.train(settings, data_file=None, version_label="v1", seed=1, gate_f1=0.6)
        second = lifecycle.train(settings, data_file=None, version_label="v2", seed=2, gate_f1=0.6)
        lifecycle.promote(settings, first.version)
        api = start_api({"MLFLOW_TRACKING_URI": settings.tracking_uri}, tmp_path / "serve.log")
        api.wait_until_every_worker_serves()

        server.stop()
        wait_for(lambda: api.client.get("/model").json()["registry_reachable"] is False, timeout=30)
        model = api.client.get("/model").json()
        assert model["version"] == 1
        assert f"tracking server at {settings.tracking_uri} does not answer" in model["last_error"]
        for _ in range(20):
            response = api.client.post("/predict", json=CUSTOMER)
            assert response.status_code == 200 and response.headers["X-Model-Version"] == "1"
        assert api.client.get("/ready").status_code == 200

        # Production moves while the API cannot see the registry: through another server on the
        # same store, as an operator on another host would.
        side_port = free_port()
        side = settings.model_copy(update={"tracking_uri": f"http://127.0.0.1:{side_port}"})
        side_server = tracking_server.start(side, port=side_port, quiet=True)
        try:
            lifecycle.promote(side, second.version)
        finally:
            side_server.stop()
        assert api.client.get("/model").json()["version"] == 1

        server = tracking_server.start(settings, port=port, quiet=True)
        _served_within(api.client, 2, 30)  # the pending move is picked up
        assert api.client.get("/model").json()["registry_reachable"] is True
    finally:
        if api is not None:
            stop_api(api)
        server.stop()


def test_churnops_server_starts_the_embedded_store_and_stops_cleanly_on_sigterm(
    tmp_path: Path,
) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "churnops",
            "server",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path),
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        announced = json.loads(proc.stdout.readline())
        assert announced["ui"] == f"http://127.0.0.1:{port}"
        assert httpx.get(f"{announced['ui']}/health", timeout=5).status_code == 200
        assert (tmp_path / "mlflow.db").is_file()
        assert (tmp_path / "mlflow" / "artifacts").is_dir()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    tracking_server.ensure_port_free("127.0.0.1", port)  # nothing left behind on the port


def test_churnops_up_starts_everything_serves_a_first_model_and_stops_what_it_started(
    tmp_path: Path,
) -> None:
    tracking_port, api_port = free_port(), free_port()
    env = {
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{tracking_port}",
        "CHURNOPS_DATA_DIR": str(tmp_path),
    }
    log = (tmp_path / "up.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "churnops", "up", "--port", str(api_port)],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        api = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=5)

        def ready() -> bool:
            assert proc.poll() is None, (tmp_path / "up.log").read_text()
            try:
                return api.get("/ready").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=180, interval=0.5)
        assert api.get("/model").json()["version"] == 1
        assert api.post("/predict", json=CUSTOMER).status_code == 200
        assert (tmp_path / "data" / "churn.csv").is_file()
        assert (tmp_path / "mlflow.db").is_file()
        assert "Uvicorn running" in (tmp_path / "logs" / "mlflow-server.log").read_text()
        output = (tmp_path / "up.log").read_text()
        assert f"MLflow UI: http://127.0.0.1:{tracking_port}" in output
        assert f"API docs:  http://127.0.0.1:{api_port}/docs" in output
        assert (
            f"  export MLFLOW_TRACKING_URI=http://127.0.0.1:{tracking_port} "
            f"CHURNOPS_API_URL=http://127.0.0.1:{api_port}\n" in output
        )
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    tracking_server.ensure_port_free("127.0.0.1", tracking_port)
    tracking_server.ensure_port_free("127.0.0.1", api_port)
