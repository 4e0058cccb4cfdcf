"""Inference as a pure function: a fitted pipeline and a frame in, labels and churn probabilities
out. Kept apart from the web layer so it is testable and reusable by batch scoring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Predictions:
    """Predicted labels (0/1) and the probability of churn, one per input row."""

    label: np.ndarray
    probability: np.ndarray


def predict(model: Any, frame: pd.DataFrame) -> Predictions:
    """Score ``frame`` with one predict_proba call; labels follow the classifier's argmax."""
    proba = np.asarray(model.predict_proba(frame))
    classes = list(model.classes_)
    positive = classes.index(1) if 1 in classes else len(classes) - 1
    label = np.asarray(model.classes_)[proba.argmax(axis=1)].astype(int)
    return Predictions(label=label, probability=proba[:, positive].astype(float))
