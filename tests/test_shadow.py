"""The shadow scorer and the canary's split without servers: shadow rows stored under
production's ids with role shadow, a full queue dropping and counting whole requests, a failing
or cleared challenger never raising, and a stable split whose share matches the percent."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from churnops.inputs import InputField, RequestSchema
from churnops.monitoring import store
from churnops.predict import Predictions
from churnops.serving import routing
from churnops.serving import writer as writer_module
from churnops.serving.routing import Rows
from churnops.serving.shadow import ShadowScorer
from churnops.serving.watcher import ServedModel

FIELDS = (InputField("tenure_months", "long", True), InputField("plan_type", "string", True))


class HalfEngine:
    """Probability 0.25 per row, or an error when told to fail."""

    kind = "test"
    threshold = 0.5

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls = 0

    def predict_columns(self, columns: dict[str, list[Any]]) -> Predictions:
        self.calls += 1
        if self.fail:
            raise RuntimeError("the challenger broke")
        rows = len(next(iter(columns.values())))
        return Predictions(np.zeros(rows, dtype=int), np.full(rows, 0.25))

    def predict_frame(self, frame: Any) -> Predictions:
        raise NotImplementedError


def served(engine: HalfEngine, version: int = 2) -> ServedModel:
    return ServedModel(version, None, engine, {}, datetime.now(UTC), RequestSchema(FIELDS))


def work(ids: list[str]) -> Rows:
    columns: dict[str, list[Any]] = {
        "tenure_months": [3] * len(ids),
        "plan_type": ["basic"] * len(ids),
        "x": [0] * len(ids),
    }
    return Rows(ids, columns, [f"c{i}" for i in ids], "r", None, 1_700_000_000.0)


def writer(tmp_path: Path) -> writer_module.BufferedWriter:
    return writer_module.BufferedWriter(store.open_store(str(tmp_path)), 3600, 10**6, 400)


def scorer(tmp_path: Path, model: ServedModel | None, limit: int = 100) -> ShadowScorer:
    return ShadowScorer(
        lambda: model, writer(tmp_path), model="m", alias="challenger", queue_rows=limit
    )


def test_shadow_rows_keep_production_ids_and_are_scored_in_one_call(tmp_path: Path) -> None:
    engine = HalfEngine()
    shadow = scorer(tmp_path, served(engine))
    assert shadow.offer(work(["a-0", "a-1"])) and shadow.offer(work(["b-0"]))
    assert shadow.drain() == 3 and engine.calls == 1
    shadow._store.flush()
    rows = store.read_predictions(shadow._store.store, "m").to_pylist()
    assert sorted(r["prediction_id"] for r in rows) == ["a-0", "a-1", "b-0"]
    assert {(r["role"], r["alias"], r["version"], r["probability"]) for r in rows} == {
        ("shadow", "challenger", 2, 0.25)
    }


def test_a_full_queue_drops_whole_requests_and_counts_their_rows(tmp_path: Path) -> None:
    shadow = scorer(tmp_path, served(HalfEngine()), limit=3)
    assert shadow.offer(work(["a-0", "a-1"]))
    assert not shadow.offer(work(["b-0", "b-1"]))
    assert shadow.offer(work(["c-0"]))
    assert (shadow.queued(), shadow.dropped_rows) == (3, 2)


@pytest.mark.parametrize("model", [None, served(HalfEngine(fail=True))])
def test_a_cleared_or_failing_challenger_loses_only_its_own_rows(
    tmp_path: Path, model: ServedModel | None
) -> None:
    shadow = scorer(tmp_path, model)
    shadow.offer(work(["a-0", "a-1"]))
    assert shadow.drain() == 0
    assert shadow.dropped_rows + shadow.failed_rows == 2 and shadow.queued() == 0


def test_the_canary_split_is_stable_and_takes_its_share() -> None:
    customers = [f"customer-{i}" for i in range(20_000)]
    chosen = [routing.chosen(c, 10) for c in customers]
    assert chosen == [routing.chosen(c, 10) for c in customers]
    assert abs(np.mean(chosen) - 0.10) < 0.01
    # NB: raising the share only adds customers: nobody already on the canary moves back.
    wider = [routing.chosen(c, 30) for c in customers]
    assert all(w for c, w in zip(chosen, wider, strict=True) if c)


def test_the_scorer_thread_sleeps_until_rows_arrive_and_then_scores_them(tmp_path: Path) -> None:
    engine = HalfEngine()
    shadow = scorer(tmp_path, served(engine))
    shadow.start()
    try:
        time.sleep(0.2)
        assert engine.calls == 0
        shadow.offer(work(["a-0"]))
        deadline = time.monotonic() + 5
        while shadow.scored_rows < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert shadow.scored_rows == 1 and shadow.queued() == 0
    finally:
        shadow.close()
