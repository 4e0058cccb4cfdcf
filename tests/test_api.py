"""The prediction API as a real `churnops serve` process, over HTTP."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from churnops import compiled, lifecycle
from churnops.config import Settings
from tests.conftest import ApiProcess, start_api, stop_api

CUSTOMER = {
    "tenure_months": 3,
    "num_complaints": 4,
    "avg_session_minutes": 12.5,
    "plan_type": "basic",
    "region": "EU",
}


@pytest.fixture(scope="module")
def api(tracking_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    """An API serving a freshly trained and promoted model, with a 5-row batch limit."""
    name = f"churn_api_{uuid.uuid4().hex[:8]}"
    settings = Settings(tracking_uri=tracking_url, model_name=name)
    report = lifecycle.train(settings, data_file=None, version_label="v1", seed=42, gate_f1=0.6)
    lifecycle.promote(settings, report.version)
    env = {
        "MLFLOW_TRACKING_URI": tracking_url,
        "CHURNOPS_MODEL_NAME": name,
        "CHURNOPS_MAX_BATCH_ROWS": "5",
    }
    started = start_api(env, tmp_path_factory.mktemp("api") / "serve.log")
    started.wait_until_every_worker_serves()
    yield started
    stop_api(started)


def test_health_and_ready_answer_once_a_model_is_loaded(api: ApiProcess) -> None:
    assert api.client.get("/health").json() == {"status": "ok"}
    assert api.client.get("/ready").json() == {
        "status": "ready",
        "model_version": 1,
        "stale": False,
        "store": {"unwritten_rows": 0, "dropped_rows": 0, "failing": False},
    }


def test_model_reports_version_run_and_metrics(api: ApiProcess) -> None:
    body = api.client.get("/model").json()
    assert body["version"] == 1 and body["alias"] == "production"
    assert body["run_id"] and body["loaded_at"]
    assert body["metrics"]["f1"] > 0.6
    assert body["registry_reachable"] is True and body["last_error"] is None


def test_predict_answers_with_probability_version_header_and_request_id(api: ApiProcess) -> None:
    response = api.client.post("/predict", json=CUSTOMER)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "prediction_id",
        "prediction",
        "probability",
        "model_version",
        "request_id",
    }
    assert body["prediction"] in (0, 1) and 0.0 <= body["probability"] <= 1.0
    threshold = api.client.get("/model").json()["threshold"]
    assert body["prediction"] == int(body["probability"] >= threshold)
    assert body["model_version"] == 1
    assert response.headers["X-Model-Version"] == "1"
    echoed = api.client.post("/predict", json=CUSTOMER, headers={"X-Request-ID": "abc-1"})
    assert echoed.json()["request_id"] == "abc-1"


def test_a_long_tenured_happy_customer_scores_lower_than_an_unhappy_new_one(
    api: ApiProcess,
) -> None:
    unhappy = api.client.post("/predict", json=CUSTOMER).json()["probability"]
    happy = api.client.post(
        "/predict",
        json={
            **CUSTOMER,
            "tenure_months": 70,
            "num_complaints": 0,
            "avg_session_minutes": 60,
            "plan_type": "premium",
        },
    ).json()["probability"]
    assert happy < unhappy


def test_a_missing_field_is_a_422_naming_the_field(api: ApiProcess) -> None:
    body = {k: v for k, v in CUSTOMER.items() if k != "region"}
    response = api.client.post("/predict", json=body)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "region"] and error["type"] == "missing"


def test_a_wrong_type_is_a_422_naming_the_field(api: ApiProcess) -> None:
    response = api.client.post("/predict", json={**CUSTOMER, "tenure_months": "twelve"})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "tenure_months"] and error["type"] == "int_type"


def test_numbers_sent_as_text_are_refused_not_coerced(api: ApiProcess) -> None:
    response = api.client.post(
        "/predict", json={**CUSTOMER, "tenure_months": "3", "avg_session_minutes": "12.5"}
    )
    assert response.status_code == 422
    errors = {tuple(e["loc"]): e["type"] for e in response.json()["detail"]}
    assert errors == {
        ("body", "tenure_months"): "int_type",
        ("body", "avg_session_minutes"): "float_type",
    }


def test_numbers_beyond_the_supported_magnitude_are_a_422_not_a_500(api: ApiProcess) -> None:
    # NB: found by fuzzing: a 100-bit integer broke the prediction log with a 500.
    body = {**CUSTOMER, "tenure_months": 10**30, "avg_session_minutes": 1e300}
    response = api.client.post("/predict", json=body)
    assert response.status_code == 422
    errors = {tuple(e["loc"]): e["type"] for e in response.json()["detail"]}
    assert errors == {
        ("body", "tenure_months"): "less_than_equal",
        ("body", "avg_session_minutes"): "less_than_equal",
    }


def test_malformed_json_is_a_422(api: ApiProcess) -> None:
    response = api.client.post(
        "/predict", content=b'{"tenure_months": 3,', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


def test_an_unknown_category_is_accepted_and_scored(api: ApiProcess) -> None:
    response = api.client.post(
        "/predict", json={**CUSTOMER, "plan_type": "platinum", "region": "Antarctica"}
    )
    assert response.status_code == 200
    assert 0.0 <= response.json()["probability"] <= 1.0


def test_an_unexpected_field_is_a_422(api: ApiProcess) -> None:
    response = api.client.post("/predict", json={**CUSTOMER, "tenure_month": 3})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "tenure_month"]


def test_batch_predictions_come_back_in_order_with_the_version_header(api: ApiProcess) -> None:
    customers = [CUSTOMER, {**CUSTOMER, "tenure_months": 70, "num_complaints": 0}]
    response = api.client.post("/predict/batch", json={"customers": customers})
    assert response.status_code == 200
    body = response.json()
    assert len(body["predictions"]) == 2 and body["model_version"] == 1
    assert response.headers["X-Model-Version"] == "1"
    single = api.client.post("/predict", json=customers[1]).json()["probability"]
    # NB: float32 inference rounds differently by batch shape, well inside the ONNX tolerance.
    assert body["predictions"][1]["probability"] == pytest.approx(single, abs=compiled.TOLERANCE)


def test_a_batch_over_the_limit_is_a_413_that_says_how_to_fix_it(api: ApiProcess) -> None:
    response = api.client.post("/predict/batch", json={"customers": [CUSTOMER] * 6})
    assert response.status_code == 413
    assert response.json()["detail"] == (
        "batch has 6 customers; the limit is 5 (CHURNOPS_MAX_BATCH_ROWS): split it"
    )


def test_an_empty_batch_is_a_422(api: ApiProcess) -> None:
    response = api.client.post("/predict/batch", json={"customers": []})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "customers"]


def test_openapi_shows_the_serving_versions_own_fields(api: ApiProcess) -> None:
    assert api.client.get("/docs").status_code == 200
    schema = api.client.get("/openapi.json").json()
    assert {"/predict", "/predict/batch", "/model", "/health", "/ready"} <= set(schema["paths"])
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/Customer"}
    customer = schema["components"]["schemas"]["Customer"]
    assert set(customer["required"]) == set(CUSTOMER)
    assert customer["properties"]["tenure_months"]["type"] == "integer"
    assert customer["properties"]["region"]["type"] == "string"
    assert customer["additionalProperties"] is False
    assert set(customer["examples"][0]) == set(CUSTOMER)
    assert api.client.get("/model").json()["inputs"] == list(CUSTOMER)


def test_before_any_promotion_ready_is_503_and_health_is_200(
    tracking_url: str, tmp_path: Path
) -> None:
    env = {
        "MLFLOW_TRACKING_URI": tracking_url,
        "CHURNOPS_MODEL_NAME": f"churn_empty_{uuid.uuid4().hex[:8]}",
    }
    api = start_api(env, tmp_path / "serve.log")
    try:
        assert api.client.get("/health").status_code == 200
        ready = api.client.get("/ready")
        assert ready.status_code == 503
        assert "churnops promote" in ready.json()["detail"]
        assert api.client.post("/predict", json=CUSTOMER).status_code == 503
    finally:
        stop_api(api)
