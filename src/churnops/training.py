"""Training: a seeded scikit-learn pipeline fitted on a stratified split and scored on the held-out
part. Pure: it knows nothing of MLflow, so it is testable and the registry module logs its result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.dummy import DummyClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from churnops import compiled
from churnops.data import Dataset
from churnops.gate import DEFAULT_GATE_F1, GateVerdict, decide

TEST_SIZE = 0.25
HOLDOUT_TARGET = "__churn__"
INPUT_EXAMPLE_ROWS = 5


@dataclass(frozen=True)
class TrainingResult:
    """A fitted pipeline with its held-out metrics and gate verdict."""

    model: Pipeline
    metrics: dict[str, float]
    params: dict[str, Any]
    verdict: GateVerdict
    input_example: pd.DataFrame
    train_rows: int
    test_rows: int
    export: compiled.Export
    holdout: pd.DataFrame


def build_pipeline(dataset: Dataset, seed: int) -> Pipeline:
    """Preprocessing (impute, scale, one-hot) followed by the course's logistic regression."""
    preprocess = ColumnTransformer(
        [
            (
                "numeric",
                make_pipeline(SimpleImputer(strategy="median"), StandardScaler()),
                list(dataset.numeric),
            ),
            # NB: unknown categories at serving time become all-zero columns instead of errors, and
            # a missing category is a category of its own, which also keeps the pipeline
            # convertible to ONNX (skl2onnx cannot convert an imputer over strings with NaN).
            ("categorical", OneHotEncoder(handle_unknown="ignore"), list(dataset.categorical)),
        ]
    )
    # Balanced class weights trade some precision for recall, which raises F1 at ~25% positives.
    classifier = LogisticRegression(max_iter=1000, class_weight="balanced", random_state=seed)
    return Pipeline([("preprocess", preprocess), ("classifier", classifier)])


def score(y_true: pd.Series, predicted: np.ndarray, probability: np.ndarray) -> dict[str, float]:
    """The held-out metrics every version is judged on."""
    return {
        "accuracy": float(accuracy_score(y_true, predicted)),
        "precision": float(precision_score(y_true, predicted, zero_division=0)),
        "recall": float(recall_score(y_true, predicted, zero_division=0)),
        "f1": float(f1_score(y_true, predicted, zero_division=0)),
        "roc_auc": float(roc_auc_score(y_true, probability)),
    }


def baseline_f1(y_train: pd.Series, X_test: pd.DataFrame, y_test: pd.Series) -> float:
    """F1 of always predicting churn: the best any constant guess can reach on F1."""
    dummy = DummyClassifier(strategy="constant", constant=1).fit(
        np.zeros((len(y_train), 1)), y_train
    )
    return float(f1_score(y_test, dummy.predict(np.zeros((len(X_test), 1))), zero_division=0))


def train(dataset: Dataset, seed: int = 42, gate_f1: float = DEFAULT_GATE_F1) -> TrainingResult:
    """Fit the pipeline on a seeded stratified split and decide the gate on the held-out part."""
    X_train, X_test, y_train, y_test = train_test_split(
        dataset.features,
        dataset.target,
        test_size=TEST_SIZE,
        stratify=dataset.target,
        random_state=seed,
    )
    model = build_pipeline(dataset, seed).fit(X_train, y_train)
    probability = model.predict_proba(X_test)[:, 1]
    metrics = score(y_test, model.predict(X_test), probability)
    metrics["baseline_f1"] = baseline_f1(y_train, X_test, y_test)
    verdict = decide(metrics["f1"], metrics["baseline_f1"], gate_f1)
    classifier = model.named_steps["classifier"]
    params: dict[str, Any] = {
        "model_type": "logreg",
        "test_size": TEST_SIZE,
        **{f"classifier_{k}": v for k, v in classifier.get_params().items()},
    }
    return TrainingResult(
        model=model,
        metrics=metrics,
        params=params,
        verdict=verdict,
        input_example=X_train.head(INPUT_EXAMPLE_ROWS).reset_index(drop=True),
        train_rows=len(X_train),
        test_rows=len(X_test),
        export=compiled.export(model, dataset.numeric, dataset.categorical, X_test),
        holdout=X_test.assign(**{HOLDOUT_TARGET: y_test.to_numpy()}).reset_index(drop=True),
    )
