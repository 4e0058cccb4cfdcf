"""The API's HTTP edges in-process, without servers: the app factory with a watcher whose
registry is a fake, driven through Starlette's test client. Media types, Host names, request ids,
non-finite numbers, the bearer token read from a file, and the digest check before a swap."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from churnops.config import Settings
from churnops.inputs import InputField
from churnops.predict import Predictions
from churnops.registry.loading import LoadedModel
from churnops.serving.app import create_app
from churnops.serving.middleware import host_name
from churnops.serving.watcher import ModelWatcher

FIELDS = (InputField("tenure_months", "long", True), InputField("plan_type", "string", True))
CUSTOMER = {"tenure_months": 3, "plan_type": "basic"}
TOKEN = "t" * 24


class HalfEngine:
    """Predicts probability 0.5 for every row."""

    kind = "sklearn"
    threshold = 0.5

    def predict_columns(self, columns: dict[str, list[Any]]) -> Predictions:
        rows = len(next(iter(columns.values())))
        return Predictions(np.ones(rows, dtype=int), np.full(rows, 0.5))

    def predict_frame(self, frame: pd.DataFrame) -> Predictions:
        return self.predict_columns({c: frame[c].tolist() for c in frame.columns})


def loaded(version: int = 1, digests: dict[str, str] | None = None) -> LoadedModel:
    return LoadedModel(
        version=version,
        run_id="run",
        engine=HalfEngine(),
        input_example=pd.DataFrame([CUSTOMER]),
        metrics={},
        inputs=FIELDS,
        digests=digests or {"model.skops": "a", "tag:threshold": "b"},
    )


def watcher_for(
    settings: Settings, pinned: dict[str, str] | None, served: LoadedModel
) -> ModelWatcher:
    return ModelWatcher(
        settings,
        resolve=lambda _: served.version,
        load=lambda _s, _v: served,
        latest=lambda _: None,
        pinned=lambda _s, _v: pinned,
    )


def client_for(settings: Settings, pinned: dict[str, str] | None = None) -> TestClient:
    watcher = watcher_for(settings, pinned, loaded())
    watcher.poll_once()
    return TestClient(create_app(settings, watcher), base_url="http://127.0.0.1:8000")


@pytest.fixture
def client() -> Iterator[TestClient]:
    settings = Settings(tracking_uri="http://127.0.0.1:9", store_predictions=False)
    yield client_for(settings)


def test_a_text_plain_body_is_refused_with_415(client: TestClient) -> None:
    response = client.post(
        "/predict", content=json.dumps(CUSTOMER), headers={"content-type": "text/plain"}
    )
    assert response.status_code == 415
    assert "application/json" in response.json()["detail"]
    assert client.post("/predict", json=CUSTOMER).status_code == 200


def test_a_forged_host_is_refused_with_400_and_loopback_names_are_served(
    client: TestClient,
) -> None:
    forged = client.get("/model", headers={"host": "rebind.attacker.example"})
    assert forged.status_code == 400
    assert "CHURNOPS_API_ALLOWED_HOSTS" in forged.json()["detail"]
    for host in ("localhost:8000", "[::1]:8000", "127.0.0.1"):
        assert client.get("/model", headers={"host": host}).status_code == 200


def test_allowed_hosts_come_from_settings() -> None:
    settings = Settings(
        tracking_uri="http://127.0.0.1:9", store_predictions=False, api_allowed_hosts="api.internal"
    )
    client = client_for(settings)
    assert client.get("/model", headers={"host": "api.internal:8000"}).status_code == 200
    assert client.get("/model", headers={"host": "127.0.0.1:8000"}).status_code == 400
    assert host_name(b"API.Internal:80") == "api.internal"


@pytest.mark.parametrize("literal", ["1e400", "-1e400", "NaN", "Infinity"])
def test_a_non_finite_number_is_a_422_that_json_can_carry(client: TestClient, literal: str) -> None:
    one = client.post(
        "/predict",
        content=f'{{"tenure_months": {literal}, "plan_type": "basic"}}',
        headers={"content-type": "application/json"},
    )
    batch = client.post(
        "/predict/batch",
        content=f'{{"customers": [{{"tenure_months": {literal}, "plan_type": "basic"}}]}}',
        headers={"content-type": "application/json"},
    )
    for response in (one, batch):
        assert response.status_code == 422
        [error] = response.json()["detail"]
        assert error["loc"][-1] == "tenure_months"
        assert isinstance(error["input"], str)


def test_a_request_id_is_kept_only_when_short_and_safe(client: TestClient) -> None:
    def echoed(value: str) -> str:
        response = client.post("/predict", json=CUSTOMER, headers={"x-request-id": value})
        return str(response.json()["request_id"])

    assert echoed("order-42.retry:1") == "order-42.retry:1"
    for bad in ("x" * 129, "has space", 'quote"d', "semi;colon"):
        replaced = echoed(bad)
        assert replaced != bad and len(replaced) == 32


def test_a_token_read_from_a_file_with_a_trailing_newline_still_matches() -> None:
    settings = Settings(
        tracking_uri="http://127.0.0.1:9",
        store_predictions=False,
        api_token=SecretStr(TOKEN + "\n"),
    )
    client = client_for(settings)
    headers = {"authorization": f"Bearer {TOKEN}"}
    assert client.get("/model", headers=headers).status_code == 200
    assert client.get("/model").status_code == 401
    with pytest.raises(ValueError, match="must not contain spaces"):
        Settings(api_token=SecretStr("two words but long enough"))


def test_a_version_whose_files_differ_from_its_pinned_digests_is_never_served() -> None:
    settings = Settings(tracking_uri="http://127.0.0.1:9", store_predictions=False)
    tampered = client_for(settings, pinned={"model.skops": "a", "tag:threshold": "other"})
    assert tampered.get("/ready").status_code == 503
    body = tampered.get("/model").json()
    assert body["version"] is None
    assert "differs from what its promotion gated (tag:threshold changed)" in body["last_error"]
    intact = client_for(settings, pinned={"model.skops": "a", "tag:threshold": "b"})
    assert intact.get("/model").json()["verified"] is True
    unpinned = client_for(settings, pinned=None)
    assert unpinned.get("/model").json()["verified"] is None


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"caf\xe9"])
def test_a_string_that_is_not_utf8_is_a_422_naming_the_problem(
    client: TestClient, raw: bytes
) -> None:
    for path, body in (
        ("/predict", b'{"tenure_months": 3, "plan_type": "' + raw + b'"}'),
        ("/predict/batch", b'{"customers": [{"tenure_months": 3, "plan_type": "' + raw + b'"}]}'),
    ):
        response = client.post(path, content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422, response.text
        [error] = response.json()["detail"]
        assert "invalid unicode" in error["msg"].lower()
        assert isinstance(error["input"], str)
