"""The promises that must hold under faults, against a real tracking server: a rollback always
rolls back, a move to the version in production changes nothing, the gate fails closed, --force
never overrides safety, and a promoter killed with SIGKILL at any step of a move leaves nothing
that the next command does not finish with the original actor and reason."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import Result
from mlflow.tracking import MlflowClient

from churnops import ledger, lifecycle, tracking_server
from churnops.config import Settings
from churnops.predict import Predictions
from churnops.registry import loading, versions
from tests.conftest import (
    break_artifacts,
    free_port,
    moved,
    ok,
    run_churnops,
    start_api,
    stop_api,
    train_version,
    wait_for,
)
from tests.test_api import CUSTOMER


def _assert_ledger_agrees_with_production(settings: Settings) -> list[ledger.Entry]:
    entries = ledger.entries(settings)
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    assert "pending" not in {e.state for e in entries}
    assert "external" not in {e.action for e in entries}
    done = [e for e in entries if e.state == "done"]
    for before, after in itertools.pairwise(done):
        assert after.from_version == before.to_version
    assert versions.alias_version(settings) == done[-1].to_version
    return entries


def test_promoting_the_version_in_production_again_changes_nothing_and_rollback_still_rolls_back(
    cli: Callable[..., Result], settings: Settings
) -> None:
    for seed in ("1", "2"):
        train_version(cli, "--seed", seed)
    ok(cli("promote", "--version", "1", "--json"))
    ok(cli("promote", "--version", "2", "--json"))
    again = cli("promote", "--version", "2")
    assert again.exit_code == 0
    assert "already v2; nothing changed" in again.stdout
    assert ok(cli("promote", "--version", "2", "--json"))["changed"] is False
    assert len(ledger.entries(settings)) == 2
    assert moved(ok(cli("rollback", "--json"))) == (2, 1)
    same = ok(cli("rollback", "1", "--json"))
    assert same["changed"] is False and len(ledger.entries(settings)) == 3


def test_rollback_to_a_newer_version_is_refused_and_points_to_promote(
    cli: Callable[..., Result], settings: Settings
) -> None:
    for seed in ("1", "2"):
        train_version(cli, "--seed", seed)
    ok(cli("promote", "--version", "1", "--json"))
    refused = cli("rollback", "2")
    assert refused.exit_code == 1
    assert "newer than production" in refused.stderr
    assert "churnops promote --version 2" in refused.stderr
    assert versions.alias_version(settings) == 1 and len(ledger.entries(settings)) == 1


def test_force_overrides_quality_but_never_the_smoke_test(
    cli: Callable[..., Result], settings: Settings, tracking_store: Path
) -> None:
    train_version(cli, "--seed", "1")
    ok(cli("promote", "--json"))
    broken = train_version(cli, "--seed", "2")
    break_artifacts(tracking_store, settings, broken)
    forced = cli("promote", "--force", "--reason", "ship it anyway", "--json")
    assert forced.exit_code == 1
    document = json.loads(forced.stdout)
    assert "smoke test, which --force cannot override" in document["error"]
    assert versions.alias_version(settings) == 1 and len(ledger.entries(settings)) == 1


def test_the_policy_floor_refuses_a_version_whose_trainer_lowered_its_own_gate(
    cli: Callable[..., Result], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = train_version(cli, "--seed", "1", "--gate-f1", "0")
    assert versions.get_version(settings, version).gate_passed
    monkeypatch.setenv("CHURNOPS_GATE_F1_MIN", "0.99")
    refused = cli("promote", "--json")
    assert refused.exit_code == 1
    criteria = {c["name"]: c for c in json.loads(refused.stdout)["gate"]["criteria"]}
    assert criteria["held-out f1"]["passed"] is False
    assert criteria["held-out f1"]["threshold"].startswith(">= 0.99")
    assert versions.alias_version(settings) is None


def test_the_gate_refuses_with_exit_2_when_the_champion_cannot_be_read_for_now(
    cli: Callable[..., Result], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    for seed in ("1", "2"):
        train_version(cli, "--seed", seed)
    ok(cli("promote", "--version", "1", "--json"))
    real = loading.load_version

    def flaky(settings: Settings, version: int, threads: int = 1) -> loading.LoadedModel:
        if version == 1:
            raise ConnectionResetError("connection reset by peer")  # as a dropped download
        return real(settings, version, threads)

    monkeypatch.setattr(loading, "load_version", flaky)
    refused = cli("promote", "--version", "2")
    assert refused.exit_code == 2
    assert "could not compare with the champion v1" in refused.stderr and "retry" in refused.stderr
    assert versions.alias_version(settings) == 1 and len(ledger.entries(settings)) == 1


def test_a_champion_that_loads_but_cannot_score_the_candidates_rows_fails_that_criterion(
    cli: Callable[..., Result], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    for seed in ("1", "2"):
        train_version(cli, "--seed", seed)
    ok(cli("promote", "--version", "1", "--json"))
    real = loading.load_version

    class Refuses:
        kind, threshold = "sklearn", 0.5

        def predict_columns(self, columns: dict[str, list[Any]]) -> Predictions:
            raise ValueError("columns it was never trained on")

        def predict_frame(self, frame: pd.DataFrame) -> Predictions:
            raise ValueError("columns it was never trained on")

    def champion_that_refuses(
        settings: Settings, version: int, threads: int = 1
    ) -> loading.LoadedModel:
        loaded = real(settings, version, threads)
        return replace(loaded, engine=Refuses()) if version == 1 else loaded

    monkeypatch.setattr(loading, "load_version", champion_that_refuses)
    refused = cli("promote", "--version", "2", "--json")
    assert refused.exit_code == 1
    criteria = {c["name"]: c for c in json.loads(refused.stdout)["gate"]["criteria"]}
    champion = criteria["champion vs challenger"]
    assert (champion["passed"], champion["value"]) == (False, "not comparable")
    assert "columns it was never trained on" in champion["detail"]
    assert versions.alias_version(settings) == 1


def test_history_only_reads_and_shows_an_outside_move_as_unrecorded(
    cli: Callable[..., Result], settings: Settings
) -> None:
    for seed in ("1", "2"):
        train_version(cli, "--seed", seed)
    ok(cli("promote", "--version", "1", "--json"))
    MlflowClient(settings.tracking_uri).set_registered_model_alias(
        settings.model_name, "production", "2"
    )
    [latest, _] = ok(cli("history", "--json"))
    assert (latest["state"], latest["action"], latest["to_version"]) == (
        "unrecorded",
        "external",
        2,
    )
    assert len(ledger.entries(settings)) == 1
    assert moved(ok(cli("rollback", "--json"))) == (2, 1)
    assert [e.action for e in ledger.entries(settings)] == ["promote", "external", "undo"]


def test_the_api_refuses_a_version_whose_threshold_changed_after_its_promotion(
    cli: Callable[..., Result], settings: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    version = train_version(cli, "--seed", "1")
    ok(cli("promote", "--json"))
    assert ledger.entries(settings)[-1].digests
    MlflowClient(settings.tracking_uri).set_model_version_tag(
        settings.model_name, str(version), "threshold", "0.99"
    )
    api = start_api(env, tmp_path / "api.log", "--workers", "1")
    try:
        detail = wait_for(lambda: api.client.get("/model").json()["last_error"], timeout=60)
        assert f"version {version} differs from what its promotion gated" in detail
        assert "tag:threshold" in detail
        assert api.client.get("/ready").status_code == 503
    finally:
        stop_api(api)


def _crash(env: dict[str, str], step: str, *args: str) -> None:
    """Run a promote or rollback that SIGKILLs itself at ``step``."""
    done = run_churnops(
        *args,
        "--reason",
        f"crash {step}",
        env={**env, "CHURNOPS_FAILPOINT": step, "CHURNOPS_ACTOR": "alice"},
        timeout=300,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr


@pytest.mark.parametrize(
    ("step", "outcome"), [("after-intent", "aborted"), ("after-alias", "done")]
)
def test_a_promoter_killed_mid_move_is_finished_by_the_next_movers_with_its_own_actor(
    cli: Callable[..., Result], settings: Settings, env: dict[str, str], step: str, outcome: str
) -> None:
    for seed in range(1, 6):
        train_version(cli, "--seed", str(seed))
    ok(cli("promote", "--version", "1", "--json"))
    fast = {**env, "CHURNOPS_LEASE_SECONDS": "2", "CHURNOPS_MOVE_TIMEOUT": "120"}
    _crash(fast, step, "promote", "--version", "2")
    [crashed] = [e for e in ledger.entries(settings) if e.seq == 2]
    assert crashed.state == "pending" and crashed.actor == "alice"
    # Three movers at once: whoever finds the crashed entry finishes it; every one is served.
    movers = [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "churnops", "promote", "--version", str(v), "--force"),
                *("--reason", "after the crash", "--actor", f"bob{v}", "--json"),
            ],
            env={**os.environ, **fast},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for v in (3, 4, 5)
    ]
    results = [m.communicate(timeout=300) for m in movers]
    codes = [m.returncode for m in movers]
    assert all(code in (0, 1) for code in codes), results
    assert all("re-run" in err for m, (_, err) in zip(movers, results, strict=True) if m.returncode)
    entries = _assert_ledger_agrees_with_production(settings)
    [finished] = [e for e in entries if e.seq == 2]
    assert (finished.state, finished.actor, finished.reason) == (outcome, "alice", f"crash {step}")
    assert finished.resolved_by is not None and finished.resolved_by.startswith("bob")
    assert sum(code == 0 for code in codes) == len(entries) - 2
    # And a rollback afterwards really rolls back.
    before = versions.alias_version(settings)
    rolled = json.loads(run_churnops("rollback", "--json", env=fast).stdout)
    assert rolled["changed"] is True and rolled["from_version"] == before
    assert rolled["to_version"] != before
    _assert_ledger_agrees_with_production(settings)


def test_a_promoter_killed_before_its_intent_leaves_no_trace(
    cli: Callable[..., Result], settings: Settings, env: dict[str, str]
) -> None:
    for seed in ("1", "2"):
        train_version(cli, "--seed", seed)
    ok(cli("promote", "--version", "1", "--json"))
    _crash(env, "before-intent", "promote", "--version", "2")
    assert versions.alias_version(settings) == 1 and len(ledger.entries(settings)) == 1
    assert moved(ok(cli("promote", "--version", "2", "--json"))) == (1, 2)


def test_a_deleted_ledger_entry_is_named_instead_of_skipped(
    cli: Callable[..., Result], settings: Settings
) -> None:
    for seed in ("1", "2"):
        train_version(cli, "--seed", seed)
    ok(cli("promote", "--version", "1", "--json"))
    ok(cli("promote", "--version", "2", "--json"))
    first = ledger.entries(settings)[0]
    MlflowClient(settings.tracking_uri).delete_run(first.run_id)
    broken = cli("history")
    assert broken.exit_code == 1 and "which is missing" in broken.stderr


def test_the_api_refuses_a_version_larger_than_its_download_limit_before_downloading(
    cli: Callable[..., Result], env: dict[str, str], tmp_path: Path
) -> None:
    train_version(cli, "--seed", "1")
    ok(cli("promote", "--json"))
    capped = {**env, "CHURNOPS_MAX_MODEL_BYTES": "1000"}
    api = start_api(capped, tmp_path / "api.log", "--workers", "1")
    try:
        detail = wait_for(lambda: api.client.get("/model").json()["last_error"], timeout=60)
        assert "over the limit of 1,000 (CHURNOPS_MAX_MODEL_BYTES); not downloaded" in detail
        assert api.client.get("/ready").status_code == 503
    finally:
        stop_api(api)


@pytest.mark.slow
def test_a_replica_restarted_while_the_registry_is_down_serves_its_last_version_marked_stale(
    tmp_path: Path,
) -> None:
    port = free_port()
    settings = Settings(
        tracking_uri=f"http://127.0.0.1:{port}", data_dir=tmp_path / "store", model_name="churn"
    )
    env = {"MLFLOW_TRACKING_URI": settings.tracking_uri, "CHURNOPS_MODEL_NAME": "churn"}
    replica = tmp_path / "replica"
    replica.mkdir()
    server = tracking_server.start(settings, port=port, quiet=True)
    api = None
    try:
        first = lifecycle.train(settings, data_file=None, version_label="v1", seed=1, gate_f1=0.6)
        lifecycle.promote(settings, first.version)
        api = start_api(env, replica / "first.log", "--workers", "1")
        api.wait_until_every_worker_serves()
        assert api.client.get("/ready").json()["stale"] is False
        stop_api(api)
        server.stop()

        api = start_api(env, replica / "restarted.log", "--workers", "1")
        client = api.client
        wait_for(lambda: client.get("/ready").status_code == 200, timeout=60)
        assert api.client.get("/ready").json() == {
            "status": "ready",
            "model_version": first.version,
            "stale": True,
            "store": {"unwritten_rows": 0, "dropped_rows": 0, "failing": False},
        }
        model = api.client.get("/model").json()
        assert model["stale"] is True and model["registry_reachable"] is False
        response = api.client.post("/predict", json=CUSTOMER)
        assert response.status_code == 200 and response.headers["X-Model-Version"] == "1"
        stop_api(api)

        # A copy whose files no longer match their digests is never served.
        [skops] = (replica / "cache").rglob("model.skops")
        skops.write_bytes(skops.read_bytes() + b"tampered")
        api = start_api(env, replica / "tampered.log", "--workers", "1")
        client = api.client
        wait_for(lambda: client.get("/model").json()["registry_reachable"] is False, 30)
        assert api.client.get("/ready").status_code == 503

        server = tracking_server.start(settings, port=port, quiet=True)
        wait_for(lambda: client.get("/ready").status_code == 200, timeout=60)
        assert client.get("/ready").json()["stale"] is False
    finally:
        if api is not None:
            stop_api(api)
        server.stop()
