"""Inference as pure functions over an engine: a fitted model in, labels and churn probabilities
out. Kept apart from the web layer so it is testable and reusable by batch scoring.

Two engines share one interface: ``SklearnEngine`` (the logged pipeline, always available) and
``compiled.OnnxEngine`` (the verified ONNX export, much cheaper per call).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Predictions:
    """Predicted labels (0/1) and the probability of churn, one per input row."""

    label: np.ndarray
    probability: np.ndarray


class Engine(Protocol):
    """Something that scores rows given as columns or as a DataFrame."""

    kind: str
    threshold: float

    def predict_columns(self, columns: dict[str, list[Any]]) -> Predictions:
        """Score column lists keyed by feature name."""

    def predict_frame(self, frame: pd.DataFrame) -> Predictions:
        """Score a DataFrame holding (at least) the model's columns."""


DEFAULT_THRESHOLD = 0.5


def decision_threshold(model: Any) -> float:
    """The threshold a model labels churn at: the one training tuned (a fixed- or tuned-threshold
    classifier), else 0.5 (what argmax over two classes amounts to)."""
    for name in ("best_threshold_", "threshold"):
        value = getattr(model, name, None)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return DEFAULT_THRESHOLD


def label(probability: np.ndarray, threshold: float) -> np.ndarray:
    """Churn (1) when the probability reaches the threshold, as scikit-learn's tuned classifier
    decides."""
    return (probability >= threshold).astype(int)


def predict(model: Any, frame: pd.DataFrame, threshold: float | None = None) -> Predictions:
    """Score ``frame`` with one predict_proba call and label it at the model's threshold."""
    proba = np.asarray(model.predict_proba(frame))
    classes = list(model.classes_)
    positive = proba[:, classes.index(1) if 1 in classes else len(classes) - 1].astype(float)
    cut = decision_threshold(model) if threshold is None else threshold
    return Predictions(label=label(positive, cut), probability=positive)


class SklearnEngine:
    """Scores rows with the logged scikit-learn model, at its own decision threshold."""

    kind = "sklearn"

    def __init__(self, model: Any) -> None:
        self.model = model
        self.threshold = decision_threshold(model)

    def predict_columns(self, columns: dict[str, list[Any]]) -> Predictions:
        """Score column lists keyed by feature name."""
        return predict(self.model, pd.DataFrame(columns), self.threshold)

    def predict_frame(self, frame: pd.DataFrame) -> Predictions:
        """Score a DataFrame holding (at least) the model's columns."""
        return predict(self.model, frame, self.threshold)


def smoke_test(engine: Engine, example: pd.DataFrame | None, version: int) -> None:
    """Predict on a version's input example; raise ChurnopsError unless the answers are sane."""
    from churnops.errors import ChurnopsError

    if example is None or example.empty:
        raise ChurnopsError(f"version {version} has no input example to smoke-test")
    probability = engine.predict_frame(example).probability
    if len(probability) != len(example) or not np.all(np.isfinite(probability)):
        raise ChurnopsError(f"version {version} returned invalid probabilities")
