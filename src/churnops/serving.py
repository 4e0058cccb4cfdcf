"""The prediction API: a FastAPI app factory serving `models:/<name>@<alias>` through a ModelWatcher
that follows the alias live. The only module that knows HTTP for serving.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pandas as pd
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from churnops.config import Settings
from churnops.errors import BatchTooLargeError, ChurnopsError, NoProductionModelError
from churnops.predict import predict
from churnops.schemas import (
    BatchPredictionRequest,
    BatchPredictionResponse,
    CustomerFeatures,
    ErrorResponse,
    ModelResponse,
    Prediction,
    PredictionRequest,
    PredictionResponse,
)
from churnops.watcher import ModelWatcher, ServedModel

log = logging.getLogger(__name__)

MODEL_VERSION_HEADER = "X-Model-Version"
REQUEST_ID_HEADER = "X-Request-ID"


def _frame(customers: list[CustomerFeatures]) -> pd.DataFrame:
    return pd.DataFrame([c.model_dump() for c in customers])


def _request_id(request: Request) -> str:
    return request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex


def create_app(settings: Settings, watcher: ModelWatcher | None = None) -> FastAPI:
    """Build the API; its lifespan starts and stops the alias watcher."""
    watcher = watcher or ModelWatcher(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        watcher.start()
        try:
            yield
        finally:
            watcher.stop()

    app = FastAPI(
        title="churnops prediction API",
        description=f"Serves `{settings.model_uri}` and follows every promotion and rollback live.",
        version="0.1.0",
        lifespan=lifespan,
        responses={503: {"model": ErrorResponse}},
    )
    app.state.watcher = watcher

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

    @app.get("/health", summary="Liveness: the process answers (never touches MLflow)")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: 200 once a model is loaded, 503 before")
    def ready() -> dict[str, object]:
        served = serving()
        return {"status": "ready", "model_version": served.version}

    @app.get("/model", response_model=ModelResponse, summary="The model serving right now")
    def model() -> ModelResponse:
        served = watcher.current
        return ModelResponse(
            name=settings.model_name,
            alias=settings.alias,
            version=served.version if served else None,
            run_id=served.run_id if served else None,
            loaded_at=served.loaded_at if served else None,
            metrics=served.metrics if served else {},
            alias_version=watcher.wanted_version,
            registry_reachable=watcher.registry_reachable,
            last_error=watcher.last_error,
        )

    @app.post("/predict", response_model=PredictionResponse, summary="Score one customer")
    def predict_one(
        body: PredictionRequest, request: Request, response: Response
    ) -> PredictionResponse:
        served = serving()
        result = predict(served.model, _frame([body]))
        response.headers[MODEL_VERSION_HEADER] = str(served.version)
        return PredictionResponse(
            prediction=int(result.label[0]),
            probability=float(result.probability[0]),
            model_version=served.version,
            request_id=_request_id(request),
        )

    @app.post(
        "/predict/batch",
        response_model=BatchPredictionResponse,
        responses={413: {"model": ErrorResponse}},
        summary="Score many customers at once",
    )
    def predict_batch(
        body: BatchPredictionRequest, request: Request, response: Response
    ) -> BatchPredictionResponse:
        if len(body.customers) > settings.max_batch_rows:
            raise BatchTooLargeError(
                f"batch has {len(body.customers)} customers; the limit is "
                f"{settings.max_batch_rows} (CHURNOPS_MAX_BATCH_ROWS): split it"
            )
        served = serving()
        result = predict(served.model, _frame(body.customers))
        response.headers[MODEL_VERSION_HEADER] = str(served.version)
        return BatchPredictionResponse(
            predictions=[
                Prediction(prediction=int(label), probability=float(p))
                for label, p in zip(result.label, result.probability, strict=True)
            ],
            model_version=served.version,
            request_id=_request_id(request),
        )

    return app


def run_api(settings: Settings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the API with uvicorn until SIGINT/SIGTERM, finishing in-flight requests first."""
    import uvicorn

    from churnops.tracking_server import ensure_port_free

    ensure_port_free(host, port)
    uvicorn.run(
        create_app(settings), host=host, port=port, log_level="info", timeout_graceful_shutdown=10
    )
