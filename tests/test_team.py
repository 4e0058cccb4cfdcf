"""Running for a team: the tracking server on PostgreSQL + S3, and API replicas that share no disk
and hold no storage credentials."""

from __future__ import annotations

import os
import uuid
from functools import partial
from pathlib import Path

import httpx
from mlflow.tracking import MlflowClient

from churnops import lifecycle
from churnops.config import Settings
from tests.conftest import TeamBackend, start_api, stop_api, wait_for
from tests.test_api import CUSTOMER

# NB: one poll interval (1 s) plus a load over HTTP from S3, on a busy two-core machine.
# NB: how fast replicas follow is measured in bench/serve.py; a generous bound here.
FOLLOW_BOUND = 60.0


def test_clients_hold_no_storage_credentials_and_artifacts_land_in_the_bucket(
    team_backend: TeamBackend,
) -> None:
    assert not {"AWS_ACCESS_KEY_ID", "MLFLOW_S3_ENDPOINT_URL"} & set(os.environ)
    name = f"churn_s3_{uuid.uuid4().hex[:6]}"
    settings = Settings(tracking_uri=team_backend.url, model_name=name)
    report = lifecycle.train(settings, data_file=None, version_label="v1", seed=3, gate_f1=0.5)
    run = MlflowClient(team_backend.url).get_run(report.run_id)
    keys = team_backend.s3.objects("artifacts/")
    assert any(report.run_id in key and key.endswith("data_report.json") for key in keys)
    assert any(key.endswith("evidence/roc_curve.png") for key in keys), run.info.artifact_uri
    assert team_backend.database_uri.startswith("postgresql+psycopg://")


def _served(client: httpx.Client, version: int) -> bool:
    try:
        model = client.get("/model").json()
        answer = client.post("/predict", json=CUSTOMER)
    except httpx.HTTPError:
        return False
    return model["version"] == version and answer.headers.get("X-Model-Version") == str(version)


def test_two_replicas_without_shared_disk_follow_a_promotion_and_a_rollback(
    team_backend: TeamBackend, tmp_path: Path
) -> None:
    name = f"churn_replicas_{uuid.uuid4().hex[:6]}"
    settings = Settings(tracking_uri=team_backend.url, model_name=name)
    v1 = lifecycle.train(settings, data_file=None, version_label="v1", seed=1, gate_f1=0.5)
    lifecycle.promote(settings, v1.version)
    v2 = lifecycle.train(settings, data_file=None, version_label="v2", seed=2, gate_f1=0.5)

    replicas = []
    try:
        for n in (1, 2):
            home = tmp_path / f"host{n}"
            home.mkdir()
            env = {"MLFLOW_TRACKING_URI": team_backend.url, "CHURNOPS_MODEL_NAME": name}
            replicas.append(start_api(env, home / "serve.log", "--workers", "1", isolated=True))
        for replica in replicas:
            wait_for(partial(_served, replica.client, v1.version), timeout=60)

        for target, move in ((v2.version, "promote"), (v1.version, "rollback")):
            if move == "promote":
                lifecycle.promote(settings, target)
            else:
                lifecycle.rollback(settings)
            for replica in replicas:
                wait_for(partial(_served, replica.client, target), timeout=FOLLOW_BOUND)
    finally:
        for replica in replicas:
            stop_api(replica)
    for n in (1, 2):
        # Each replica loaded its models through the server, into temporary folders: none of
        # the model's files, nor any store, is left in its working directory or HOME, except the
        # digest-checked copy of what it served, under cache/ (for a restart without registry).
        host = tmp_path / f"host{n}"
        left = {p.name for p in host.rglob("*") if p.is_file() and "cache" not in p.parts}
        assert "serve.log" in left
        assert list((host / "store" / "predictions").rglob("*.parquet")), "no stored predictions"
        model_files = {"MLmodel", "mlflow.db", "model.onnx", "holdout.parquet"}
        assert not left & model_files and not any(n.endswith(".skops") for n in left), left
        cached = {p.parent.name for p in (host / "cache").rglob("manifest.json")}
        assert cached and cached <= {f"v{v1.version}", f"v{v2.version}"}, cached
