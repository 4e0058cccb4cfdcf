"""Response bodies of the prediction API. Request bodies depend on the serving version's columns
and are generated from its signature by the inputs module."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class Prediction(BaseModel):
    """One customer's score."""

    prediction_id: str = Field(
        description="Unique id of this prediction: send it back with the churn outcome "
        "(`churnops labels add`)."
    )
    prediction: int = Field(description="1 when the customer is predicted to churn.")
    probability: float = Field(description="Probability of churn, 0..1.")
    model_version: int | None = Field(
        default=None,
        description="Only on rows a canary challenger answered: its version (the others were "
        "answered by the response's model_version).",
    )


class PredictionResponse(Prediction):
    """Answer of POST /predict."""

    model_version: int
    request_id: str


class BatchPredictionResponse(BaseModel):
    """Answer of POST /predict/batch, in the order of the request."""

    predictions: list[Prediction]
    model_version: int
    request_id: str


class ChallengerState(BaseModel):
    """The challenger this worker follows (GET /model)."""

    alias: str
    version: int
    mode: str = Field(description="shadow (scored after production answers) or canary.")
    percent: float = Field(description="Share of rows (shadow) or customers (canary), 0..100.")
    loaded_version: int | None = Field(description="The challenger version loaded here.")
    active: bool = Field(description="True when it is in use (loaded, and not production).")
    last_error: str | None
    shadow_queued_rows: int
    shadow_scored_rows: int
    shadow_dropped_rows: int = Field(description="Rows not shadowed: the queue was full.")


class StoreState(BaseModel):
    """This worker's prediction-store writer: what is written, waiting, and lost."""

    written_rows: int = Field(description="Rows this worker wrote to the store.")
    unwritten_rows: int = Field(description="Answered rows waiting to be written (in memory).")
    failing: bool = Field(description="True from a failed write until a write succeeds.")
    dropped_rows: int = Field(
        description="Answered rows never stored: the buffer was full while the store could not "
        "be written (CHURNOPS_STORE_MAX_BUFFER_ROWS)."
    )
    bad_rows: int = Field(description="Rows the store could not take (skipped, logged).")
    recovered_rows: int = Field(
        description="Rows a stopped or killed worker had spooled, written by this one."
    )
    failed_writes: int = Field(description="Writes that failed and were retried.")
    spool_failures: int = Field(
        description="Conversion ticks whose rows could not be kept in the local spool."
    )
    last_error: str | None = Field(description="Why the last failed write failed.")
    retry_in_seconds: float | None = Field(
        description="When the next write is tried, while the store fails."
    )


class ModelResponse(BaseModel):
    """Answer of GET /model: what is serving and how the watcher is doing."""

    name: str
    alias: str
    version: int | None
    run_id: str | None
    loaded_at: datetime | None
    metrics: dict[str, float]
    inference: str | None = Field(description="onnx (the verified export) or sklearn.")
    threshold: float | None = Field(description="Churn is predicted when probability >= this.")
    inputs: list[str] = Field(description="The fields a request carries for this version.")
    alias_version: int | None = Field(description="Where the alias pointed at the last poll.")
    registry_reachable: bool | None
    last_error: str | None = Field(description="Why the last poll or swap failed, if it did.")
    verified: bool | None = Field(
        default=None,
        description="True when the served files match the sha256 digests pinned in the ledger "
        "at promotion; null when the version was moved outside churnops.",
    )
    stale: bool = Field(
        default=False,
        description="True while serving the on-disk copy of the last served version because "
        "the registry was unreachable at start.",
    )
    worker_pid: int = Field(description="The worker process that answered.")
    challenger: ChallengerState | None = None
    store: StoreState | None = Field(
        default=None, description="The prediction store's writer; null when rows are not kept."
    )


class ErrorResponse(BaseModel):
    """Every non-validation error: one message that says what to do."""

    detail: str
