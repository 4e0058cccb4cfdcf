"""Request and response bodies of the prediction API, so validation errors are field-level 422s."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class CustomerFeatures(BaseModel):
    """One customer, in the built-in schema. Unknown categories are accepted and scored."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "tenure_months": 12,
                    "num_complaints": 2,
                    "avg_session_minutes": 25.5,
                    "plan_type": "basic",
                    "region": "EU",
                }
            ]
        },
    )

    tenure_months: int = Field(strict=True, ge=0, le=1200, description="Months as a customer.")
    num_complaints: int = Field(strict=True, ge=0, le=10_000, description="Complaints filed.")
    avg_session_minutes: float = Field(ge=0, le=24 * 60, description="Mean session length.")
    plan_type: str = Field(
        strict=True, min_length=1, max_length=64, description="basic, standard or premium."
    )
    region: str = Field(strict=True, min_length=1, max_length=64, description="NA, EU, AF or AS.")


class PredictionRequest(CustomerFeatures):
    """Body of POST /predict: one customer's fields."""


class BatchPredictionRequest(BaseModel):
    """Body of POST /predict/batch: a list of customers."""

    model_config = ConfigDict(extra="forbid")

    customers: list[CustomerFeatures] = Field(min_length=1)


class Prediction(BaseModel):
    """One customer's score."""

    prediction: int = Field(description="1 when the customer is predicted to churn.")
    probability: float = Field(description="Probability of churn, 0..1.")


class PredictionResponse(Prediction):
    """Answer of POST /predict."""

    model_version: int
    request_id: str


class BatchPredictionResponse(BaseModel):
    """Answer of POST /predict/batch, in the order of the request."""

    predictions: list[Prediction]
    model_version: int
    request_id: str


class ModelResponse(BaseModel):
    """Answer of GET /model: what is serving and how the watcher is doing."""

    name: str
    alias: str
    version: int | None
    run_id: str | None
    loaded_at: datetime | None
    metrics: dict[str, float]
    inference: str | None = Field(description="onnx (the verified export) or sklearn.")
    alias_version: int | None = Field(description="Where the alias pointed at the last poll.")
    registry_reachable: bool | None
    last_error: str | None = Field(description="Why the last poll or swap failed, if it did.")
    worker_pid: int = Field(description="The worker process that answered.")


class ErrorResponse(BaseModel):
    """Every non-validation error: one message that says what to do."""

    detail: str
