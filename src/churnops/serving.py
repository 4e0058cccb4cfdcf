"""The prediction API: a FastAPI app factory serving `models:/<name>@<alias>` through a ModelWatcher
that follows the alias live. The only module that knows HTTP for serving.

Each request takes one snapshot of the serving model and uses it to the end, so a response never
mixes versions. With several workers, each process runs its own watcher and converges on the alias
within one poll interval; /model answers for the worker that served the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import hmac
import logging
import math
import os
import re
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import TypeAdapter, ValidationError
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from churnops.config import LOOPBACK_HOSTS, Settings, apply_mlflow_client_limits
from churnops.errors import (
    BatchTooLargeError,
    ChurnopsError,
    EventTimeError,
    NoProductionModelError,
    UnsupportedMediaTypeError,
    WorkersNotReadyError,
)
from churnops.monitoring.store import BufferedWriter, open_store
from churnops.observability import (
    MULTIPROC_ENV,
    ServingMetrics,
    configure_logging,
)
from churnops.registry import LoadedModel
from churnops.routing import ChallengerRoute, Rows
from churnops.schemas import (
    BatchPredictionResponse,
    ChallengerState,
    ErrorResponse,
    ModelResponse,
    PredictionResponse,
    StoreState,
)
from churnops.shadow import ShadowScorer
from churnops.watcher import ModelWatcher, ServedModel

log = logging.getLogger(__name__)

MODEL_VERSION_HEADER = "X-Model-Version"
REQUEST_ID_HEADER = "X-Request-ID"
EVENT_TIME_HEADER = "X-Event-Time"
# NB: request bodies are validated against the serving version's generated schema, which the
# OpenAPI document references by these names and fills in from that version.
CUSTOMER_SCHEMA = "Customer"
DOCS_ASSETS = "/docs-assets"
BATCH_SCHEMA = "BatchPredictionRequest"
NO_MODEL_SCHEMA = {
    "type": "object",
    "description": "No model is serving yet: the fields appear once a version is promoted.",
}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def send_error(
    send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answer from pure ASGI middleware with the API's error body, ``{"detail": ...}``."""
    body = orjson.dumps({"detail": detail})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


def host_name(header: bytes) -> str:
    """The name in a Host header, without its port: ``[::1]:8000`` -> ``::1``."""
    text = header.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1:].partition("]")[0]
    return text.rpartition(":")[0] if text.count(":") == 1 else text


class GuardMiddleware:
    """Pure ASGI middleware: refuses unknown Host headers with 400 and oversized bodies with
    413, and records request metrics."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: ServingMetrics,
        max_body_bytes: int,
        allowed_hosts: frozenset[str] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        limit = self.max_body_bytes
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host")
        if self.allowed_hosts is not None and host is not None:
            name = host_name(host)
            if name not in self.allowed_hosts:
                detail = (
                    f"Host {name!r} is not served here; add it to CHURNOPS_API_ALLOWED_HOSTS "
                    "if this API is meant to answer under that name"
                )
                await send_error(send, 400, detail)
                self._observe(scope, 400, start)
                return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(send, int(declared))
            self._observe(scope, 413, start)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise _BodyTooLarge
            return message

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, limited_receive, recording_send)
        except _BodyTooLarge:
            status = 413
            await self._refuse(send, received)
        finally:
            self._observe(scope, status, start)

    async def _refuse(self, send: Send, size: int) -> None:
        detail = (
            f"request body of {size} bytes exceeds the limit of {self.max_body_bytes} bytes; "
            "send fewer customers per request"
        )
        await send_error(send, 413, detail)

    def _observe(self, scope: Scope, status: int, start: float) -> None:
        route = scope.get("route")
        path = getattr(route, "path", "unmatched")
        self.metrics.observe_request(path, scope["method"], status, time.perf_counter() - start)


class BearerTokenMiddleware:
    """Pure ASGI middleware: every route but the probes needs ``Authorization: Bearer <token>``.

    /health and /ready stay open, so load balancers and orchestrators can probe without the
    secret, and so do /docs and /openapi.json. The comparison is constant-time.
    """

    # NB: the docs pages and the OpenAPI document carry field names only (their example is a
    # placeholder when a token is set), so a user can reach "Authorize" without the secret.
    OPEN_PATHS = frozenset({"/health", "/ready", "/docs", "/docs/oauth2-redirect", "/openapi.json"})

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or path in self.OPEN_PATHS
            or path.startswith(DOCS_ASSETS + "/")
            or self._allowed(scope)
        ):
            await self.app(scope, receive, send)
            return
        detail = (
            "missing or wrong bearer token: send the header "
            "Authorization: Bearer <CHURNOPS_API_TOKEN>"
        )
        await send_error(send, 401, detail, [(b"www-authenticate", b"Bearer")])

    def _allowed(self, scope: Scope) -> bool:
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, credentials = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self.token)


def _request_body(schema: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
        }
    }


def _echoable(value: Any) -> Any:
    """``value`` with every non-finite number replaced by its text, so a 422 body can echo the
    input as JSON (``1e400`` parses to inf, which JSON cannot carry)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, bytes | bytearray):
        # NB: pydantic hands back the raw body when it is not UTF-8 (a \xff in a string).
        return bytes(value[:200]).decode("utf-8", errors="replace")
    if isinstance(value, dict):
        return {k: _echoable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_echoable(v) for v in value]
    return value


def _validated(
    adapter: TypeAdapter[dict[str, Any]], request: Request, body: bytes
) -> dict[str, Any]:
    """Parse and validate a JSON body in one pass (pydantic-core); errors become FastAPI's
    field-level 422, located under ``body`` as for declared request models."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "application/json":
        # NB: a web page may post text/plain to a loopback API without a CORS preflight.
        raise UnsupportedMediaTypeError(
            f"request bodies must be sent as Content-Type: application/json, not "
            f"{media or 'none'!r}"
        )
    try:
        return adapter.validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False)
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"]), "input": _echoable(e.get("input"))} for e in errors]
        ) from None


_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _request_id(request: Request) -> str:
    """The caller's X-Request-ID when it is at most 128 safe characters, else a new one."""
    given = request.headers.get(REQUEST_ID_HEADER)
    if given is not None and _SAFE_REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


# NB: how far ahead of this machine's clock an event time may be (clock skew between machines).
MAX_EVENT_TIME_AHEAD = 300.0


# NB: "-0", "-1", ... made once: a 1,000-row request's ids cost ~0.05 ms instead of ~0.3 ms.
_SUFFIXES = tuple(f"-{i}" for i in range(1024))


def row_suffixes(rows: int) -> tuple[str, ...]:
    """``-0``, ``-1``, ... one per row of a request."""
    if rows <= len(_SUFFIXES):
        return _SUFFIXES[:rows]
    return _SUFFIXES + tuple(f"-{i}" for i in range(len(_SUFFIXES), rows))


def _event_time(request: Request) -> float | None:
    """The X-Event-Time header as epoch seconds: when the customer's data was observed, for
    replaying past traffic (`churnops simulate`, a backfill); None when absent."""
    given = request.headers.get(EVENT_TIME_HEADER)
    if given is None:
        return None
    try:
        moment = datetime.fromisoformat(given.strip().replace("Z", "+00:00"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise EventTimeError(
            f"{EVENT_TIME_HEADER} must be an ISO 8601 time with a zone, e.g. "
            f"2026-12-01T09:30:00Z; got {given[:64]!r}"
        )
    seconds = moment.timestamp()
    if seconds < 0:
        raise EventTimeError(
            f"{EVENT_TIME_HEADER} {given[:64]!r} is before 1970-01-01T00:00:00Z; the prediction "
            "store keeps event times from then on"
        )
    if seconds > time.time() + MAX_EVENT_TIME_AHEAD:
        raise EventTimeError(f"{EVENT_TIME_HEADER} {given[:64]!r} is in the future")
    return seconds


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


def _challenger_watcher(settings: Settings, metrics: ServingMetrics) -> ChallengerRoute:
    def swapped(served: ServedModel) -> None:
        metrics.challenger_version.set(served.version)

    return ChallengerRoute(
        settings, on_swap=swapped, on_cleared=lambda: metrics.challenger_version.set(0)
    )


def create_app(
    settings: Settings,
    watcher: ModelWatcher | None = None,
    challenger: ChallengerRoute | None = None,
) -> FastAPI:
    """Build the API; its lifespan starts and stops the alias watchers, the shadow scorer and
    the store's writer."""
    metrics = ServingMetrics()

    def swapped(served: ServedModel) -> None:
        metrics.swaps.inc()
        metrics.model_version.set(served.version)

    if watcher is None:
        from churnops import cache, registry

        def load(settings: Settings, version: int) -> LoadedModel:
            if settings.failpoint == SLOW_LOAD_FAILPOINT:
                _slow_load_unless_first()
            keep = functools.partial(cache.keep, settings) if settings.serve_cache else None
            return registry.load_version(settings, version, keep=keep)

        watcher = ModelWatcher(
            settings,
            load=load,
            on_swap=swapped,
            on_failed_swap=metrics.failed_swaps.inc,
            on_poll=lambda reachable: metrics.registry_up.set(1 if reachable else 0),
            fallback=cache.load_served if settings.serve_cache else lambda _: None,
            on_served=cache.mark_served if settings.serve_cache else lambda _s, _v: None,
        )
    if challenger is None:
        challenger = _challenger_watcher(settings, metrics)
    store: BufferedWriter | None = None
    shadow: ShadowScorer | None = None

    def shadow_scored(version: int, labels: np.ndarray, seconds: float) -> None:
        metrics.scoring.labels("shadow", str(version)).observe(seconds)
        metrics.observe_predictions(labels.tolist(), version, "shadow")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        nonlocal store, shadow
        if settings.store_predictions:
            store = BufferedWriter(
                open_store(settings.store_uri),
                flush_seconds=settings.store_flush_seconds,
                buffer_rows=settings.store_buffer_rows,
                retention_days=settings.store_retention_days,
                max_rows=settings.store_max_buffer_rows,
                spool_dir=settings.spool_dir,
                on_state=metrics.observe_store,
            )
            store.start()
            app.state.store = store
            shadow = ShadowScorer(
                challenger.current_for_shadow,
                store,
                model=settings.model_name,
                alias=settings.challenger_alias,
                queue_rows=settings.shadow_queue_rows,
                on_scored=shadow_scored,
                on_dropped=metrics.shadow_dropped.inc,
            )
            shadow.start()
            app.state.shadow = shadow
        watcher.start()
        challenger.watcher.start()
        # NB: rows wait for the store's writer a fraction of a second, long enough to survive
        # into the older GC generations, and a full collection then scanned every object the
        # imports made (~0.1 s stalls: p99 63 ms at one connection). Frozen objects are skipped.
        gc.freeze()
        try:
            yield
        finally:
            watcher.stop()
            challenger.watcher.stop()
            if shadow is not None:
                await run_in_threadpool(shadow.close)
            if store is not None:
                # NB: after uvicorn has finished in-flight requests, so every answered row is
                # written before the process exits.
                await run_in_threadpool(store.close)

    # NB: FastAPIOffline serves Swagger UI's files itself: FastAPI's /docs loads them from a CDN,
    # which leaves the page blank on a machine without Internet access.
    app = FastAPIOffline(
        redoc_url=None,
        static_url=DOCS_ASSETS,
        title="churnops prediction API",
        description=f"Serves `{settings.model_uri}` and follows every promotion and rollback live.",
        version="0.1.0",
        lifespan=lifespan,
        responses={503: {"model": ErrorResponse}},
    )
    app.state.watcher = watcher
    openapi_cache: dict[int | None, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        """The OpenAPI document, with the request fields of the version serving right now."""
        served = watcher.current
        key = served.version if served else None
        if key not in openapi_cache:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=(app.description or "")
                + (
                    f" Request fields are those of version {key}."
                    if served
                    else " No version is serving yet."
                ),
                routes=app.routes,
            )
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            if settings.api_token is not None:
                document["components"]["securitySchemes"] = {
                    "bearer": {"type": "http", "scheme": "bearer"}
                }
                document["security"] = [{"bearer": []}]
            if served is None:
                schemas |= {CUSTOMER_SCHEMA: NO_MODEL_SCHEMA, BATCH_SCHEMA: NO_MODEL_SCHEMA}
            else:
                schemas |= served.schema.json_schemas
                if settings.api_token is not None:
                    # NB: the docs are open when a token guards the API: no training row in them.
                    schemas[CUSTOMER_SCHEMA]["examples"] = [served.schema.placeholder_example()]
            openapi_cache.clear()
            openapi_cache[key] = document
        return openapi_cache[key]

    app.openapi = openapi  # type: ignore[method-assign]
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

    def serving() -> ServedModel:
        served = watcher.current
        if served is None:
            raise NoProductionModelError(
                f"no model loaded yet: {settings.model_uri} "
                + (f"is not set ({watcher.last_error})" if watcher.last_error else "is not set")
                + "; promote a version with `churnops promote`"
            )
        return served

    async def predict(served: ServedModel, columns: dict[str, list[Any]], role: str) -> Any:
        started = time.perf_counter()
        if served.engine.kind == "onnx":
            # NB: ~50 us per call: cheaper inline on the event loop than a hop to a thread.
            result = served.engine.predict_columns(columns)
        else:
            result = await run_in_threadpool(served.engine.predict_columns, columns)
        if role != "production":
            # NB: production's time is the request histogram's; ~3 us a request saved.
            seconds = time.perf_counter() - started
            metrics.scoring.labels(role, str(served.version)).observe(seconds)
        return result

    other_alias = settings.challenger_alias

    def keep(served: ServedModel, rows: Rows, role: str, alias: str) -> None:
        assert store is not None
        store.add(rows.batch(settings.model_name, served, alias, role))

    async def score(
        served: ServedModel, customers: list[dict[str, Any]], request: Request, batch: bool
    ) -> Response:
        """Score the rows with one engine snapshot (a canary's rows with the challenger's) and
        answer with JSON built by orjson; queue them for the shadow after."""
        event_time = _event_time(request)
        columns = served.schema.columns(customers)
        request_id = _request_id(request)
        other = challenger.now(served)
        customer_ids = (
            served.schema.customer_ids(customers)
            if store is not None or other is not None
            else None
        )
        # NB: one random base per request and the row's position: unique without a uuid per row.
        base = os.urandom(12).hex()  # NB: 96 random bits, ~4x cheaper than uuid4().hex
        ids = [base + suffix for suffix in row_suffixes(len(customers))]
        rows = Rows(ids, columns, customer_ids, request_id, event_time, time.time())
        canary = None
        if other is not None and other.slot.mode == "canary":
            canary = rows.chosen(other.slot.percent)
        answered_by: list[int] | None = None
        if canary is None or other is None:
            result = await predict(served, columns, "production")
            labels, probabilities = result.label.tolist(), result.probability.tolist()
            answered = [(served, "production", rows.scored(result))]
            metrics.observe_predictions(labels, served.version)
        else:
            label_of = np.empty(len(ids), dtype=np.int64)
            probability_of = np.empty(len(ids), dtype=np.float64)
            answered = []
            for model, role, index in (
                (served, "production", np.flatnonzero(~canary)),
                (other.model, "canary", np.flatnonzero(canary)),
            ):
                if len(index):
                    part = rows.take(index, [f.name for f in model.schema.fields])
                    result = await predict(model, part.columns, role)
                    label_of[index], probability_of[index] = result.label, result.probability
                    answered.append((model, role, part.scored(result)))
            labels, probabilities = label_of.tolist(), probability_of.tolist()
            answered_by = np.where(canary, other.model.version, served.version).tolist()
            for model, role, part in answered:
                metrics.observe_predictions(part.labels.tolist(), model.version, role)
        for model, role, part in answered:
            if store is not None:
                keep(model, part, role, settings.alias if role == "production" else other_alias)
        if shadow is not None and other is not None and other.slot.mode == "shadow":
            sampled = rows.sample(other.slot.percent)
            if sampled is not None:
                shadow.offer(sampled)
        if batch:
            predictions = [
                {"prediction_id": i, "prediction": label, "probability": p}
                for i, label, p in zip(ids, labels, probabilities, strict=True)
            ]
            if answered_by is not None:
                # NB: rows a canary answered say so; the rest were answered by model_version.
                for row, version in zip(predictions, answered_by, strict=True):
                    if version != served.version:
                        row["model_version"] = version
            document: dict[str, Any] = {
                "predictions": predictions,
                "model_version": served.version,
                "request_id": request_id,
            }
        else:
            document = {
                "prediction_id": ids[0],
                "prediction": labels[0],
                "probability": probabilities[0],
                "model_version": answered_by[0] if answered_by else served.version,
                "request_id": request_id,
            }
        # NB: built directly rather than through response models: 1,000 Prediction objects cost
        # ~4 ms to build and validate, the orjson document ~1.5 ms.
        return Response(
            orjson.dumps(document),
            media_type="application/json",
            headers={MODEL_VERSION_HEADER: ",".join(str(m.version) for m, _, _ in answered)},
        )

    @app.get("/health", summary="Liveness: the process answers (never touches MLflow)")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: 200 once every worker has a model loaded, 503 before")
    async def ready() -> dict[str, object]:
        served = serving()
        # NB: whichever worker takes the probe's connection answers it; one that is ready must
        # not speak for another still loading, whose next /predict would fail.
        loaded = metrics.workers_serving()
        if loaded is not None and loaded < settings.workers:
            raise WorkersNotReadyError(
                f"{loaded} of {settings.workers} workers serve a model; the others are still "
                "loading it"
            )
        answer: dict[str, object] = {
            "status": "ready",
            "model_version": served.version,
            "stale": served.stale,
        }
        if store is not None:
            # NB: still ready (answers are right) while the store fails: the figures say so.
            state = store.state()
            answer["store"] = {
                "unwritten_rows": state.unwritten_rows,
                "dropped_rows": state.dropped_rows,
                "failing": state.failing,
            }
        return answer

    @app.get("/model", response_model=ModelResponse, summary="The model this worker serves")
    async def model() -> ModelResponse:
        served = watcher.current
        return ModelResponse(
            name=settings.model_name,
            alias=settings.alias,
            version=served.version if served else None,
            run_id=served.run_id if served else None,
            loaded_at=served.loaded_at if served else None,
            metrics=served.metrics if served else {},
            inference=served.engine.kind if served else None,
            threshold=served.engine.threshold if served else None,
            inputs=[f.name for f in served.schema.fields] if served else [],
            alias_version=watcher.wanted_version,
            registry_reachable=watcher.registry_reachable,
            last_error=watcher.last_error,
            verified=served.verified if served else None,
            stale=served.stale if served else False,
            worker_pid=os.getpid(),
            challenger=_challenger_state(),
            store=StoreState.model_validate(store.state().to_dict()) if store is not None else None,
        )

    def _challenger_state() -> ChallengerState | None:
        found = challenger.slot
        if found is None:
            return None
        loaded, production = challenger.watcher.current, watcher.current
        return ChallengerState(
            alias=settings.challenger_alias,
            version=found.version,
            mode=found.mode,
            percent=found.percent,
            loaded_version=loaded.version if loaded else None,
            active=production is not None and challenger.now(production) is not None,
            last_error=challenger.watcher.last_error,
            shadow_queued_rows=shadow.queued() if shadow is not None else 0,
            shadow_scored_rows=shadow.scored_rows if shadow is not None else 0,
            shadow_dropped_rows=shadow.dropped_rows if shadow is not None else 0,
        )

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.post(
        "/predict",
        response_model=PredictionResponse,
        responses={
            415: {"model": ErrorResponse},
            422: {"description": "A field is missing, unknown or of the wrong type."},
        },
        summary="Score one customer",
        openapi_extra=_request_body(CUSTOMER_SCHEMA),
    )
    async def predict_one(request: Request) -> Response:
        served = serving()
        customer = _validated(served.schema.one, request, await request.body())
        return await score(served, [customer], request, batch=False)

    @app.post(
        "/predict/batch",
        response_model=BatchPredictionResponse,
        responses={
            413: {"model": ErrorResponse},
            415: {"model": ErrorResponse},
            422: {"description": "A field is missing, unknown or of the wrong type."},
        },
        summary="Score many customers at once",
        openapi_extra=_request_body(BATCH_SCHEMA),
    )
    async def predict_batch(request: Request) -> Response:
        served = serving()
        customers = _validated(served.schema.batch, request, await request.body())["customers"]
        if len(customers) > settings.max_batch_rows:
            raise BatchTooLargeError(
                f"batch has {len(customers)} customers; the limit is "
                f"{settings.max_batch_rows} (CHURNOPS_MAX_BATCH_ROWS): split it"
            )
        return await score(served, customers, request, batch=True)

    return app


class NoDelayHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with TCP_NODELAY always on.

    NB: in multi-worker mode the workers inherit a listening socket whose ``proto`` is 0, so
    asyncio skips TCP_NODELAY on accepted connections and every response waits ~40 ms for a
    delayed ACK (Nagle). Measured here: 22 req/s at one connection instead of ~1,200.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


def app_from_environment() -> FastAPI:
    """Factory each uvicorn worker process calls: settings from the environment, JSON logs."""
    settings = Settings()
    apply_mlflow_client_limits(settings)
    configure_logging(settings.log_format)
    return create_app(settings)


def run_api(settings: Settings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the API with uvicorn until SIGINT/SIGTERM, finishing in-flight requests first.

    Workers are separate processes that read their settings from the environment, so the
    caller's settings are exported there first.
    """
    import uvicorn

    from churnops.tracking_server import ensure_port_free

    ensure_port_free(host, port)
    if host not in LOOPBACK_HOSTS and settings.api_token is None:
        log.warning(
            "serving on %s without CHURNOPS_API_TOKEN: anyone who can reach this address can "
            "use the API; set a token or bind 127.0.0.1",
            host,
        )
    os.environ.update(settings.as_environment())
    with tempfile.TemporaryDirectory(prefix="churnops-metrics-") as metrics_dir:
        if settings.workers > 1:
            # NB: every worker writes its metrics here and /metrics sums them.
            os.environ[MULTIPROC_ENV] = metrics_dir
        uvicorn.run(
            "churnops.serving:app_from_environment",
            factory=True,
            host=host,
            port=port,
            workers=settings.workers,
            # NB: the stdlib loop, because under uvloop 1% of requests waited ~1 s at 64
            # connections here (p99 1.1 s vs 0.07-0.15 s), at equal throughput.
            loop="asyncio",
            http="churnops.serving:NoDelayHttpToolsProtocol",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=10,
        )
