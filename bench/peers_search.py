"""Runs inside the bench-only peers venv (.venv-peers: FLAML with LightGBM and XGBoost), never
the runtime one.

Fits FLAML's AutoML on TRAIN for BUDGET seconds (its default search: LightGBM, XGBoost, random
forest, extra trees, L1 logistic regression; metric ROC AUC), scores TEST at its own 0.5
threshold, and prints one JSON line: F1, ROC AUC, the fit's wall clock, the best learner.

    .venv-peers/bin/python bench/peers_search.py TRAIN TEST TARGET BUDGET THREADS [DROP,COLUMNS]
"""

from __future__ import annotations

import json
import sys
import time

import pandas as pd

POSITIVE = {"1", "true", "yes", "churn", "churned"}


def table(path: str, target: str, drop: list[str]) -> tuple[pd.DataFrame, pd.Series]:
    frame = pd.read_csv(path)
    y = frame[target].astype(str).str.strip().str.lower().isin(POSITIVE).astype(int)
    return frame.drop(columns=[target, *drop]), y


def main() -> None:
    from flaml import AutoML
    from sklearn.metrics import f1_score, roc_auc_score

    train, test, target, budget, threads = sys.argv[1:6]
    drop = [c for c in (sys.argv[6] if len(sys.argv) > 6 else "").split(",") if c]
    X_train, y_train = table(train, target, drop)
    X_test, y_test = table(test, target, drop)
    automl = AutoML()
    started = time.perf_counter()
    automl.fit(
        X_train,
        y_train,
        task="classification",
        time_budget=float(budget),
        n_jobs=int(threads),
        seed=42,
        verbose=0,
    )
    seconds = time.perf_counter() - started
    probability = automl.predict_proba(X_test)[:, 1]
    print(
        json.dumps(
            {
                "f1": float(f1_score(y_test, automl.predict(X_test))),
                "roc_auc": float(roc_auc_score(y_test, probability)),
                "seconds": seconds,
                "best_learner": automl.best_estimator,
                "metric": "roc_auc",
            }
        )
    )


if __name__ == "__main__":
    main()
