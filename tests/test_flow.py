"""The scoring flow without HTTP: which version answers which row, what reaches the store and
the shadow queue, and the answer's document, with real engines' shapes, a real store writer and
real challenger routing (no web server, no registry)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from churnops.config import Settings
from churnops.errors import EventTimeError, NoProductionModelError
from churnops.inputs import CUSTOMER_ID, InputField, RequestSchema
from churnops.monitoring import store
from churnops.observability import ServingMetrics
from churnops.predict import Predictions
from churnops.serving import decode, routing
from churnops.serving.flow import Answer, Scored, ScoringFlow, response_document
from churnops.serving.routing import ChallengerRoute, Rows, Slot
from churnops.serving.shadow import ShadowScorer
from churnops.serving.watcher import ModelWatcher, ServedModel
from churnops.serving.writer import BufferedWriter

FIELDS = (InputField("tenure_months", "long", True), InputField("plan_type", "string", True))


class FixedEngine:
    """Scores every row with one probability, so each row shows which version answered it."""

    kind = "sklearn"
    threshold = 0.5

    def __init__(self, probability: float) -> None:
        self.probability = probability
        self.rows_seen = 0

    def predict_columns(self, columns: dict[str, list[Any]]) -> Predictions:
        rows = len(next(iter(columns.values())))
        self.rows_seen += rows
        label = int(self.probability >= self.threshold)
        return Predictions(np.full(rows, label), np.full(rows, self.probability))

    def predict_frame(self, frame: Any) -> Predictions:
        raise NotImplementedError


def served(version: int, probability: float) -> ServedModel:
    engine = FixedEngine(probability)
    return ServedModel(version, "run", engine, {}, datetime.now(UTC), RequestSchema(FIELDS))


def customers(count: int) -> list[dict[str, Any]]:
    return [
        {"tenure_months": i, "plan_type": "basic", CUSTOMER_ID: f"customer-{i}"}
        for i in range(count)
    ]


def flow_for(
    tmp_path: Path, production: ServedModel | None, challenger: tuple[ServedModel, Slot] | None
) -> ScoringFlow:
    settings = Settings(tracking_uri="http://127.0.0.1:9", data_dir=tmp_path)
    watcher = ModelWatcher(settings, resolve=lambda _: None, load=lambda _s, _v: None)  # type: ignore[arg-type,return-value]
    watcher.current = production
    route = ChallengerRoute(settings)
    if challenger is not None:
        route.watcher.current, route.slot = challenger
    flow = ScoringFlow(settings, ServingMetrics(), watcher, route)
    flow.store = BufferedWriter(store.settings_store(settings), 3600, 10**6, 400)
    return flow


def score(flow: ScoringFlow, rows: list[dict[str, Any]], batch: bool = True) -> Answer:
    production = flow.serving()
    return asyncio.run(
        flow.score(production, rows, request_id="req-1", event_time=None, batch=batch)
    )


def stored(flow: ScoringFlow) -> list[dict[str, Any]]:
    assert flow.store is not None
    flow.store.flush()
    table = store.read_predictions(flow.store.store, flow.settings.model_name)
    return sorted(table.to_pylist(), key=lambda r: r["prediction_id"])


def test_without_a_challenger_production_answers_every_row_and_the_store_gets_them_all(
    tmp_path: Path,
) -> None:
    flow = flow_for(tmp_path, served(1, 0.75), None)
    answer = score(flow, customers(3))
    predictions = answer.document["predictions"]
    assert [p["probability"] for p in predictions] == [0.75, 0.75, 0.75]
    assert all("model_version" not in p for p in predictions)
    assert answer.document["model_version"] == 1 and answer.version_header() == "1"
    rows = stored(flow)
    assert [r["prediction_id"] for r in rows] == sorted(p["prediction_id"] for p in predictions)
    assert {(r["role"], r["alias"], r["version"]) for r in rows} == {
        ("production", "production", 1)
    }
    assert [r["customer_id"] for r in sorted(rows, key=lambda r: r["prediction_id"])] == [
        f"customer-{i}" for i in range(3)
    ]


def test_a_canary_answers_exactly_the_rows_of_its_customers_and_each_row_says_who_answered(
    tmp_path: Path,
) -> None:
    flow = flow_for(tmp_path, served(1, 0.75), (served(2, 0.25), Slot(2, "canary", 30.0)))
    rows = customers(40)
    expected = [routing.chosen(r[CUSTOMER_ID], 30.0) for r in rows]
    assert 0 < sum(expected) < len(rows)  # NB: both versions answer part of this request
    answer = score(flow, rows)
    predictions = answer.document["predictions"]
    assert [p["probability"] == 0.25 for p in predictions] == expected
    assert [p.get("model_version", 1) for p in predictions] == [2 if c else 1 for c in expected]
    assert answer.document["model_version"] == 1 and answer.version_header() == "1,2"


def test_the_store_gets_each_answered_row_once_under_the_role_and_alias_that_answered_it(
    tmp_path: Path,
) -> None:
    flow = flow_for(tmp_path, served(1, 0.75), (served(2, 0.25), Slot(2, "canary", 30.0)))
    answer = score(flow, customers(40))
    by_id = {p["prediction_id"]: p for p in answer.document["predictions"]}
    rows = stored(flow)
    assert sorted(r["prediction_id"] for r in rows) == sorted(by_id)
    for row in rows:
        answered = by_id[row["prediction_id"]]
        canary = answered.get("model_version") == 2
        assert (row["role"], row["alias"], row["version"]) == (
            ("canary", "challenger", 2) if canary else ("production", "production", 1)
        )
        assert row["probability"] == answered["probability"]
        assert row["request_id"] == "req-1"


def test_a_shadow_never_answers_and_gets_production_rows_with_their_ids_after_the_answer(
    tmp_path: Path,
) -> None:
    shadow_model = served(2, 0.25)
    flow = flow_for(tmp_path, served(1, 0.75), (shadow_model, Slot(2, "shadow", 100.0)))
    assert flow.store is not None
    flow.shadow = ShadowScorer(
        flow.challenger.current_for_shadow, flow.store, model="churn_model", alias="challenger",
        queue_rows=100,
    )  # fmt: skip
    answer = score(flow, customers(3))
    assert {p["probability"] for p in answer.document["predictions"]} == {0.75}
    assert answer.version_header() == "1"
    assert flow.shadow.queued() == 3 and shadow_model.engine.rows_seen == 0  # type: ignore[attr-defined]
    assert flow.shadow.drain() == 3
    rows = stored(flow)
    ids = sorted(p["prediction_id"] for p in answer.document["predictions"])
    assert [r["prediction_id"] for r in rows if r["role"] == "shadow"] == ids
    assert [r["prediction_id"] for r in rows if r["role"] == "production"] == ids


def test_a_single_row_answer_names_the_version_that_answered_it() -> None:
    rows = Rows(["a-0"], {"tenure_months": [1]}, None, "req-9", None, 0.0)
    by_canary = Scored([0], [0.25], [], answered_by=[2])
    assert response_document(rows, by_canary, 1, batch=False) == {
        "prediction_id": "a-0",
        "prediction": 0,
        "probability": 0.25,
        "model_version": 2,
        "request_id": "req-9",
    }
    by_production = Scored([1], [0.75], [])
    assert response_document(rows, by_production, 1, batch=False)["model_version"] == 1


def test_without_a_loaded_model_scoring_fails_with_a_503_that_says_to_promote(
    tmp_path: Path,
) -> None:
    flow = flow_for(tmp_path, None, None)
    with pytest.raises(NoProductionModelError, match="promote a version") as caught:
        flow.serving()
    assert caught.value.http_status == 503


def test_prediction_ids_are_unique_per_row_and_share_one_random_base_per_call() -> None:
    first, second = store.prediction_ids(1500), store.prediction_ids(2)
    assert len(set(first)) == 1500 and first[1023].endswith("-1023") and first[-1].endswith("-1499")
    base = first[0].rpartition("-")[0]
    assert len(base) == 24 and all(i == f"{base}-{n}" for n, i in enumerate(first))
    assert second[0].rpartition("-")[0] != base


def test_an_event_time_without_a_zone_or_in_the_future_is_refused() -> None:
    assert decode.event_time("2026-01-01T00:00:00Z") == 1_767_225_600.0
    assert decode.event_time(None) is None
    with pytest.raises(EventTimeError, match="with a zone"):
        decode.event_time("2026-01-01T00:00:00")
    with pytest.raises(EventTimeError, match="in the future"):
        decode.event_time("2999-01-01T00:00:00Z")


def test_importing_the_routing_module_does_not_build_the_web_app() -> None:
    code = (
        "import sys, churnops.serving.routing; "
        "print(sorted(m for m in sys.modules if m.startswith('churnops.serving')))"
    )
    shown = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "churnops.serving.app" not in shown and "churnops.serving.routing" in shown
