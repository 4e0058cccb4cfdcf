"""Faults injected on purpose into real processes: PostgreSQL restarted while the API serves and
a promote runs, the tracking server killed with SIGKILL and restarted during a promote, S3
stopped during `churnops train`. After each, production and the ledger agree, the ledger chain is
unbroken, the API answered every request, and nobody had to clean up by hand."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from churnops import lifecycle, registry, tracking_server
from churnops.config import Settings
from tests.conftest import (
    TeamBackend,
    free_port,
    run_churnops,
    running_team_backend,
    start_api,
    stop_api,
    wait_for,
)
from tests.test_api import CUSTOMER
from tests.test_lifecycle_e2e import Traffic
from tests.test_trust import _assert_ledger_agrees_with_production

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fragile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TeamBackend]:
    """A PostgreSQL + S3 tracking server of this module's own, to break at will."""
    with running_team_backend(tmp_path_factory) as backend:
        yield backend


PAUSED_STEP = "after-intent"


def _promoter(env: dict[str, str], version: int, folder: Path) -> subprocess.Popen[str]:
    """A promote that stops between its ledger intent and the alias move until released."""
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "churnops", "promote", "--version", str(version)),
            *("--json", "--reason", "during the fault"),
        ],
        env={
            **os.environ,
            **env,
            "CHURNOPS_ACTOR": "alice",
            "CHURNOPS_DATA_DIR": str(folder),
            "CHURNOPS_FAILPOINT": f"{PAUSED_STEP}:pause",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _paused(promoter: subprocess.Popen[str], folder: Path) -> Path:
    """Wait until the promote waits at its failpoint; the marker's removal releases it."""
    marker = folder / f"failpoint-{PAUSED_STEP}.paused"
    wait_for(lambda: marker.exists() or promoter.poll() is not None, timeout=120)
    assert marker.exists(), promoter.communicate()
    return marker


def _finish_the_promotion(
    promoter: subprocess.Popen[str], env: dict[str, str], version: int
) -> dict[str, Any]:
    """The faulted promote ends cleanly (done, or a one-line error); one retry completes it."""
    _, err = promoter.communicate(timeout=300)
    assert promoter.returncode in (0, 1, 2), err
    assert "Traceback" not in err, err
    retry = run_churnops("promote", "--version", str(version), "--json", env=env, timeout=300)
    assert retry.returncode == 0, retry.stderr
    return dict(json.loads(retry.stdout))


def _settle(settings: Settings, api: Any, version: int) -> None:
    wait_for(
        lambda: (
            api.client.post("/predict", json=CUSTOMER).headers["X-Model-Version"] == str(version)
        ),
        timeout=60,
    )


def test_postgresql_restarted_while_the_api_serves_and_a_promote_runs(
    fragile: TeamBackend, tmp_path: Path
) -> None:
    name = f"churn_pg_{uuid.uuid4().hex[:6]}"
    settings = Settings(tracking_uri=fragile.url, model_name=name)
    v1 = lifecycle.train(settings, data_file=None, version_label="v1", seed=1, gate_f1=0.5)
    v2 = lifecycle.train(settings, data_file=None, version_label="v2", seed=2, gate_f1=0.5)
    lifecycle.promote(settings, v1.version)
    env = {
        "MLFLOW_TRACKING_URI": fragile.url,
        "CHURNOPS_MODEL_NAME": name,
        "CHURNOPS_LEASE_SECONDS": "3",
    }
    api = start_api({**env, "CHURNOPS_WORKERS": "1"}, tmp_path / "serve.log")
    try:
        api.wait_until_every_worker_serves()
        with Traffic(api.url, max_requests=20_000, max_seconds=240) as traffic:
            promoter = _promoter(env, v2.version, tmp_path)
            marker = _paused(promoter, tmp_path)
            # NB: the database restarts with an intent in the ledger and the alias not moved.
            fragile.postgres.restart()
            marker.unlink()
            _finish_the_promotion(promoter, env, v2.version)
            _settle(settings, api, v2.version)
        assert set(traffic.statuses) == {200}, traffic.statuses
        assert sum(traffic.statuses.values()) > 0
    finally:
        stop_api(api)
    entries = _assert_ledger_agrees_with_production(settings)
    assert registry.alias_version(settings) == v2.version
    assert {e.actor for e in entries if e.action == "promote"} <= {
        "alice",
        lifecycle.actor_of(settings)[0],
    }


def test_the_tracking_server_killed_and_restarted_during_a_promote_loses_nothing(
    tmp_path: Path,
) -> None:
    port = free_port()
    settings = Settings(
        tracking_uri=f"http://127.0.0.1:{port}", data_dir=tmp_path / "store", model_name="churn"
    )
    server = tracking_server.start(settings, port=port, quiet=True)
    api = None
    try:
        v1 = lifecycle.train(settings, data_file=None, version_label="v1", seed=1, gate_f1=0.5)
        v2 = lifecycle.train(settings, data_file=None, version_label="v2", seed=2, gate_f1=0.5)
        lifecycle.promote(settings, v1.version)
        env = {
            "MLFLOW_TRACKING_URI": settings.tracking_uri,
            "CHURNOPS_MODEL_NAME": "churn",
            "CHURNOPS_LEASE_SECONDS": "3",
        }
        api = start_api({**env, "CHURNOPS_WORKERS": "1"}, tmp_path / "serve.log")
        api.wait_until_every_worker_serves()
        with Traffic(api.url, max_requests=20_000, max_seconds=240) as traffic:
            promoter = _promoter(env, v2.version, tmp_path)
            marker = _paused(promoter, tmp_path)
            # NB: the server dies with an intent in the ledger; the promote goes on against no
            # server at all, then the server comes back.
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()
            marker.unlink()
            wait_for(lambda: promoter.poll() is not None, timeout=300)
            server = tracking_server.start(settings, port=port, quiet=True)
            _finish_the_promotion(promoter, env, v2.version)
            _settle(settings, api, v2.version)
        assert set(traffic.statuses) == {200}, traffic.statuses
        _assert_ledger_agrees_with_production(settings)
        assert registry.alias_version(settings) == v2.version
    finally:
        if api is not None:
            stop_api(api)
        server.stop()


def test_s3_stopped_during_train_is_a_clear_error_and_registers_no_version(
    fragile: TeamBackend, tmp_path: Path
) -> None:
    # NB: last in the module: the bucket stays down.
    name = f"churn_s3down_{uuid.uuid4().hex[:6]}"
    env = {
        "MLFLOW_TRACKING_URI": fragile.url,
        "CHURNOPS_MODEL_NAME": name,
        "CHURNOPS_EXPERIMENT": name,
    }
    trainer = subprocess.Popen(
        [sys.executable, "-m", "churnops", "train", "--json"],
        env={
            **os.environ,
            **env,
            "CHURNOPS_DATA_DIR": str(tmp_path),
            "CHURNOPS_FAILPOINT": "before-logging:pause",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # NB: the model is fitted; S3 goes down before the run logs anything to it.
    marker = tmp_path / "failpoint-before-logging.paused"
    wait_for(lambda: marker.exists() or trainer.poll() is not None, timeout=300)
    assert marker.exists(), trainer.communicate()
    fragile.s3.stop()
    marker.unlink()
    out, err = trainer.communicate(timeout=600)
    assert trainer.returncode == 2, (out, err)
    assert "failed the request" in err and "artifact store may be down" in err
    assert "Traceback" not in err
    assert json.loads(out)["exit_code"] == 2
    client = MlflowClient(tracking_uri=fragile.url, registry_uri=fragile.url)
    assert client.search_model_versions(f"name = '{name}'") == []
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED"
