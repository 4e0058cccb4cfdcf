"""Evidence a person can look at: the confusion matrix at the tuned threshold, ROC and
precision-recall curves, permutation importance and the data report, each as a figure and as JSON.

Pure: it computes on the held-out split and returns figures and documents; the registry module
logs them under ``evidence/`` in the version's run. Figures use matplotlib's object API, never
pyplot, so nothing touches a display or global state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.inspection import permutation_importance
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    PrecisionRecallDisplay,
    RocCurveDisplay,
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from churnops.data import DataReport
from churnops.predict import label

# NB: curves are thinned to this many points in JSON; the figures use every point.
MAX_CURVE_POINTS = 200
PERMUTATION_REPEATS = 5


@dataclass
class Evidence:
    """Figures and JSON documents keyed by their file name under ``evidence/``."""

    figures: dict[str, Figure] = field(default_factory=dict)
    documents: dict[str, dict[str, Any]] = field(default_factory=dict)


def _thin(*columns: np.ndarray) -> list[list[float]]:
    step = max(1, int(np.ceil(len(columns[0]) / MAX_CURVE_POINTS)))
    return [np.round(c[::step].astype(float), 6).tolist() for c in columns]


def _figure() -> tuple[Figure, Any]:
    figure = Figure(figsize=(6, 4.5), layout="constrained")
    return figure, figure.add_subplot()


def confusion(truth: np.ndarray, predicted: np.ndarray, threshold: float) -> tuple[Figure, dict]:
    """Counts of right and wrong labels at the threshold the model serves with."""
    matrix = confusion_matrix(truth, predicted, labels=[0, 1])
    figure, axes = _figure()
    ConfusionMatrixDisplay(matrix, display_labels=["retained", "churned"]).plot(
        ax=axes, colorbar=False
    )
    axes.set_title(f"Held-out confusion matrix at threshold {threshold:.3f}")
    (tn, fp), (fn, tp) = matrix.tolist()
    return figure, {"threshold": threshold, "tn": tn, "fp": fp, "fn": fn, "tp": tp}


def roc(truth: np.ndarray, probability: np.ndarray) -> tuple[Figure, dict]:
    """The ROC curve and its area."""
    fpr, tpr, _ = roc_curve(truth, probability)
    figure, axes = _figure()
    RocCurveDisplay.from_predictions(truth, probability, ax=axes, name="model")
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey")
    axes.set_title("Held-out ROC curve")
    fpr_points, tpr_points = _thin(fpr, tpr)
    auc = float(roc_auc_score(truth, probability))
    return figure, {"roc_auc": auc, "fpr": fpr_points, "tpr": tpr_points}


def precision_recall(
    truth: np.ndarray, probability: np.ndarray, threshold: float
) -> tuple[Figure, dict]:
    """The precision-recall curve, with the point the tuned threshold picks marked."""
    precision, recall, cuts = precision_recall_curve(truth, probability)
    figure, axes = _figure()
    PrecisionRecallDisplay.from_predictions(truth, probability, ax=axes, name="model")
    at = label(probability, threshold)
    tp = int(((at == 1) & (truth == 1)).sum())
    point_precision = tp / max(1, int(at.sum()))
    point_recall = tp / max(1, int(truth.sum()))
    axes.plot([point_recall], [point_precision], "o", color="crimson", label="tuned threshold")
    axes.legend(loc="lower left")
    axes.set_title("Held-out precision-recall curve")
    precision_points, recall_points, cut_points = _thin(precision[:-1], recall[:-1], cuts)
    return figure, {
        "average_precision": float(average_precision_score(truth, probability)),
        "threshold": threshold,
        "precision_at_threshold": point_precision,
        "recall_at_threshold": point_recall,
        "precision": precision_points,
        "recall": recall_points,
        "thresholds": cut_points,
    }


def importance(
    model: Any, features: pd.DataFrame, truth: np.ndarray, seed: int
) -> tuple[Figure, dict]:
    """Permutation importance: how much held-out ROC AUC drops when one column is shuffled."""
    result = permutation_importance(
        model,
        features,
        truth,
        scoring="roc_auc",
        n_repeats=PERMUTATION_REPEATS,
        random_state=seed,
    )
    order = np.argsort(result.importances_mean)
    names = [str(features.columns[i]) for i in order]
    figure = Figure(figsize=(7, max(3.0, 0.3 * len(names) + 1)), layout="constrained")
    axes = figure.add_subplot()
    axes.barh(names, result.importances_mean[order], xerr=result.importances_std[order])
    axes.set_xlabel("drop in ROC AUC when the column is shuffled")
    axes.set_title("Permutation importance (held-out split)")
    ranked = [
        {
            "feature": str(features.columns[i]),
            "mean": float(result.importances_mean[i]),
            "std": float(result.importances_std[i]),
        }
        for i in order[::-1]
    ]
    return figure, {"scoring": "roc_auc", "repeats": PERMUTATION_REPEATS, "features": ranked}


def data_report(report: DataReport) -> Figure:
    """The data report as a table: each column used, its kind and its missing values."""
    rows = [
        [name, kind, str(report.missing_values.get(name, 0))]
        for name, kind in report.columns.items()
    ]
    rows += [[name, f"dropped: {why}", ""] for name, why in report.dropped_columns.items()]
    figure = Figure(figsize=(7, 0.28 * len(rows) + 1.4), layout="constrained")
    axes = figure.add_subplot()
    axes.axis("off")
    axes.set_title(
        f"{report.rows_kept} of {report.rows_read} rows kept "
        f"({report.rows_without_label} without a label); churn rate {report.positive_rate:.1%}",
        fontsize=9,
    )
    table = axes.table(
        cellText=rows, colLabels=["column", "kind", "missing"], loc="upper center", cellLoc="left"
    )
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    return figure


def build(
    model: Any,
    features: pd.DataFrame,
    truth: np.ndarray,
    threshold: float,
    report: DataReport,
    seed: int,
) -> Evidence:
    """Every piece of evidence for one trained model, computed on its held-out split."""
    probability = np.asarray(model.predict_proba(features))[:, 1]
    evidence = Evidence()
    pieces = {
        "confusion_matrix": confusion(truth, label(probability, threshold), threshold),
        "roc_curve": roc(truth, probability),
        "precision_recall_curve": precision_recall(truth, probability, threshold),
        "permutation_importance": importance(model, features, truth, seed),
    }
    for name, (figure, document) in pieces.items():
        evidence.figures[f"{name}.png"] = figure
        evidence.documents[f"{name}.json"] = document
    evidence.figures["data_report.png"] = data_report(report)
    evidence.documents["data_report.json"] = report.to_dict()
    return evidence
