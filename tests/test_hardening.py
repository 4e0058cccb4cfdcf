"""Hardening: MLflow's host-header protection stays on behind churnops server, and the prediction
API answers every request its OpenAPI schema allows (and many it does not) without a 5xx."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from churnops import lifecycle
from churnops.config import Settings
from tests.conftest import ApiProcess, start_api, stop_api

FUZZ_EXAMPLES = 40


def test_a_forged_host_header_is_refused_by_the_tracking_server(tracking_url: str) -> None:
    path = "/api/2.0/mlflow/registered-models/search?max_results=1"
    assert httpx.get(tracking_url + path).status_code == 200
    forged = httpx.get(tracking_url + path, headers={"Host": "attacker.example"})
    assert forged.status_code == 403


@pytest.fixture(scope="module")
def fuzzed_api(tracking_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    name = f"churn_fuzz_{uuid.uuid4().hex[:8]}"
    churn = Settings(tracking_uri=tracking_url, model_name=name)
    report = lifecycle.train(churn, data_file=None, version_label="v1", seed=5, gate_f1=0.5)
    lifecycle.promote(churn, report.version)
    env = {"MLFLOW_TRACKING_URI": tracking_url, "CHURNOPS_MODEL_NAME": name}
    api = start_api(env, tmp_path_factory.mktemp("fuzz") / "serve.log", "--workers", "1")
    api.wait_until_every_worker_serves()
    yield api
    stop_api(api)


def test_fuzzing_the_api_from_its_openapi_schema_finds_no_5xx(fuzzed_api: ApiProcess) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzzed_api.url}/openapi.json")
    failures: list[str] = []
    calls = 0

    for operation in schema.get_all_operations():
        op = operation.ok()  # type: ignore[union-attr]
        label = op.label

        # NB: defined and run in the same iteration, so ``op`` is this operation.
        @given(case=op.as_strategy())
        @settings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def check(case: schemathesis.Case) -> None:
            nonlocal calls
            response = case.call(base_url=fuzzed_api.url, timeout=10)
            calls += 1
            if response.status_code >= 500:
                failures.append(f"{label}: {response.status_code} {response.text[:200]}")  # noqa: B023

        check()
    assert calls >= FUZZ_EXAMPLES, calls
    assert not failures, failures


NON_FINITE = ("1e400", "-1e400", "NaN", "Infinity", "-Infinity", "1e308")
# NB: bytes that are not UTF-8 inside a JSON string once made the 422 encoder fail with a 500.
NOT_UTF8 = (b'"\xff\xfe"', b'"\xc3\x28"', b'"\xed\xa0\x80"', b'"caf\xe9"')


def every_field_given(api: ApiProcess, values: tuple[bytes, ...]) -> Iterator[tuple[str, bytes]]:
    """(path, body) for each field of the serving version's example set to each raw JSON
    value in turn, as one customer on /predict and in a batch on /predict/batch."""
    document = api.client.get("/openapi.json").json()
    customer = document["components"]["schemas"]["Customer"]
    example = customer["examples"][0]
    for name in customer["properties"]:
        for value in values:
            # NB: optional fields (customer_id) are not in the example: added for their turn.
            given = example | ({} if name in example else {name: None})
            fields = [
                json.dumps(k).encode() + b": " + (value if k == name else json.dumps(v).encode())
                for k, v in given.items()
            ]
            row = b"{" + b", ".join(fields) + b"}"
            yield "/predict", row
            yield "/predict/batch", b'{"customers": [' + row + b"]}"


def test_numbers_json_cannot_carry_in_any_field_never_cause_a_5xx(fuzzed_api: ApiProcess) -> None:
    # NB: schemathesis only generates numbers JSON can carry; valid JSON text like 1e400 parses
    # to inf, and once crashed the 422 encoder, so every field gets each such literal.
    literals = tuple(literal.encode() for literal in NON_FINITE)
    for path, body in every_field_given(fuzzed_api, literals):
        response = fuzzed_api.client.post(
            path, content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code < 500, (path, body, response.text[:200])
        assert response.headers["content-type"] == "application/json"


def test_bytes_that_are_not_utf8_in_any_field_are_a_422_never_a_5xx(fuzzed_api: ApiProcess) -> None:
    for path, body in every_field_given(fuzzed_api, NOT_UTF8):
        response = fuzzed_api.client.post(
            path, content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422, (path, body, response.text[:200])
        assert response.json()["detail"], response.text[:200]
