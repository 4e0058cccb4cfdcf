"""Fixtures that start real servers on free loopback ports: one MLflow tracking server for the
session, and churnops API processes per test module. Each test gets its own registered-model name,
so tests share the server without sharing state.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from mlflow.tracking import MlflowClient

from churnops import tracking_server
from churnops.cli import main
from churnops.config import Settings

# NB: the real dataset is read where the team keeps it, never copied into the repository.
SHARED_DATA = Path(
    os.environ.get("CHURNOPS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
TELECOM_TRAIN = SHARED_DATA / "telecom-churn-bigml-80.csv"
TELECOM_HELD_OUT = SHARED_DATA / "telecom-churn-bigml-20.csv"


@pytest.fixture(scope="session", autouse=True)
def one_compute_thread_in_the_test_process() -> Iterator[None]:
    """NB: the suite's servers run beside the test process on a machine of few cores, and
    OpenMP's spinning threads then slowed one gradient-boosting fit on 900 rows from 1.9 s to
    9 s (scikit-learn's trees and BLAS both use them). Models are unchanged by the count."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="session")
def telecom_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The telecom churn table, 80% and 20% files concatenated as text (labels spelled TRUE/FALSE
    in one and True/False in the other, as shipped)."""
    for part in (TELECOM_TRAIN, TELECOM_HELD_OUT):
        assert part.exists(), f"real dataset missing: {part} (set CHURNOPS_SHARED_DATA)"
    head, *rows = TELECOM_TRAIN.read_text().splitlines()
    rows += TELECOM_HELD_OUT.read_text().splitlines()[1:]
    path = tmp_path_factory.mktemp("telecom") / "telecom-churn.csv"
    path.write_text("\n".join([head, *rows]) + "\n")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Poll ``condition`` until it is truthy or ``timeout`` passes; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


@pytest.fixture(scope="session")
def tracking_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The data folder (mlflow.db, mlflow/artifacts) of the session's tracking server."""
    return tmp_path_factory.mktemp("tracking")


@pytest.fixture(scope="session")
def embedded_tracking_url(tracking_store: Path) -> Iterator[str]:
    """A real tracking server (SQLite + proxied local artifacts) for the whole session."""
    server = tracking_server.start(Settings(data_dir=tracking_store), port=free_port(), quiet=True)
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def tracking_url(embedded_tracking_url: str) -> str:
    """The tracking server tests talk to; a module may override it (see the life-cycle test)."""
    return embedded_tracking_url


@dataclass
class TeamBackend:
    """A PostgreSQL + S3 tracking server and the stores behind it."""

    url: str
    database_uri: str
    s3: Any
    postgres: Any


@contextlib.contextmanager
def running_team_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TeamBackend]:
    """Start a private PostgreSQL cluster, SeaweedFS S3 and a tracking server on them (only the
    server holds the S3 keys); stop all three afterwards."""
    from tests.backends import S3, S3_BUCKET, Postgres

    postgres = Postgres.start()
    s3 = None
    server = None
    try:
        s3 = S3.start(tmp_path_factory.mktemp("s3"))
        database = postgres.create_database("mlflow")
        settings = Settings(
            data_dir=tmp_path_factory.mktemp("team"),
            backend_store_uri=database,
            artifacts_destination=f"s3://{S3_BUCKET}/artifacts",
        )
        server = tracking_server.start(
            settings, port=free_port(), quiet=True, extra_env=s3.server_env()
        )
        yield TeamBackend(server.url, database, s3, postgres)
    finally:
        if server is not None:
            server.stop()
        if s3 is not None:
            s3.stop()
        postgres.stop()


@pytest.fixture(scope="session")
def team_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TeamBackend]:
    """The session's PostgreSQL + S3 tracking server."""
    with running_team_backend(tmp_path_factory) as backend:
        yield backend


@pytest.fixture
def model_name() -> str:
    """A registered-model name no other test uses."""
    return f"churn_test_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def env(
    tracking_url: str, model_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """Environment pointing churnops at the session server and this test's model."""
    values = {
        "MLFLOW_TRACKING_URI": tracking_url,
        "CHURNOPS_MODEL_NAME": model_name,
        "CHURNOPS_DATA_DIR": str(tmp_path),
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    """Settings as the CLI would read them in this test's environment."""
    return Settings()


@pytest.fixture
def cli(env: dict[str, str]) -> Callable[..., Result]:
    """Invoke the real CLI in-process against the session's tracking server."""
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(main, list(args), catch_exceptions=False)

    return invoke


def ok(result: Result) -> Any:
    """The JSON document of a CLI call that must succeed."""
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout)


def train_version(cli: Callable[..., Result], *args: str) -> int:
    """Train through the CLI; the new version's number."""
    return int(ok(cli("train", "--json", *args))["version"])


def moved(document: dict[str, Any]) -> tuple[int | None, int]:
    """(from_version, to_version) of a promote/rollback --json document."""
    return document["from_version"], document["to_version"]


def run_churnops(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run `python -m churnops ARGS` as a separate process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "churnops", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def worker_versions(client: httpx.Client) -> dict[str, float]:
    """The version each API worker serves, from /metrics (0 before its first load)."""
    text = client.get("/metrics").text
    found = re.findall(r'^churnops_model_version\{pid="(\d+)"\} ([\d.]+)$', text, re.MULTILINE)
    if not found:
        found = re.findall(r"^churnops_model_version() ([\d.]+)$", text, re.MULTILINE)
    return {pid: float(version) for pid, version in found}


@dataclass
class ApiProcess:
    """A running `churnops serve` and an HTTP client bound to it."""

    process: subprocess.Popen[str]
    url: str
    client: httpx.Client
    log: Path
    workers: int

    def wait_until_every_worker_serves(self, timeout: float = 60) -> None:
        """Wait until each worker process has a model loaded, not just the one that answers."""

        def all_loaded() -> bool:
            versions = worker_versions(self.client)
            return len(versions) == self.workers and all(v > 0 for v in versions.values())

        wait_for(all_loaded, timeout=timeout, interval=0.2)


def start_api(env: dict[str, str], log: Path, *args: str, isolated: bool = False) -> ApiProcess:
    """Start `churnops serve` on a free port and wait until /health answers.

    ``isolated`` runs it as a replica on another host would: its working directory and HOME are
    the (empty) folder of ``log``, and its environment holds only ``env``, PATH and HOME.
    """
    port = free_port()
    handle = log.open("w")
    # NB: the API's own files (the prediction log) go beside its log, never into the checkout.
    env = {"CHURNOPS_DATA_DIR": str(log.parent), **env}
    if isolated:
        base = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(log.parent)}
    else:
        base = dict(os.environ)
    process = subprocess.Popen(
        [sys.executable, "-m", "churnops", "serve", "--port", str(port), *args],
        env={**base, **env},
        cwd=log.parent if isolated else None,
        stdout=handle,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=10)

    def healthy() -> bool:
        assert process.poll() is None, f"churnops serve exited: {log.read_text()}"
        try:
            return client.get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, timeout=60, interval=0.2)
    if "--workers" in args:
        workers = int(args[args.index("--workers") + 1])
    else:
        workers = int(env.get("CHURNOPS_WORKERS") or Settings(**{}).workers)
    return ApiProcess(process, url, client, log, workers)


def stop_api(api: ApiProcess) -> None:
    """Stop the API process and close its client."""
    api.client.close()
    api.process.terminate()
    try:
        api.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        api.process.kill()
        api.process.wait()


def break_artifacts(store: Path, settings: Settings, version: int) -> None:
    """Delete a version's model files from the artifact store, as a failed disk or a bad copy
    would."""
    client = MlflowClient(settings.tracking_uri)
    mv = client.get_model_version(settings.model_name, str(version))
    model_id = mv.model_id or (mv.source or "").removeprefix("models:/")
    doomed = [
        p
        for p in (store / "mlflow" / "artifacts").rglob("*")
        if p.is_file()
        and (mv.run_id in p.parts or model_id in p.parts)
        and p.name in ("model.onnx", "model.skops", "MLmodel")
    ]
    assert doomed, "found none of the version's model files to delete"
    for path in doomed:
        path.unlink()


# NB: a test that reaches a real server through any fixture, or a module that starts processes
# of its own, is end to end; `pytest -m "not slow"` leaves those out.
SLOW_FIXTURES = frozenset({"embedded_tracking_url", "team_backend"})
SLOW_MODULES = frozenset({"test_auth", "test_team", "test_lifecycle_e2e", "test_serving_ops"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the end-to-end tests ``slow``."""
    for item in items:
        module = item.nodeid.partition("::")[0].rpartition("/")[2].removesuffix(".py")
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or module in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
