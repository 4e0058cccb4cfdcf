"""The feedback loop end to end, with a real tracking server and real `churnops serve`
processes: simulated traffic through the API into the prediction store, late outcomes joined
back, `monitor`'s realised metrics equal to scikit-learn's on the joined rows, an alert exit
code, a rollback advised and done through the gate and the ledger, the run in MLflow; every
answered row stored after SIGTERM; the team store on S3."""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc
import pytest
from click.testing import Result
from mlflow.tracking import MlflowClient
from sklearn.metrics import f1_score, roc_auc_score

from churnops import data, lifecycle
from churnops.config import Settings
from churnops.errors import StaleMoveError
from churnops.monitoring import simulate, store
from tests.conftest import (
    ApiProcess,
    TeamBackend,
    ok,
    start_api,
    stop_api,
    train_version,
    wait_for,
)
from tests.test_api import CUSTOMER

HORIZON_DAYS = 5


def joined_by_hand(rows: pd.DataFrame, outcomes: pd.DataFrame, now: datetime) -> pd.Series:
    """The customer-time join rule written out row by row, as a reference."""
    by_customer: dict[str, list[tuple[pd.Timestamp, int]]] = {}
    for customer, moment, outcome in outcomes.itertuples(index=False):
        by_customer.setdefault(customer, []).append(
            (pd.Timestamp(moment), 1 if outcome == "churned" else 0)
        )
    horizon = pd.Timedelta(days=HORIZON_DAYS)
    labels = []
    for customer, moment in zip(rows["customer_id"], rows["time"], strict=True):
        seen = [o for t, o in by_customer.get(customer, []) if moment <= t <= moment + horizon]
        if 1 in seen:
            labels.append(1.0)
        elif 0 in seen and moment + horizon <= pd.Timestamp(now):
            labels.append(0.0)
        else:
            labels.append(float("nan"))
    return pd.Series(labels, index=rows.index)


def test_the_loop_from_served_rows_to_outcomes_to_a_monitored_rollback(
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
    try:
        wait_for(lambda: api.client.get("/ready").status_code == 200, timeout=60)
        simulate.simulate(
            api.url,
            tmp_path / "before.csv",
            days=15,
            rows_per_day=200,
            horizon_days=HORIZON_DAYS,
            end=now - timedelta(days=15),
            now=now,
        )
        # NB: a version that is truly worse on the same customers: trained where churn followed
        # another concept (complaints stop predicting it), then served to ordinary ones.
        other = tmp_path / "other-concept.csv"
        data.generate(3000, seed=11, concept_drift=1.0).to_csv(other, index=False)
        second = train_version(cli, "--data", str(other))
        ok(cli("promote", "--json", "--version", str(second), "--reason", "another concept"))
        wait_for(lambda: api.client.get("/model").json()["version"] == second, timeout=30)
        simulate.simulate(
            api.url,
            tmp_path / "after.csv",
            days=15,
            rows_per_day=200,
            horizon_days=HORIZON_DAYS,
            end=now,
            now=now,
            seed=8,
        )
    finally:
        stop_api(api)
    for name in ("before.csv", "after.csv"):
        ok(cli("labels", "add", "--json", str(tmp_path / name)))

    result = cli("monitor", "--json")
    assert result.exit_code == 3, result.output
    report = json.loads(result.stdout)
    rows = store.read_predictions(store.settings_store(settings), settings.model_name)
    frame = rows.to_pandas()
    outcomes = pd.concat([pd.read_csv(tmp_path / n) for n in ("before.csv", "after.csv")])
    outcomes["time"] = pd.to_datetime(outcomes["time"], utc=True)
    frame["outcome"] = joined_by_hand(frame, outcomes, datetime.now(UTC))
    assert report["rows"] == len(frame) == 6000
    versions = {v["version"]: v for v in report["versions"]}
    for version in (first, second):
        mine = frame[(frame["version"] == version) & frame["outcome"].notna()]
        found = versions[version]["realised"]
        assert versions[version]["labelled"] == len(mine)
        assert found["f1"]["value"] == pytest.approx(f1_score(mine["outcome"], mine["label"]))
        # NB: the default engine's ROC AUC comes from probability bins, within its bound.
        exact_auc = roc_auc_score(mine["outcome"], mine["probability"])
        within = versions[version]["roc_auc_within"]["realised"]
        assert 0 < within < 1e-3
        assert abs(found["roc_auc"]["value"] - exact_auc) <= within
    kinds = {a["kind"] for a in report["alerts"]}
    assert "realised_f1_below_gate" in kinds
    assert report["advice"]["rollback_to"] == first
    assert report["advice"]["command"].startswith("churnops rollback --reason")

    acted = cli("monitor", "--json", "--auto-rollback")
    assert acted.exit_code == 3
    assert json.loads(acted.stdout)["rolled_back"] == {
        "from_version": second,
        "to_version": first,
        "changed": True,
    }
    status = ok(cli("status", "--json"))
    assert status["production_version"] == first
    # NB: a second monitor that decided "v{second} -> v{first}" before the first one acted must
    # not roll back again, from v{first} further down (it once did, with the same reason).
    with pytest.raises(StaleMoveError, match=f"no longer v{second}"):
        lifecycle.rollback(
            settings.model_copy(update={"actor": "churnops-monitor"}),
            reason=report["advice"]["reason"],
            expected=second,
            expected_target=first,
        )
    assert ok(cli("status", "--json"))["production_version"] == first
    [latest, *_] = ok(cli("history", "--json"))
    assert latest["actor"] == "churnops-monitor" and latest["reason"].startswith("monitor: ")
    assert latest["gate"] is not None and latest["to_version"] == first
    assert latest["action"] == "undo"  # NB: the production stack pops: v{second} is not next

    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    experiment = client.get_experiment_by_name(f"{settings.model_name}-monitoring")
    assert experiment is not None
    [run, _] = client.search_runs([experiment.experiment_id])
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"report.html", "report.json", "f1_over_time.png", "drift.png"} <= files
    history = client.get_metric_history(run.info.run_id, f"v{second}.window.estimated_f1")
    ends = {
        int(datetime.fromisoformat(w["end"]).timestamp() * 1000)
        for w in versions[second]["windows"]
    }
    assert history and {m.timestamp for m in history} <= ends
    assert {m.step for m in history} <= {t // 1000 for t in ends}
    # NB: one figure per question: the tags, the run's metrics and `status` show the period's
    # figures `monitor` printed, not the last window's.
    printed = json.loads(acted.stdout)["versions"]
    period = {v["version"]: v for v in printed}[second]
    tags = client.get_model_version(settings.model_name, str(second)).tags
    metrics = client.get_run(run.info.run_id).data.metrics
    for figure in (float(tags["monitor.realised_f1"]), metrics[f"v{second}.realised_f1"]):
        assert figure == pytest.approx(period["realised"]["f1"]["value"], abs=1e-4)
    for figure in (float(tags["monitor.estimated_f1"]), metrics[f"v{second}.estimated_f1"]):
        assert figure == pytest.approx(period["estimated"]["f1"], abs=1e-4)
    assert int(tags["monitor.rows"]) == period["rows"] == metrics[f"v{second}.rows"]
    [listed] = [v for v in ok(cli("status", "--json"))["versions"] if v["version"] == second]
    assert listed["monitor"]["rows"] == str(period["rows"])
    assert listed["monitor"]["horizon_days"] == "5"


def test_every_answered_row_is_stored_after_sigterm_with_two_workers(
    cli: Callable[..., Result], env: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    version = train_version(cli)
    ok(cli("promote", "--json", "--version", str(version), "--reason", "first"))
    # NB: a long flush interval, so the rows reach the store only through the shutdown flush.
    slow_flush = {"CHURNOPS_STORE_FLUSH_SECONDS": "600"}
    api = start_api(env | slow_flush, tmp_path / "serve.log", "--workers", "2")
    answered: list[str] = []
    lock = threading.Lock()

    def send(n: int) -> None:
        for i in range(40):
            if i % 4 == 0:
                body = {"customers": [CUSTOMER] * 5}
                response = api.client.post("/predict/batch", json=body)
                ids = [p["prediction_id"] for p in response.json()["predictions"]]
            else:
                ids = [api.client.post("/predict", json=CUSTOMER).json()["prediction_id"]]
            with lock:
                answered.extend(ids)

    try:
        api.wait_until_every_worker_serves()
        threads = [threading.Thread(target=send, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        stop_api(api)
    stored = store.read_predictions(store.settings_store(settings), settings.model_name)
    assert len(answered) == 6 * (10 * 5 + 30)
    assert sorted(stored["prediction_id"].to_pylist()) == sorted(answered)
    files = list((Path(settings.store_uri) / "predictions").rglob("*.parquet"))
    assert len(files) == 2  # one per worker: everything was flushed once, at shutdown


def test_rows_answered_before_a_sigkill_are_stored_once_by_the_next_worker(
    cli: Callable[..., Result], env: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    """A killed worker loses only the rows of its last conversion tick (CONVERT_SECONDS):
    rows answered before it are in its spool, and the worker that replaces it (the supervisor
    restarts it; or the next `serve` after the whole group was killed) writes them, once."""
    version = train_version(cli)
    ok(cli("promote", "--json", "--version", str(version), "--reason", "first"))
    slow_flush = {"CHURNOPS_STORE_FLUSH_SECONDS": "600"}
    log = tmp_path / "serve.log"
    answered: list[str] = []

    def send(api: ApiProcess, requests: int) -> None:
        for i in range(requests):
            if i % 4 == 0:
                body = {"customers": [CUSTOMER] * 5}
                response = api.client.post("/predict/batch", json=body)
                answered.extend(p["prediction_id"] for p in response.json()["predictions"])
            else:
                answered.append(api.client.post("/predict", json=CUSTOMER).json()["prediction_id"])

    def kill(pids: list[int]) -> None:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)

    spool = Settings(data_dir=tmp_path, prediction_store=settings.store_uri).spool_dir
    assert spool is not None

    def spooled() -> int:
        # NB: a worker's rows reach its spool within one tick of being answered.
        rows = 0
        for path in spool.glob("*.arrow"):
            with pa.OSFile(str(path)) as source:
                rows += pa.ipc.open_file(source).read_all().num_rows
        return rows

    def spool_owners() -> list[int]:
        # NB: spool files are named <host>-<pid>-<random>-<n>.arrow
        return sorted({int(path.name.split("-")[1]) for path in spool.glob("*.arrow")})

    api = start_api(env | slow_flush, log, "--workers", "2")
    try:
        api.wait_until_every_worker_serves()
        send(api, 60)
        wait_for(lambda: spooled() == len(answered), timeout=10)
        [holder] = spool_owners()
        kill([holder])
        # NB: the supervisor starts a new worker, which takes the dead one's spool over.
        wait_for(lambda: holder not in spool_owners() and spooled() == len(answered), 60)
        api.client.close()
        api.client = httpx.Client(base_url=api.url, timeout=10)
        wait_for(lambda: ready(api), timeout=30)
        send(api, 40)
        wait_for(lambda: spooled() == len(answered), timeout=10)
        # NB: now the whole group, supervisor included, as a machine's OOM killer might.
        workers = {int(lock.name.split("-")[1]) for lock in spool.glob("*.lock")} - {holder}
        # NB: the supervisor first, so it cannot start a worker after the others died.
        kill([api.process.pid, *workers])
        api.process.wait(timeout=10)
    finally:
        stop_api(api)
    assert not store.read_predictions(store.settings_store(settings), settings.model_name)
    again = start_api(env | slow_flush, tmp_path / "again.log", "--workers", "1")
    try:
        wait_for(lambda: ready(again), timeout=60)
        recovered = again.client.get("/model").json()["store"]["recovered_rows"]
    finally:
        stop_api(again)
    stored = store.read_predictions(store.settings_store(settings), settings.model_name)
    ids = stored["prediction_id"].to_pylist()
    assert len(answered) == 15 * 5 + 45 + 10 * 5 + 30
    assert sorted(ids) == sorted(answered)  # every row, none twice
    assert 0 < recovered <= len(answered)


def ready(api: ApiProcess) -> bool:
    return api.client.get("/ready").status_code == 200


def test_replicas_write_one_prediction_store_on_s3(
    cli: Callable[..., Result],
    env: dict[str, str],
    settings: Settings,
    team_backend: TeamBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    version = train_version(cli)
    ok(cli("promote", "--json", "--version", str(version), "--reason", "first"))
    uri = f"s3://churnops/predictions-{uuid.uuid4().hex[:8]}"
    s3 = team_backend.s3.server_env() | {"CHURNOPS_PREDICTION_STORE": uri}
    replicas = []
    try:
        for n in (1, 2):
            folder = tmp_path / f"host{n}"
            folder.mkdir()
            replicas.append(start_api(env | s3, folder / "serve.log", "--workers", "1"))
        ids = []
        for replica in replicas:
            wait_for(functools.partial(ready, replica), timeout=60)
            body = {**CUSTOMER, "customer_id": "C1"}
            ids += [replica.client.post("/predict", json=body).json()["prediction_id"]]
    finally:
        for replica in replicas:
            stop_api(replica)
    for key, value in s3.items():
        monkeypatch.setenv(key, value)
    # NB: the endpoint comes from the same variables the replicas read, through Settings.
    stored = store.read_predictions(store.settings_store(Settings()), settings.model_name)
    assert sorted(stored["prediction_id"].to_pylist()) == sorted(ids)
    assert stored["customer_id"].to_pylist() == ["C1", "C1"]
    objects = team_backend.s3.objects(uri.removeprefix("s3://churnops/"))
    assert len(objects) == 2 and all("/predictions/date=" in o for o in objects)
    labels_file = tmp_path / "outcomes.csv"
    labels_file.write_text("prediction_id,churn\n" + "".join(f"{i},yes\n" for i in ids))
    added = ok(cli("labels", "add", "--json", str(labels_file)))
    assert added["added"] and added["unknown"] == 0
    assert any("/labels/" in o for o in team_backend.s3.objects(uri.removeprefix("s3://churnops/")))


def churn_export(rows: int, seed: int) -> pd.DataFrame:
    """A table with the shapes real churn exports have: 0/1 integer flags, a boolean, a numeric
    column with a few single-space cells, and a high-cardinality surname."""
    rng = np.random.default_rng(seed)
    frame = data.generate(rows, seed=seed)
    frame["senior_citizen"] = rng.integers(0, 2, rows)
    frame["has_credit_card"] = (rng.random(rows) < 0.7).astype(int)
    frame["paperless"] = rng.random(rows) < 0.6
    frame["surname"] = rng.choice([f"name{i}" for i in range(2900)], rows)
    charges = (frame["tenure_months"] * rng.uniform(20, 90, rows)).round(2).astype(object)
    charges[rng.choice(rows, 11, replace=False)] = " "
    frame["total_charges"] = charges
    return frame


def test_a_table_sent_through_the_api_shows_no_drift_against_its_own_training(
    cli: Callable[..., Result],
    env: dict[str, str],
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "export.csv"
    churn_export(5000, 11).to_csv(path, index=False)
    version = train_version(cli, "--data", str(path))
    ok(cli("promote", "--json", "--version", str(version), "--reason", "first"))
    loop = {"CHURNOPS_STORE_FLUSH_SECONDS": "0.3"}
    monkeypatch.setenv("CHURNOPS_STORE_FLUSH_SECONDS", "0.3")
    table = data.load_table(path).features.assign(customer_id=pd.read_csv(path)["customer_id"])
    customers = [
        {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
        for row in table.to_dict(orient="records")
    ]
    api = start_api(env | loop, tmp_path / "serve.log", "--workers", "1")
    try:
        wait_for(lambda: api.client.get("/ready").status_code == 200, timeout=60)
        schema = api.client.get("/openapi.json").json()["components"]["schemas"]["Customer"]
        assert schema["properties"]["total_charges"]["anyOf"][0]["type"] == "number"
        for start in range(0, len(customers), 500):
            answer = api.client.post(
                "/predict/batch", json={"customers": customers[start : start + 500]}
            )
            assert answer.status_code == 200, answer.text
    finally:
        stop_api(api)
    result = cli("monitor", "--json", "--no-log")
    report = json.loads(result.stdout)
    [served] = report["versions"]
    assert served["rows"] == 5000
    columns = {c["column"]: c for c in served["drift"]["columns"]}
    assert {"senior_citizen", "has_credit_card", "paperless", "total_charges"} <= set(columns)
    assert [c for c, found in columns.items() if found["drifted"]] == []
    assert columns["senior_citizen"]["statistic"] is not None
    assert served["drift"]["dataset_drift"] is False


def _stored_days(
    settings: Settings, version: int, first_day: int, days: int, right: float, now: datetime
) -> list[tuple[str, datetime, str]]:
    """``days`` days of 200 stored predictions of built-in customers by ``version`` (a share
    ``right`` of labels correct), written straight into the store with their inputs; the
    outcomes a horizon of 30 days would bring."""
    rng = np.random.default_rng(version)
    target = store.settings_store(settings)
    outcomes = []
    for day in range(first_day, first_day + days):
        moment = now - timedelta(days=60 - day)
        customers_frame = data.generate(200, seed=version * 1000 + day)
        truth = customers_frame[data.TARGET].to_numpy() == 1
        inputs = {
            c: pa.array(customers_frame[c].to_numpy())
            for c in customers_frame.columns
            if c not in ("customer_id", data.TARGET)
        }
        label = np.where(rng.random(200) < right, truth, rng.random(200) < 0.25)
        customers = [f"v{version}-{day}-{i}" for i in range(200)]
        meta = store.RowsMeta(
            moment.timestamp(), moment.timestamp(), "batch", settings.model_name, version,
            settings.alias, 0.5, uuid.uuid4().hex,
        )  # fmt: skip
        table = store.rows_table(
            meta,
            pa.array([uuid.uuid4().hex for _ in customers]),
            np.where(label, 0.8, 0.2) + rng.uniform(-0.1, 0.1, 200),
            label.astype(int),
            pa.array(customers),
            inputs,
        )
        store.write_predictions(target, table)
        for customer, churned in zip(customers, truth, strict=True):
            seen = moment + timedelta(days=2 if churned else 30)
            if seen <= now:
                outcomes.append((customer, seen, "churned" if churned else "retained"))
    return outcomes


def test_a_changed_horizon_is_reported_and_never_acted_on_automatically(
    cli: Callable[..., Result],
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = train_version(cli)
    ok(cli("promote", "--json", "--version", str(first), "--reason", "first"))
    second = train_version(cli, "--seed", "7")
    ok(cli("promote", "--json", "--version", str(second), "--reason", "second"))
    now = datetime.now(UTC)
    outcomes = _stored_days(settings, first, 0, 30, 0.9, now)
    outcomes += _stored_days(settings, second, 30, 30, 0.2, now)
    labels_file = tmp_path / "outcomes.csv"
    frame = pd.DataFrame(outcomes, columns=["customer_id", "time", "churn"])
    frame["time"] = pd.to_datetime(frame["time"], utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    frame.to_csv(labels_file, index=False)
    ok(cli("labels", "add", "--json", str(labels_file)))

    monkeypatch.setenv("CHURNOPS_CHURN_HORIZON_DAYS", "30")
    usual = cli("monitor", "--json")
    assert usual.exit_code == 3, usual.output
    assert json.loads(usual.stdout)["horizon"]["changed"] == []
    assert json.loads(usual.stdout)["advice"]["rollback_to"] == first

    monkeypatch.setenv("CHURNOPS_CHURN_HORIZON_DAYS", "7")
    acted = cli("monitor", "--json", "--auto-rollback")
    report = json.loads(acted.stdout)
    assert report["horizon"]["changed"] == [first, second]
    assert report["horizon"]["recorded_days"] == {str(first): 30.0, str(second): 30.0}
    assert "rolled_back" not in report
    assert report["horizon"]["auto_rollback"].startswith("not done: the churn horizon in force")
    assert ok(cli("status", "--json"))["production_version"] == second
    text = cli("monitor", "--no-log")
    assert "NOTE: the churn horizon in force, 7 days, differs" in text.stdout
    tags = (
        MlflowClient(settings.tracking_uri).get_model_version(settings.model_name, str(second)).tags
    )
    assert tags["monitor.horizon_days"] == "30"
