"""CHURNOPS_API_TOKEN: every route but the probes and the docs needs the bearer token."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from pydantic import SecretStr, ValidationError

from churnops import lifecycle
from churnops.config import Settings
from tests.conftest import ApiProcess, start_api, stop_api, wait_for
from tests.test_api import CUSTOMER

TOKEN = "t0ken-" + uuid.uuid4().hex
GUARDED = [
    ("GET", "/model"),
    ("GET", "/metrics"),
    ("POST", "/predict"),
    ("POST", "/predict/batch"),
]


@pytest.fixture(scope="module")
def api(tracking_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    name = f"churn_token_{uuid.uuid4().hex[:8]}"
    settings = Settings(tracking_uri=tracking_url, model_name=name)
    report = lifecycle.train(settings, data_file=None, version_label="v1", seed=4, gate_f1=0.5)
    lifecycle.promote(settings, report.version)
    env = {
        "MLFLOW_TRACKING_URI": tracking_url,
        "CHURNOPS_MODEL_NAME": name,
        "CHURNOPS_API_TOKEN": TOKEN,
    }
    started = start_api(env, tmp_path_factory.mktemp("token") / "serve.log", "--workers", "1")
    # NB: /ready, not /metrics, tells when the model is in: /metrics needs the token too.
    wait_for(lambda: started.client.get("/ready").status_code == 200, timeout=60)
    yield started
    stop_api(started)


def _body(path: str) -> dict:
    return {"customers": [CUSTOMER]} if path.endswith("/batch") else CUSTOMER


def test_probes_stay_open_without_the_token(api: ApiProcess) -> None:
    assert api.client.get("/health").status_code == 200
    assert api.client.get("/ready").status_code == 200


def test_the_docs_open_without_the_token_and_show_no_training_row(api: ApiProcess) -> None:
    assert api.client.get("/docs").status_code == 200
    document = api.client.get("/openapi.json").json()
    [example] = document["components"]["schemas"]["Customer"]["examples"]
    assert example == {
        "tenure_months": 0,
        "num_complaints": 0,
        "avg_session_minutes": 0.0,
        "plan_type": "unknown",
        "region": "unknown",
    }
    # The placeholder is a valid request: "Try it out" answers with a prediction.
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert api.client.post("/predict", json=example, headers=headers).status_code == 200


@pytest.mark.parametrize(("method", "path"), GUARDED)
@pytest.mark.parametrize("header", [None, "Bearer wrong-token", f"Basic {TOKEN}", TOKEN])
def test_every_other_route_is_401_without_the_right_bearer_token(
    api: ApiProcess, method: str, path: str, header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}
    json_body = _body(path) if method == "POST" else None
    response = api.client.request(method, path, json=json_body, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "CHURNOPS_API_TOKEN" in response.json()["detail"]


@pytest.mark.parametrize(("method", "path"), GUARDED)
def test_the_right_token_opens_every_route(api: ApiProcess, method: str, path: str) -> None:
    json_body = _body(path) if method == "POST" else None
    for scheme in ("Bearer", "bearer"):
        headers = {"Authorization": f"{scheme} {TOKEN}"}
        assert api.client.request(method, path, json=json_body, headers=headers).status_code == 200


def test_openapi_declares_the_bearer_scheme(api: ApiProcess) -> None:
    document = api.client.get("/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert document["security"] == [{"bearer": []}]


def test_a_short_token_is_refused_with_how_to_make_one() -> None:
    with pytest.raises(ValidationError, match="at least 16 characters"):
        Settings(api_token=SecretStr("secret"))
