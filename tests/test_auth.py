"""`churnops server --auth`: MLflow's basic-auth app, its refusal to start without secrets, and
the roles churnops documents (viewer, deployer), driven through the real CLI over HTTP."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.server import get_app_client

from churnops import tracking_server
from churnops.config import Settings
from churnops.errors import ChurnopsError
from tests.conftest import free_port, run_churnops

ADMIN_PASSWORD = secrets.token_urlsafe(16)
MODEL = "churn_model"


@dataclass
class AuthServer:
    url: str

    def env(self, user: str, password: str) -> dict[str, str]:
        return {
            "MLFLOW_TRACKING_URI": self.url,
            "MLFLOW_TRACKING_USERNAME": user,
            "MLFLOW_TRACKING_PASSWORD": password,
            "CHURNOPS_MODEL_NAME": MODEL,
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        }


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    secrets_env = {
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32),
    }
    settings = Settings(data_dir=tmp_path_factory.mktemp("auth"))
    server = tracking_server.start(
        settings, port=free_port(), quiet=True, auth=True, extra_env=secrets_env
    )
    try:
        yield AuthServer(server.url)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def users(auth_server: AuthServer) -> dict[str, str]:
    """An admin-made viewer (READ) and deployer (EDIT on the model and its ledger), and v1, v2
    trained by the admin with v1 in production."""
    admin = auth_server.env("admin", ADMIN_PASSWORD)
    for step in (("train", "--version", "v1"), ("promote",), ("train", "--version", "v2")):
        done = run_churnops(*step, "--json", env=admin, timeout=300)
        assert done.returncode == 0, done.stderr
    passwords = {user: secrets.token_urlsafe(12) for user in ("viewer", "deployer", "deployer2")}
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = (
        "admin",
        ADMIN_PASSWORD,
    )
    try:
        client = get_app_client("basic-auth", tracking_uri=auth_server.url)
        for user, password in passwords.items():
            client.create_user(user, password)
        client.grant_user_permission("viewer", "registered_model", MODEL, "READ")
        for deployer in ("deployer", "deployer2"):
            client.grant_user_permission(deployer, "registered_model", MODEL, "EDIT")
        ledger = json.loads(
            run_churnops("history", "--json", env=admin).stdout or "[]"
        )  # the ledger experiment exists once the admin's promote wrote it
        assert ledger
        from mlflow.tracking import MlflowClient

        experiment = MlflowClient(auth_server.url).get_experiment_by_name(f"{MODEL}-ledger")
        assert experiment is not None
        for deployer in ("deployer", "deployer2"):
            client.grant_user_permission(deployer, "experiment", experiment.experiment_id, "EDIT")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return passwords


def _production(auth_server: AuthServer) -> int | None:
    done = run_churnops("status", "--json", env=auth_server.env("admin", ADMIN_PASSWORD))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["production_version"]


def test_auth_refuses_to_start_without_an_admin_password_and_a_secret(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_AUTH_")}
    env.pop("MLFLOW_FLASK_SERVER_SECRET_KEY", None)
    with pytest.raises(ChurnopsError, match="MLFLOW_AUTH_ADMIN_PASSWORD and MLFLOW_FLASK"):
        tracking_server.auth_environment(Settings(data_dir=tmp_path), env)
    done = run_churnops(
        "server", "--auth", "--port", str(free_port()), "--data-dir", str(tmp_path), env={}
    )
    assert done.returncode == 1 and "never uses a default password" in done.stderr


def test_a_wrong_password_is_a_clear_authentication_failure(auth_server: AuthServer) -> None:
    done = run_churnops("status", env=auth_server.env("admin", "not-the-password"))
    assert done.returncode == 1
    assert "authentication failed" in done.stderr and "MLFLOW_TRACKING_PASSWORD" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_viewer_reads_but_cannot_promote_or_roll_back(
    auth_server: AuthServer, users: dict[str, str]
) -> None:
    viewer = auth_server.env("viewer", users["viewer"])
    assert run_churnops("status", env=viewer).returncode == 0
    assert run_churnops("history", env=viewer).returncode == 0
    before = _production(auth_server)
    for command in (("promote", "--version", "2"),):
        done = run_churnops(*command, env=viewer)
        assert done.returncode == 1, done.stderr
        assert "permission denied" in done.stderr and "EDIT" in done.stderr
        assert "Traceback" not in done.stderr
    assert _production(auth_server) == before


def test_a_deployer_with_edit_can_promote_and_roll_back(
    auth_server: AuthServer, users: dict[str, str]
) -> None:
    deployer = auth_server.env("deployer", users["deployer"])
    promoted = run_churnops(
        "promote", "--version", "2", "--actor", "release-bot", "--json", env=deployer
    )
    assert promoted.returncode == 0, promoted.stderr
    assert _production(auth_server) == 2
    viewer = run_churnops("rollback", env=auth_server.env("viewer", users["viewer"]))
    assert viewer.returncode == 1 and "permission denied" in viewer.stderr
    assert _production(auth_server) == 2
    rolled = run_churnops("rollback", "--json", env=deployer)
    assert rolled.returncode == 0, rolled.stderr
    assert _production(auth_server) == 1
    history = json.loads(run_churnops("history", "--json", env=deployer).stdout)
    # --actor never replaces the authenticated user; it is kept beside it.
    assert [(e["actor"], e["on_behalf_of"]) for e in history[:2]] == [
        ("deployer", None),
        ("deployer", "release-bot"),
    ]


def test_another_deployer_finishes_a_crashed_deployers_move_without_an_admin(
    auth_server: AuthServer, users: dict[str, str]
) -> None:
    fast = {"CHURNOPS_LEASE_SECONDS": "2"}
    deployer = {**auth_server.env("deployer", users["deployer"]), **fast}
    crashed = run_churnops(
        "promote", "--version", "2", "--reason", "friday deploy",
        env={**deployer, "CHURNOPS_FAILPOINT": "after-alias"},
    )  # fmt: skip
    assert crashed.returncode == -9, crashed.stderr
    assert _production(auth_server) == 2
    colleague = {**auth_server.env("deployer2", users["deployer2"]), **fast}
    rolled = run_churnops("rollback", "--json", env=colleague)
    assert rolled.returncode == 0, rolled.stderr
    assert _production(auth_server) == 1
    [undo, finished, *_] = json.loads(run_churnops("history", "--json", env=colleague).stdout)
    assert (undo["actor"], undo["action"], undo["to_version"]) == ("deployer2", "undo", 1)
    assert (finished["actor"], finished["reason"], finished["state"]) == (
        "deployer",
        "friday deploy",
        "done",
    )
    assert finished["resolved_by"] == "deployer2"
