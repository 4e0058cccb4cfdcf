"""Runs inside the bench-only peers venv (.venv-peers: Evidently, NannyML), never the runtime one.

Reads the Parquet files bench/monitor.py wrote to FOLDER, runs Evidently's DataDriftPreset on
reference vs current rows and NannyML's binary CBPE per day, and prints one JSON line: their
times, Evidently's per-column verdicts and NannyML's per-day estimated F1.

    .venv-peers/bin/python bench/peers_monitor.py FOLDER [evidently]

With ``evidently`` only Evidently runs (bench/monitor_scale.py, which has no NannyML files).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pandas as pd


def evidently_drift(folder: Path) -> dict:
    from evidently import Report
    from evidently.presets import DataDriftPreset

    reference = pd.read_parquet(folder / "reference.parquet")
    current = pd.read_parquet(folder / "current.parquet")
    started = time.perf_counter()
    snapshot = Report([DataDriftPreset()]).run(current_data=current, reference_data=reference)
    document = snapshot.dict()
    seconds = time.perf_counter() - started
    verdicts, methods = {}, {}
    for metric in document["metrics"]:
        config = metric["config"]
        if not config["type"].endswith("ValueDrift"):
            continue
        method = config["method"]
        value = float(metric["value"])
        # NB: p-value methods drift below the threshold, distances at or above it.
        drifted = (
            value < config["threshold"] if "p_value" in method else value >= config["threshold"]
        )
        verdicts[config["column"]] = bool(drifted)
        methods[config["column"]] = {"method": method, "value": value}
    return {"seconds": seconds, "verdicts": verdicts, "methods": methods}


def nannyml_cbpe(folder: Path) -> dict:
    import nannyml as nml

    reference = pd.read_parquet(folder / "reference_scores.parquet")
    analysis = pd.read_parquet(folder / "analysis.parquet")
    # NB: NannyML wants timestamps in the reference too; they only order its chunks there.
    reference["time"] = pd.date_range("2000-01-01", periods=len(reference), freq="min", tz="UTC")
    analysis["time"] = pd.to_datetime(analysis["time"], utc=True)
    started = time.perf_counter()
    estimator = nml.CBPE(
        y_pred_proba="probability",
        y_pred="label",
        y_true="outcome",
        timestamp_column_name="time",
        metrics=["f1"],
        chunk_period="D",
        problem_type="classification_binary",
    )
    estimator.fit(reference)
    result = estimator.estimate(analysis).filter(period="analysis").to_df()
    seconds = time.perf_counter() - started
    chunks = [
        {"start": str(start), "estimated_f1": float(value)}
        for start, value in zip(
            result[("chunk", "start_date")], result[("f1", "value")], strict=True
        )
    ]
    return {"seconds": seconds, "chunks": chunks}


def main() -> None:
    folder = Path(sys.argv[1])
    found = {"evidently": evidently_drift(folder)}
    if sys.argv[2:] != ["evidently"]:
        found["nannyml"] = nannyml_cbpe(folder)
    print(json.dumps(found))


if __name__ == "__main__":
    main()
