"""`train --from-store` end to end: after a concept drift, a version trained on what production
served (and the outcomes that came back) beats the serving version on the next period's
customers, shadowed on the same rows; the run says what it learned from and reproduces; too few
mature outcomes is a clear refusal."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import Result
from mlflow.tracking import MlflowClient

from churnops.config import Settings
from churnops.monitoring import simulate
from tests.conftest import ok, start_api, stop_api, train_version, wait_for
from tests.test_challenger_e2e import challenger_active, stored

HORIZON_DAYS = 5


@pytest.mark.slow
def test_a_version_trained_from_the_store_after_a_concept_drift_beats_the_serving_one(
    cli: Callable[..., Result],
    env: dict[str, str],
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = {"CHURNOPS_STORE_FLUSH_SECONDS": "0.3", "CHURNOPS_CHURN_HORIZON_DAYS": "5"}
    for key, value in loop.items():
        monkeypatch.setenv(key, value)
    first = train_version(cli)
    ok(cli("promote", "--json", "--version", str(first), "--reason", "first"))
    api = start_api(env | loop, tmp_path / "serve.log", "--workers", "1")
    now = datetime.now(UTC)
    drift_end = now - timedelta(days=12)
    try:
        wait_for(lambda: api.client.get("/ready").status_code == 200, timeout=60)
        # NB: the churn concept changes (complaints stop predicting churn, tenure starts to);
        # the customers do not.
        simulate.simulate(
            api.url,
            tmp_path / "drifted.csv",
            days=16,
            rows_per_day=150,
            concept_day=0,
            horizon_days=HORIZON_DAYS,
            end=drift_end,
            now=now,
            seed=3,
        )
        ok(cli("labels", "add", "--json", str(tmp_path / "drifted.csv")))

        # NB: a range before any traffic (tests/test_training_table.py words the refusal with
        # outcomes still maturing).
        early = (drift_end - timedelta(days=17)).isoformat()
        refused = cli("train", "--from-store", "--until", early, "--json")
        assert refused.exit_code == 1, refused.output
        message = json.loads(refused.stdout)["error"]
        assert "have mature outcomes" in message and "at least 50" in message

        trained = ok(cli("train", "--from-store", "--until", drift_end.isoformat(), "--json"))
        second = trained["version"]
        run = MlflowClient(settings.tracking_uri).get_run(trained["run_id"])
        params = run.data.params
        assert int(params["from_store.labelled_rows"]) >= 1_000
        assert params["from_store.learned_from_version"] == str(first)
        assert params["split"].startswith("out of time")
        assert params["from_store.until"] == drift_end.isoformat()

        reproduced = ok(cli("reproduce", "--version", str(second), "--json"))
        assert reproduced["identical"] is True

        ok(cli("challenger", "set", str(second), "--mode", "shadow", "--json"))
        wait_for(lambda: challenger_active(api, second), timeout=60)
        simulate.simulate(
            api.url,
            tmp_path / "next.csv",
            days=7,
            rows_per_day=150,
            concept_day=0,
            horizon_days=HORIZON_DAYS,
            end=now - timedelta(days=HORIZON_DAYS),
            now=now,
            seed=4,
        )
        # NB: the shadow scores off the request path: wait until every row is stored.
        wait_for(lambda: (stored(settings)["role"] == "shadow").sum() == 7 * 150, timeout=60)
    finally:
        stop_api(api)
    ok(cli("labels", "add", "--json", str(tmp_path / "next.csv")))
    compared = ok(cli("compare", "--no-log", "--json"))
    # NB: kept beside the test's files: the README's loop section quotes a run of this test.
    (tmp_path / "compare.json").write_text(json.dumps(compared, indent=1))
    shadow = compared["shadow"]
    assert shadow["labelled"] >= 500
    assert shadow["f1"]["b"] > shadow["f1"]["a"]
    assert compared["verdict"]["result"] == "better", compared["verdict"]["message"]
