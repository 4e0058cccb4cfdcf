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

    def predict_columns(self, columns: dict[str, list[Any]]) -> Predictions:
        """Score column lists keyed by feature name."""

    def predict_frame(self, frame: pd.DataFrame) -> Predictions:
        """Score a DataFrame holding (at least) the model's columns."""


def predict(model: Any, frame: pd.DataFrame) -> Predictions:
    """Score ``frame`` with one predict_proba call; labels follow the classifier's argmax."""
    proba = np.asarray(model.predict_proba(frame))
    classes = list(model.classes_)
    positive = classes.index(1) if 1 in classes else len(classes) - 1
    label = np.asarray(model.classes_)[proba.argmax(axis=1)].astype(int)
    return Predictions(label=label, probability=proba[:, positive].astype(float))


class SklearnEngine:
    """Scores rows with the logged scikit-learn pipeline."""

    kind = "sklearn"

    def __init__(self, model: Any) -> None:
        self.model = model

    def predict_columns(self, columns: dict[str, list[Any]]) -> Predictions:
        """Score column lists keyed by feature name."""
        return predict(self.model, pd.DataFrame(columns))

    def predict_frame(self, frame: pd.DataFrame) -> Predictions:
        """Score a DataFrame holding (at least) the model's columns."""
        return predict(self.model, frame)


def smoke_test(engine: Engine, example: pd.DataFrame | None, version: int) -> None:
    """Predict on a version's input example; raise ChurnopsError unless the answers are sane."""
    from churnops.errors import ChurnopsError

    if example is None or example.empty:
        raise ChurnopsError(f"version {version} has no input example to smoke-test")
    probability = engine.predict_frame(example).probability
    if len(probability) != len(example) or not np.all(np.isfinite(probability)):
        raise ChurnopsError(f"version {version} returned invalid probabilities")
