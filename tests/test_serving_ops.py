"""Serving in operation: broken versions, several workers, metrics, limits and the prediction log,
against a real tracking server and real `churnops serve` processes."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from churnops import lifecycle
from churnops.config import Settings
from churnops.monitoring import store
from churnops.registry import versions
from tests.conftest import break_artifacts, start_api, stop_api, wait_for, worker_versions
from tests.test_api import CUSTOMER


def _settings(tracking_url: str) -> tuple[Settings, dict[str, str]]:
    name = f"churn_ops_{uuid.uuid4().hex[:8]}"
    return (
        Settings(tracking_uri=tracking_url, model_name=name),
        {"MLFLOW_TRACKING_URI": tracking_url, "CHURNOPS_MODEL_NAME": name},
    )


def _train_and_promote(settings: Settings, seed: int = 1, promote: bool = True) -> int:
    report = lifecycle.train(
        settings, data_file=None, version_label=f"s{seed}", seed=seed, gate_f1=0.6
    )
    if promote:
        lifecycle.promote(settings, report.version)
    return report.version


def test_a_version_with_broken_artifacts_is_never_swapped_in_and_the_old_one_keeps_answering(
    tracking_url: str, tracking_store: Path, tmp_path: Path
) -> None:
    settings, env = _settings(tracking_url)
    _train_and_promote(settings, seed=1)
    broken = _train_and_promote(settings, seed=2, promote=False)
    break_artifacts(tracking_store, settings, broken)
    api = start_api(env, tmp_path / "serve.log", "--workers", "1")
    try:
        wait_for(lambda: api.client.get("/ready").status_code == 200, timeout=30)
        # NB: churnops refuses to promote it, even with --force; moved behind its back, as a
        # raw MLflow client or the UI could.
        versions.set_alias(settings, broken)

        def failure_reported() -> bool:
            model = api.client.get("/model").json()
            return model["alias_version"] == broken and bool(model["last_error"])

        wait_for(failure_reported, timeout=15)
        model = api.client.get("/model").json()
        assert model["version"] == 1
        assert f"version {broken} not swapped in" in model["last_error"]
        response = api.client.post("/predict", json=CUSTOMER)
        assert response.status_code == 200 and response.headers["X-Model-Version"] == "1"
        metrics = api.client.get("/metrics").text
        failures = re.search(r"^churnops_model_swap_failures_total ([\d.]+)$", metrics, re.M)
        assert failures and float(failures.group(1)) >= 1
        assert api.client.get("/ready").status_code == 200

        healthy = _train_and_promote(settings, seed=3)
        wait_for(lambda: api.client.get("/model").json()["version"] == healthy, timeout=15)
        assert api.client.get("/model").json()["last_error"] is None
    finally:
        stop_api(api)


def test_with_two_workers_both_converge_on_a_move_within_the_poll_bound(
    tracking_url: str, tmp_path: Path
) -> None:
    settings, env = _settings(tracking_url)
    first = _train_and_promote(settings, seed=1)
    second = _train_and_promote(settings, seed=2, promote=False)
    api = start_api(env, tmp_path / "serve.log", "--workers", "2")
    try:

        def both_serve(version: int) -> bool:
            versions = worker_versions(api.client)
            return len(versions) == 2 and set(versions.values()) == {float(version)}

        wait_for(lambda: both_serve(first), timeout=60)
        lifecycle.promote(settings, second)
        # One poll interval (1 s) plus a load, with margin for a loaded CI machine.
        wait_for(lambda: both_serve(second), timeout=5)
        seen = set()
        for _ in range(12):
            with httpx.Client(base_url=api.url, timeout=10) as fresh:
                response = fresh.post("/predict", json=CUSTOMER)
                assert response.json()["model_version"] == int(response.headers["X-Model-Version"])
                seen.add(response.headers["X-Model-Version"])
                seen.add(str(fresh.get("/model").json()["version"]))
        assert seen == {str(second)}
    finally:
        stop_api(api)


def test_metrics_parse_as_prometheus_text_with_requests_latency_versions_and_classes(
    tracking_url: str, tmp_path: Path
) -> None:
    settings, env = _settings(tracking_url)
    _train_and_promote(settings, seed=1)
    api = start_api(env, tmp_path / "serve.log", "--workers", "1")
    try:
        wait_for(lambda: api.client.get("/ready").status_code == 200, timeout=30)
        for _ in range(3):
            assert api.client.post("/predict", json=CUSTOMER).status_code == 200
        assert api.client.post("/predict", json={}).status_code == 422
        response = api.client.get("/metrics")
        assert response.headers["content-type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(response.text)}
        requests = {
            (s.labels["route"], s.labels["status"]): s.value
            for s in families["churnops_http_requests"].samples
            if s.name.endswith("_total")
        }
        assert requests[("/predict", "200")] == 3
        assert requests[("/predict", "422")] == 1
        assert families["churnops_http_request_duration_seconds"].type == "histogram"
        assert [s.value for s in families["churnops_model_version"].samples] == [1.0]
        swaps = [
            s.value for s in families["churnops_model_swaps"].samples if s.name.endswith("_total")
        ]
        assert swaps == [1.0]
        classes = {
            s.labels["predicted_class"]: s.value
            for s in families["churnops_predictions"].samples
            if s.name.endswith("_total")
        }
        assert sum(classes.values()) == 3
    finally:
        stop_api(api)


def test_oversized_bodies_get_413_and_answered_rows_reach_the_prediction_store(
    tracking_url: str, tmp_path: Path
) -> None:
    settings, env = _settings(tracking_url)
    _train_and_promote(settings, seed=1)
    env |= {"CHURNOPS_MAX_BODY_BYTES": "2000", "CHURNOPS_DATA_DIR": str(tmp_path)}
    api = start_api(env, tmp_path / "serve.log", "--workers", "1")
    try:
        wait_for(lambda: api.client.get("/ready").status_code == 200, timeout=30)
        too_big = api.client.post("/predict/batch", json={"customers": [CUSTOMER] * 40})
        assert too_big.status_code == 413
        assert "exceeds the limit of 2000 bytes" in too_big.json()["detail"]
        ok = api.client.post(
            "/predict/batch", json={"customers": [CUSTOMER] * 3}, headers={"X-Request-ID": "req-42"}
        )
        assert ok.status_code == 200
    finally:
        stop_api(api)
    rows = store.read_predictions(store.open_store(str(tmp_path / "store")), settings.model_name)
    assert rows.num_rows == 3
    assert set(rows["request_id"].to_pylist()) == {"req-42"}
    first = rows.to_pylist()[0]
    assert {k.removeprefix("input."): first[k] for k in first if k.startswith("input.")} == CUSTOMER
    assert first["version"] == 1 and first["source"] == "api"


def test_no_store_keeps_no_predictions(tracking_url: str, tmp_path: Path) -> None:
    settings, env = _settings(tracking_url)
    _train_and_promote(settings, seed=1)
    env |= {"CHURNOPS_DATA_DIR": str(tmp_path)}
    api = start_api(env, tmp_path / "serve.log", "--workers", "1", "--no-store")
    try:
        wait_for(lambda: api.client.get("/ready").status_code == 200, timeout=30)
        assert api.client.post("/predict", json=CUSTOMER).status_code == 200
    finally:
        stop_api(api)
    assert not (tmp_path / "store").exists()


def test_sigterm_lets_an_in_flight_request_finish_before_the_api_exits(
    tracking_url: str, tmp_path: Path
) -> None:
    settings, env = _settings(tracking_url)
    _train_and_promote(settings, seed=1)
    api = start_api(env, tmp_path / "serve.log", "--workers", "1")
    wait_for(lambda: api.client.get("/ready").status_code == 200, timeout=30)
    body = json.dumps({"customers": [CUSTOMER] * 50}).encode()
    half_sent = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield body[:100]
        half_sent.set()
        time.sleep(1.0)  # the request is in flight while the API is told to stop
        yield body[100:]

    answers: list[httpx.Response] = []
    client = threading.Thread(
        target=lambda: answers.append(
            httpx.post(
                f"{api.url}/predict/batch",
                content=slow_body(),
                headers={"content-type": "application/json"},
                timeout=30,
            )
        )
    )
    client.start()
    assert half_sent.wait(10)
    time.sleep(0.2)
    api.process.send_signal(signal.SIGTERM)
    client.join(30)
    try:
        assert [a.status_code for a in answers] == [200]
        assert len(answers[0].json()["predictions"]) == 50
        # uvicorn re-raises the SIGTERM once it has shut down cleanly.
        assert api.process.wait(timeout=30) in (0, -signal.SIGTERM)
        log = api.log.read_text()
        assert log.index("Waiting for connections to close") < log.index(
            "Application shutdown complete"
        )
    finally:
        stop_api(api)
