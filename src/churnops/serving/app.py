"""The prediction API: a FastAPI app factory serving `models:/<name>@<alias>` through a ModelWatcher
that follows the alias live. The only module that knows HTTP routes for serving; each scoring
route parses its request, calls the scoring flow (:mod:`churnops.serving.flow`) and answers.

Each request takes one snapshot of the serving model and uses it to the end, so a response never
mixes versions. With several workers, each process runs its own watcher and converges on the alias
within one poll interval; /model answers for the worker that served the request.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST

from churnops.config import Settings
from churnops.errors import BatchTooLargeError, ChurnopsError
from churnops.monitoring.store import settings_store
from churnops.observability import ServingMetrics
from churnops.registry.loading import LoadedModel
from churnops.serving import decode
from churnops.serving.flow import Answer, ScoringFlow
from churnops.serving.middleware import DOCS_ASSETS, BearerTokenMiddleware, GuardMiddleware
from churnops.serving.openapi import (
    BATCH_SCHEMA,
    CUSTOMER_SCHEMA,
    VersionedOpenApi,
    request_body,
)
from churnops.serving.routing import ChallengerRoute
from churnops.serving.schemas import (
    BatchPredictionResponse,
    ErrorResponse,
    ModelResponse,
    PredictionResponse,
)
from churnops.serving.shadow import ShadowScorer
from churnops.serving.status import model_answer, ready_answer
from churnops.serving.watcher import ModelWatcher, ServedModel
from churnops.serving.writer import BufferedWriter

log = logging.getLogger(__name__)

MODEL_VERSION_HEADER = "X-Model-Version"
INVALID_BODY = {"description": "A field is missing, unknown or of the wrong type."}


# NB: a test hook (CHURNOPS_FAILPOINT=slow-load): every worker but the first to load sleeps
# this long before loading, so a test sees one worker ready and another not, every time.
SLOW_LOAD_FAILPOINT = "slow-load"
SLOW_LOAD_SECONDS = 8.0


def _slow_load_unless_first() -> None:
    """Sleep SLOW_LOAD_SECONDS unless this worker is the first of its server to load."""
    # NB: the workers share their supervisor's pid, so the claim is per server start.
    claim = os.path.join(tempfile.gettempdir(), f"churnops-slow-load-{os.getppid()}")
    try:
        os.close(os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        log.warning("failpoint %s: loading %.0f s late", SLOW_LOAD_FAILPOINT, SLOW_LOAD_SECONDS)
        time.sleep(SLOW_LOAD_SECONDS)


def production_watcher(settings: Settings, metrics: ServingMetrics) -> ModelWatcher:
    """The watcher of the serving alias, loading through the last-served cache when it is on."""
    from churnops.registry import loading
    from churnops.serving import cache

    def swapped(served: ServedModel) -> None:
        metrics.swaps.inc()
        metrics.model_version.set(served.version)

    def load(settings: Settings, version: int) -> LoadedModel:
        if settings.failpoint == SLOW_LOAD_FAILPOINT:
            _slow_load_unless_first()
        keep = functools.partial(cache.keep, settings) if settings.serve_cache else None
        return loading.load_version(settings, version, keep=keep)

    return ModelWatcher(
        settings,
        load=load,
        on_swap=swapped,
        on_failed_swap=metrics.failed_swaps.inc,
        on_poll=lambda reachable: metrics.registry_up.set(1 if reachable else 0),
        fallback=cache.load_served if settings.serve_cache else lambda _: None,
        on_served=cache.mark_served if settings.serve_cache else lambda _s, _v: None,
    )


def challenger_route(settings: Settings, metrics: ServingMetrics) -> ChallengerRoute:
    """The route to the challenger alias, reporting its version in the metrics."""

    def swapped(served: ServedModel) -> None:
        metrics.challenger_version.set(served.version)

    return ChallengerRoute(
        settings, on_swap=swapped, on_cleared=lambda: metrics.challenger_version.set(0)
    )


def start_store(flow: ScoringFlow) -> None:
    """Start the store's writer and the shadow scorer and attach them to the flow."""
    settings, metrics = flow.settings, flow.metrics

    def shadow_scored(version: int, labels: np.ndarray, seconds: float) -> None:
        metrics.scoring.labels("shadow", str(version)).observe(seconds)
        metrics.observe_predictions(labels.tolist(), version, "shadow")

    store = BufferedWriter(
        settings_store(settings),
        flush_seconds=settings.store_flush_seconds,
        buffer_rows=settings.store_buffer_rows,
        retention_days=settings.store_retention_days,
        max_rows=settings.store_max_buffer_rows,
        spool_dir=settings.spool_dir,
        on_state=metrics.observe_store,
    )
    store.start()
    flow.store = store
    shadow = ShadowScorer(
        flow.challenger.current_for_shadow,
        store,
        model=settings.model_name,
        alias=settings.challenger_alias,
        queue_rows=settings.shadow_queue_rows,
        on_scored=shadow_scored,
        on_dropped=metrics.shadow_dropped.inc,
    )
    shadow.start()
    flow.shadow = shadow


async def stop_store(flow: ScoringFlow) -> None:
    """Score what the shadow still holds, then write every answered row."""
    if flow.shadow is not None:
        await run_in_threadpool(flow.shadow.close)
    if flow.store is not None:
        # NB: after uvicorn has finished in-flight requests, so every answered row is
        # written before the process exits.
        await run_in_threadpool(flow.store.close)


def lifespan_of(flow: ScoringFlow) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan: the watchers, the store's writer and the shadow run while it serves."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if flow.settings.store_predictions:
            start_store(flow)
        flow.watcher.start()
        flow.challenger.watcher.start()
        # NB: rows wait for the store's writer a fraction of a second, long enough to survive
        # into the older GC generations, and a full collection then scanned every object the
        # imports made (~0.1 s stalls: p99 63 ms at one connection). Frozen objects are skipped.
        gc.freeze()
        try:
            yield
        finally:
            flow.watcher.stop()
            flow.challenger.watcher.stop()
            await stop_store(flow)

    return lifespan


def answer(result: Answer) -> Response:
    """The scoring flow's answer as JSON built by orjson.

    NB: built directly rather than through response models: 1,000 Prediction objects cost ~4 ms
    to build and validate, the orjson document ~1.5 ms.
    """
    return Response(
        orjson.dumps(result.document),
        media_type="application/json",
        headers={MODEL_VERSION_HEADER: result.version_header()},
    )


def create_app(
    settings: Settings,
    watcher: ModelWatcher | None = None,
    challenger: ChallengerRoute | None = None,
) -> FastAPI:
    """Build the API; its lifespan starts and stops the alias watchers, the shadow scorer and
    the store's writer."""
    metrics = ServingMetrics()
    flow = ScoringFlow(
        settings,
        metrics,
        watcher or production_watcher(settings, metrics),
        challenger or challenger_route(settings, metrics),
    )
    # NB: FastAPIOffline serves Swagger UI's files itself: FastAPI's /docs loads them from a CDN,
    # which leaves the page blank on a machine without Internet access.
    app = FastAPIOffline(
        redoc_url=None,
        static_url=DOCS_ASSETS,
        title="churnops prediction API",
        description=f"Serves `{settings.model_uri}` and follows every promotion and rollback live.",
        version="0.1.0",
        lifespan=lifespan_of(flow),
        responses={503: {"model": ErrorResponse}},
    )
    app.state.flow = flow
    app.openapi = VersionedOpenApi(app, settings, flow.watcher)  # type: ignore[method-assign]
    if settings.api_token is not None:
        app.add_middleware(BearerTokenMiddleware, token=settings.api_token.get_secret_value())
    # NB: added last, so it is outermost and counts refused requests (401, 413) too.
    app.add_middleware(
        GuardMiddleware,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        allowed_hosts=settings.allowed_hosts,
    )

    @app.exception_handler(ChurnopsError)
    async def _churnops_error(_: Request, exc: ChurnopsError) -> JSONResponse:
        return JSONResponse(status_code=exc.http_status, content={"detail": str(exc)})

    add_probes(app, flow)
    add_scoring(app, flow)
    return app


def add_probes(app: FastAPI, flow: ScoringFlow) -> None:
    """/health, /ready, /model and /metrics."""

    @app.get("/health", summary="Liveness: the process answers (never touches MLflow)")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: 200 once every worker has a model loaded, 503 before")
    async def ready() -> dict[str, object]:
        return ready_answer(flow)

    @app.get("/model", response_model=ModelResponse, summary="The model this worker serves")
    async def model() -> ModelResponse:
        return model_answer(flow)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def prometheus_metrics() -> Response:
        return Response(flow.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


def add_scoring(app: FastAPI, flow: ScoringFlow) -> None:
    """/predict and /predict/batch: parse, score through the flow, answer."""

    @app.post(
        "/predict",
        response_model=PredictionResponse,
        responses={415: {"model": ErrorResponse}, 422: INVALID_BODY},
        summary="Score one customer",
        openapi_extra=request_body(CUSTOMER_SCHEMA),
    )
    async def predict_one(request: Request) -> Response:
        served = flow.serving()
        customer = decode.validated(served.schema.one, *await body_of(request))
        return await respond(flow, request, served, [customer], batch=False)

    @app.post(
        "/predict/batch",
        response_model=BatchPredictionResponse,
        responses={413: {"model": ErrorResponse}, 415: {"model": ErrorResponse}, 422: INVALID_BODY},
        summary="Score many customers at once",
        openapi_extra=request_body(BATCH_SCHEMA),
    )
    async def predict_batch(request: Request) -> Response:
        served = flow.serving()
        customers = decode.validated(served.schema.batch, *await body_of(request))["customers"]
        limit = flow.settings.max_batch_rows
        if len(customers) > limit:
            raise BatchTooLargeError(
                f"batch has {len(customers)} customers; the limit is "
                f"{limit} (CHURNOPS_MAX_BATCH_ROWS): split it"
            )
        return await respond(flow, request, served, customers, batch=True)


async def body_of(request: Request) -> tuple[str | None, bytes]:
    """A scoring request's media type header and body, as ``decode.validated`` reads them."""
    return request.headers.get("content-type"), await request.body()


async def respond(
    flow: ScoringFlow,
    request: Request,
    served: ServedModel,
    customers: list[dict[str, Any]],
    *,
    batch: bool,
) -> Response:
    """Score validated customers with the flow, with the event time and request id the
    headers give, and answer."""
    headers = request.headers
    scored = await flow.score(
        served,
        customers,
        request_id=decode.request_id(headers.get(decode.REQUEST_ID_HEADER)),
        event_time=decode.event_time(headers.get(decode.EVENT_TIME_HEADER)),
        batch=batch,
    )
    return answer(scored)
