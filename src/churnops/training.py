"""Training: seeded scikit-learn pipelines fitted on a stratified split, with the decision
threshold tuned for F1 by cross-validation on the training part, scored on the held-out part.
Pure: it knows nothing of MLflow, so it is testable and the registry module logs its result.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    make_scorer,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.model_selection import (
    FixedThresholdClassifier,
    StratifiedKFold,
    TunedThresholdClassifierCV,
    train_test_split,
)
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler, TargetEncoder

from churnops import compiled
from churnops import search as search_module
from churnops.config import ModelKind
from churnops.data import Dataset
from churnops.errors import DataError
from churnops.gate import DEFAULT_GATE_F1, GateVerdict, decide

log = logging.getLogger(__name__)
CANDIDATES: tuple[ModelKind, ...] = ("logreg", "hgb")
# NB: the families `--search` explores; a random forest is one only there (not a --model kind).
FAMILIES = ("logreg", "hgb", "rf")
KIND_NAMES = {
    "logreg": "Logistic regression",
    "hgb": "Histogram gradient boosting",
    "rf": "Random forest",
}
CV_FOLDS = 5
TEST_SIZE = 0.25
HOLDOUT_TARGET = "__churn__"
INPUT_EXAMPLE_ROWS = 5


@dataclass(frozen=True)
class TrainingResult:
    """A fitted, threshold-tuned model with its held-out metrics and gate verdict."""

    model: FixedThresholdClassifier
    kind: str
    threshold: float
    cv_f1: dict[str, float]
    metrics: dict[str, float]
    params: dict[str, Any]
    verdict: GateVerdict
    input_example: pd.DataFrame
    train_features: pd.DataFrame
    train_rows: int
    test_rows: int
    export: compiled.Export
    holdout: pd.DataFrame
    seconds: float
    search: search_module.SearchRecord | None = None

    @property
    def holdout_features(self) -> pd.DataFrame:
        """The held-out rows without their label."""
        return self.holdout.drop(columns=[HOLDOUT_TARGET])

    @property
    def holdout_target(self) -> np.ndarray:
        """The held-out labels (0/1)."""
        return self.holdout[HOLDOUT_TARGET].to_numpy()


def _target_encoder(seed: int) -> TargetEncoder:
    # NB: cross-fitted inside fit (5 shuffled folds), so the classifier never learns from a
    # row's own label through its encoding; unseen values encode to the training churn rate.
    folds = StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=seed)
    return TargetEncoder(target_type="binary", cv=folds)


def build_pipeline(
    kind: str,
    numeric: tuple[str, ...],
    categorical: tuple[str, ...],
    seed: int,
    encoded: tuple[str, ...] = (),
    params: dict[str, Any] | None = None,
) -> Pipeline:
    """The untuned pipeline for ``kind``: preprocessing that handles missing values, then the
    classifier, with ``params`` (a search's choice) over the classifier's defaults."""
    if kind == "logreg":
        preprocess = ColumnTransformer(
            [
                (
                    "numeric",
                    make_pipeline(SimpleImputer(strategy="median"), StandardScaler()),
                    list(numeric),
                ),
                # NB: unknown categories at serving time become all-zero columns instead of
                # errors, and a missing category is a category of its own, which also keeps the
                # pipeline convertible to ONNX (skl2onnx cannot convert an imputer over strings).
                ("categorical", OneHotEncoder(handle_unknown="ignore"), list(categorical)),
                ("encoded", make_pipeline(_target_encoder(seed), StandardScaler()), list(encoded)),
            ]
        )
        # Balanced class weights trade precision for recall, which raises F1 at ~25% positives.
        classifier: Any = LogisticRegression(
            max_iter=1000, class_weight="balanced", random_state=seed
        )
    elif kind in ("hgb", "rf"):
        preprocess = ColumnTransformer(
            [
                ("numeric", "passthrough", list(numeric)),
                # NB: categories become ordinal codes the trees split on like numbers; unknown and
                # missing ones become NaN, which the trees route natively. Measured on the telecom
                # table, native categorical splits over a 51-level column overfit (held-out F1
                # 0.77 vs 0.80), so codes are the general choice.
                (
                    "categorical",
                    OrdinalEncoder(
                        handle_unknown="use_encoded_value",
                        unknown_value=np.nan,
                        encoded_missing_value=np.nan,
                    ),
                    list(categorical),
                ),
                ("encoded", _target_encoder(seed), list(encoded)),
            ]
        )
        if kind == "hgb":
            classifier = HistGradientBoostingClassifier(random_state=seed)
        else:
            # NB: one job: a served model answers one request per thread, and threads of its
            # own per call would cost more than they save on one row.
            # NB: leaves of at least 3 rows: fully grown trees made a 45 MB model file on
            # 2,250 rows for no better ROC AUC.
            classifier = RandomForestClassifier(
                n_estimators=200, min_samples_leaf=3, n_jobs=1, random_state=seed
            )
    else:
        raise ValueError(f"no pipeline for model kind {kind!r}")
    if params:
        classifier.set_params(**params)
    return Pipeline([("preprocess", preprocess), ("classifier", classifier)])


def binary_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """F1 of the positive class (0 when nothing is predicted or present), as scikit-learn's
    ``f1_score`` computes it for 0/1 labels.

    NB: threshold tuning scores 100 thresholds per fold; ``f1_score``'s input validation made a
    logistic-regression fit on the built-in data take 3.0 s instead of 0.7 s.
    """
    truth, predicted = np.asarray(y_true) == 1, np.asarray(y_pred) == 1
    tp = int(np.count_nonzero(truth & predicted))
    denominator = int(np.count_nonzero(truth)) + int(np.count_nonzero(predicted))
    return 2 * tp / denominator if denominator else 0.0


def tune(
    kind: str,
    dataset: Dataset,
    X: pd.DataFrame,
    y: pd.Series,
    seed: int,
    params: dict[str, Any] | None = None,
) -> TunedThresholdClassifierCV:
    """Fit ``kind`` with its decision threshold tuned for F1 by stratified cross-validation on
    ``X``/``y`` only; ``best_score_`` is the cross-validated F1 at that threshold."""
    pipeline = build_pipeline(
        kind, dataset.numeric, dataset.categorical, seed, dataset.encoded, params
    )
    folds = StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=seed)
    return TunedThresholdClassifierCV(
        pipeline, scoring=make_scorer(binary_f1), cv=folds, random_state=seed
    ).fit(X, y)


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


def split(dataset: Dataset, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, pd.Series]:
    """Training and held-out rows: a stratified random quarter held out, or, for a table with
    event times (built from the store), the newest quarter: the gate then compares candidate
    and champion on the most recent customers, as a churn team would, and the model never
    learns from rows served after the ones it is judged on."""
    if dataset.times is None:
        parts = train_test_split(
            dataset.features,
            dataset.target,
            test_size=TEST_SIZE,
            stratify=dataset.target,
            random_state=seed,
        )
        return parts[0], parts[1], parts[2], parts[3]
    order = np.argsort(dataset.times.to_numpy(), kind="stable")
    cut = len(order) - int(np.ceil(len(order) * TEST_SIZE))
    older, newer = order[:cut], order[cut:]
    y_train, y_test = dataset.target.iloc[older], dataset.target.iloc[newer]
    for part, name in ((y_train, "training"), (y_test, "held-out (newest)")):
        if part.nunique() < 2:
            raise DataError(
                f"{dataset.source}: the {name} rows of the out-of-time split have one outcome "
                f"only ({int(part.iloc[0])}); widen --since/--until"
            )
    return dataset.features.iloc[older], dataset.features.iloc[newer], y_train, y_test


def train(
    dataset: Dataset,
    seed: int = 42,
    gate_f1: float = DEFAULT_GATE_F1,
    kind: ModelKind = "logreg",
    search_budget: float | None = None,
    config: tuple[str, dict[str, Any]] | None = None,
) -> TrainingResult:
    """Fit ``kind`` (or, for ``auto``, the candidate with the best cross-validated F1 on the
    training split) and decide the gate on the held-out part, at the tuned threshold.

    With ``search_budget`` (seconds), the candidates are the first trials of a search over the
    model families (only ``kind``'s unless it is ``auto``) that ends within the budget; with
    ``config`` (a family and its parameters, as a search recorded them), that one is refitted.
    """
    started = time.perf_counter()
    X_train, X_test, y_train, y_test = split(dataset, seed)
    defaults = tuple(k for k in CANDIDATES if kind in (k, "auto"))
    record = None
    if config is not None:
        chosen, found = config
        tuned = {chosen: tune(chosen, dataset, X_train, y_train, seed, found)}
    elif search_budget is not None:
        families = FAMILIES if kind == "auto" else (kind,)
        best, record = search_module.run(
            lambda family, params: tune(family, dataset, X_train, y_train, seed, params),
            families,
            defaults,
            search_budget,
            seed,
        )
        chosen = record.best.family
        tuned = {chosen: best}
    else:
        tuned = {}
        for candidate in defaults:
            # NB: the one slow step (20 s for gradient boosting on 2,666 rows): say what it is
            # doing.
            log.info(
                "fitting %s: threshold tuned by %d-fold cross-validation on %d rows",
                KIND_NAMES[candidate],
                CV_FOLDS,
                len(X_train),
            )
            tuned[candidate] = tune(candidate, dataset, X_train, y_train, seed)
        # NB: ties go to the first candidate, the simpler model.
        chosen = max(tuned, key=lambda k: float(tuned[k].best_score_))
    cv_f1: dict[str, float] = {k: float(m.best_score_) for k, m in tuned.items()}
    if record is not None:
        cv_f1 = {t.family: t.cv_f1 for t in record.trials if t.default} | {"search": cv_f1[chosen]}
    pipeline = tuned[chosen].estimator_
    threshold = float(tuned[chosen].best_threshold_)
    # NB: what ships is the refitted pipeline behind a fixed threshold, not the tuning wrapper:
    # the wrapper carries its scorer and folds, which would make loading the model need churnops
    # itself and trust more types. Freezing keeps fit() from refitting the pipeline.
    model = FixedThresholdClassifier(
        FrozenEstimator(pipeline), threshold=threshold, response_method="predict_proba"
    ).fit(X_train, y_train)
    probability = model.predict_proba(X_test)[:, 1]
    metrics = score(y_test, model.predict(X_test), probability)
    metrics["baseline_f1"] = baseline_f1(y_train, X_test, y_test)
    verdict = decide(metrics["f1"], metrics["baseline_f1"], gate_f1)
    classifier = pipeline.named_steps["classifier"]
    params: dict[str, Any] = {
        "model_requested": kind,
        "model_type": chosen,
        "test_size": TEST_SIZE,
        "split": "random" if dataset.times is None else "out of time (newest rows held out)",
        "cv_folds": CV_FOLDS,
        "threshold": threshold,
        **({"target_encoded": ", ".join(dataset.encoded)} if dataset.encoded else {}),
        **(record.params() if record is not None else {}),
        **{f"classifier_{k}": v for k, v in classifier.get_params().items()},
    }
    if config is not None:
        params |= {
            "search_best_family": chosen,
            "search_best_params": json.dumps(config[1], sort_keys=True),
        }
    return TrainingResult(
        model=model,
        kind=chosen,
        threshold=threshold,
        cv_f1=cv_f1,
        metrics=metrics,
        params=params,
        verdict=verdict,
        input_example=X_train.head(INPUT_EXAMPLE_ROWS).reset_index(drop=True),
        train_features=X_train,
        train_rows=len(X_train),
        test_rows=len(X_test),
        # NB: the export is of the inner pipeline; engines apply the tuned threshold themselves.
        export=compiled.export(
            pipeline, dataset.numeric, dataset.categorical + dataset.encoded, X_test
        ),
        holdout=X_test.assign(**{HOLDOUT_TARGET: y_test.to_numpy()}).reset_index(drop=True),
        seconds=time.perf_counter() - started,
        search=record,
    )
