"""The scoring flow of one request, apart from HTTP: which version answers which row (production,
or a canary's share), the scores, the hand-off of the answered rows to the prediction store's
writer and of production's rows to the shadow queue, and the answer's JSON document.

The routes parse the request (:mod:`churnops.serving.decode`), call :meth:`ScoringFlow.score` and
send what it returns, so everything here can be tested with a model and no web server.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi.concurrency import run_in_threadpool

from churnops.config import Settings
from churnops.errors import NoProductionModelError
from churnops.monitoring.store import prediction_ids
from churnops.observability import ServingMetrics
from churnops.predict import Predictions
from churnops.serving.routing import Challenger, ChallengerRoute, Rows
from churnops.serving.shadow import ShadowScorer
from churnops.serving.watcher import ModelWatcher, ServedModel
from churnops.serving.writer import BufferedWriter

PRODUCTION = "production"
CANARY = "canary"


# NB: plain slotted dataclasses, built on every request: a frozen one's __init__ costs ~1 us more.
@dataclass(slots=True)
class Answered:
    """The rows one version answered for a request, with their scores."""

    model: ServedModel
    role: str
    rows: Rows


@dataclass(slots=True)
class Scored:
    """A request's scores in request order, and which version answered which rows."""

    labels: list[int]
    probabilities: list[float]
    answered: list[Answered]
    # NB: each row's answering version when a canary took part of the request, else None.
    answered_by: list[int] | None = None


@dataclass(slots=True)
class Answer:
    """What the API sends back for one scoring request."""

    document: dict[str, Any]
    versions: list[int]

    def version_header(self) -> str:
        """The X-Model-Version value: every version that answered a row, production first."""
        return ",".join(str(v) for v in self.versions)


def response_document(rows: Rows, scored: Scored, version: int, *, batch: bool) -> dict[str, Any]:
    """The JSON answer: one prediction, or a batch's with the version that answered each row
    when a canary answered some of them."""
    if not batch:
        return {
            "prediction_id": rows.ids[0],
            "prediction": scored.labels[0],
            "probability": scored.probabilities[0],
            "model_version": scored.answered_by[0] if scored.answered_by else version,
            "request_id": rows.request_id,
        }
    predictions = [
        {"prediction_id": i, "prediction": label, "probability": p}
        for i, label, p in zip(rows.ids, scored.labels, scored.probabilities, strict=True)
    ]
    if scored.answered_by is not None:
        # NB: rows a canary answered say so; the rest were answered by model_version.
        for row, answered_by in zip(predictions, scored.answered_by, strict=True):
            if answered_by != version:
                row["model_version"] = answered_by
    return {"predictions": predictions, "model_version": version, "request_id": rows.request_id}


class ScoringFlow:
    """Scores requests with the versions the watchers serve; the lifespan attaches the store's
    writer and the shadow scorer while they run (both None when the store is off)."""

    def __init__(
        self,
        settings: Settings,
        metrics: ServingMetrics,
        watcher: ModelWatcher,
        challenger: ChallengerRoute,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.watcher = watcher
        self.challenger = challenger
        self.store: BufferedWriter | None = None
        self.shadow: ShadowScorer | None = None

    def serving(self) -> ServedModel:
        """The production snapshot a request uses to the end; 503 before one is loaded."""
        served = self.watcher.current
        if served is None:
            last_error = self.watcher.last_error
            raise NoProductionModelError(
                f"no model loaded yet: {self.settings.model_uri} "
                + (f"is not set ({last_error})" if last_error else "is not set")
                + "; promote a version with `churnops promote`"
            )
        return served

    async def score(
        self,
        served: ServedModel,
        customers: list[dict[str, Any]],
        *,
        request_id: str,
        event_time: float | None,
        batch: bool,
    ) -> Answer:
        """Score the rows with one engine snapshot (a canary's rows with the challenger's),
        hand the answered rows to the store and production's to the shadow, and build the
        answer."""
        other = self.challenger.now(served)
        rows = self.rows(served, customers, request_id, event_time, keyed=other is not None)
        canary = None
        if other is not None and other.slot.mode == CANARY:
            canary = rows.chosen(other.slot.percent)
        if canary is None or other is None:
            scored = await self._production(served, rows)
        else:
            scored = await self._split(served, other, rows, canary)
        self.hand_off(scored, rows, other)
        document = response_document(rows, scored, served.version, batch=batch)
        return Answer(document, [a.model.version for a in scored.answered])

    def rows(
        self,
        served: ServedModel,
        customers: list[dict[str, Any]],
        request_id: str,
        event_time: float | None,
        *,
        keyed: bool,
    ) -> Rows:
        """A request's rows with new prediction ids; customer ids when the store or a
        challenger (``keyed``) needs them."""
        customer_ids = (
            served.schema.customer_ids(customers) if keyed or self.store is not None else None
        )
        return Rows(
            prediction_ids(len(customers)),
            served.schema.columns(customers),
            customer_ids,
            request_id,
            event_time,
            time.time(),
        )

    async def _production(self, served: ServedModel, rows: Rows) -> Scored:
        result = await self._predict(served, rows.columns, PRODUCTION)
        labels = result.label.tolist()
        self.metrics.observe_predictions(labels, served.version)
        answered = [Answered(served, PRODUCTION, rows.scored(result))]
        return Scored(labels, result.probability.tolist(), answered)

    async def _split(
        self, served: ServedModel, other: Challenger, rows: Rows, canary: np.ndarray
    ) -> Scored:
        label_of = np.empty(len(rows.ids), dtype=np.int64)
        probability_of = np.empty(len(rows.ids), dtype=np.float64)
        answered = []
        for model, role, index in (
            (served, PRODUCTION, np.flatnonzero(~canary)),
            (other.model, CANARY, np.flatnonzero(canary)),
        ):
            if len(index):
                part = rows.take(index, [f.name for f in model.schema.fields])
                result = await self._predict(model, part.columns, role)
                label_of[index], probability_of[index] = result.label, result.probability
                answered.append(Answered(model, role, part.scored(result)))
        for one in answered:
            self.metrics.observe_predictions(one.rows.labels.tolist(), one.model.version, one.role)
        answered_by = np.where(canary, other.model.version, served.version).tolist()
        return Scored(label_of.tolist(), probability_of.tolist(), answered, answered_by)

    async def _predict(
        self, served: ServedModel, columns: dict[str, list[Any]], role: str
    ) -> Predictions:
        started = time.perf_counter()
        if served.engine.kind == "onnx":
            # NB: ~50 us per call: cheaper inline on the event loop than a hop to a thread.
            result = served.engine.predict_columns(columns)
        else:
            result = await run_in_threadpool(served.engine.predict_columns, columns)
        if role != PRODUCTION:
            # NB: production's time is the request histogram's; ~3 us a request saved.
            seconds = time.perf_counter() - started
            self.metrics.scoring.labels(role, str(served.version)).observe(seconds)
        return result

    def hand_off(self, scored: Scored, rows: Rows, other: Challenger | None) -> None:
        """Queue exactly the answered rows for the store (each under the alias that answered
        it) and, when the challenger shadows, its share of the request for the shadow."""
        if self.store is not None:
            settings = self.settings
            for one in scored.answered:
                alias = settings.alias if one.role == PRODUCTION else settings.challenger_alias
                self.store.add(one.rows.batch(settings.model_name, one.model, alias, one.role))
        if self.shadow is not None and other is not None and other.slot.mode == "shadow":
            sampled = rows.sample(other.slot.percent)
            if sampled is not None:
                self.shadow.offer(sampled)
