"""Runs inside the bench-only peers venv (.venv-peers: NannyML), never the runtime one.

NannyML's realised-performance alert rule on the periods bench/monitor_quality.py simulated:
for each (pair, scenario) a binary-classification ``PerformanceCalculator`` for F1 is fitted on
the version's held-out rows (its reference) and run on the served rows with every outcome, in
daily chunks; NannyML's default thresholds are the reference chunks' mean +/- 3 standard
deviations, and a chunk alerts outside them. The reference is given timestamps that chunk it
into daily chunks of the traffic's size (rows per day), so both sides' chunks hold alike.

Reads FOLDER/reference.parquet (pair, probability, label, outcome), FOLDER/served.parquet (pair,
scenario, time, probability, label, truth) and FOLDER/meta.json ({"rows_per_day": N}); prints
one JSON object: per "pair/scenario" the chunks (day, rows, F1, thresholds, alert).

    .venv-peers/bin/python bench/peers_quality.py FOLDER
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    import nannyml as nml

    warnings.simplefilter("ignore")
    folder = Path(sys.argv[1])
    reference_all = pd.read_parquet(folder / "reference.parquet")
    served_all = pd.read_parquet(folder / "served.parquet")
    rows_per_day = float(json.loads((folder / "meta.json").read_text())["rows_per_day"])
    out: dict[str, list[dict]] = {}
    for pair, reference in reference_all.groupby("pair", sort=False):
        reference = reference.reset_index(drop=True)
        # NB: NannyML's own rule compares chunks with chunks of the reference; its chunks are made
        # the traffic's days (as many as the held-out rows fill, at least two, evenly filled).
        chunks = max(2, round(len(reference) / rows_per_day))
        seconds = np.floor(np.arange(len(reference)) * chunks / len(reference)) * 86_400
        seconds += np.arange(len(reference)) % 1000
        reference["time"] = pd.Timestamp("2000-01-01", tz="UTC") + pd.to_timedelta(seconds, "s")
        calculator = nml.PerformanceCalculator(
            y_pred_proba="probability",
            y_pred="label",
            y_true="outcome",
            timestamp_column_name="time",
            metrics=["f1"],
            chunk_period="D",
            problem_type="classification_binary",
        )
        calculator.fit(reference)
        served = served_all[served_all["pair"] == pair]
        for scenario, rows in served.groupby("scenario", sort=False):
            rows = rows.rename(columns={"truth": "outcome"}).reset_index(drop=True)
            rows["time"] = pd.to_datetime(rows["time"], utc=True)
            result = calculator.calculate(rows).filter(period="analysis").to_df()
            # NB: NannyML's chunk starts come back without a time zone (UTC's wall clock).
            start = rows["time"].min().tz_convert("UTC").tz_localize(None).normalize()
            out[f"{pair}/{scenario}"] = [
                {
                    "day": (pd.Timestamp(s).tz_localize(None) - start).days,
                    "f1": float(value),
                    "lower": float(lower),
                    "upper": float(upper),
                    "alert": bool(alert),
                }
                for s, value, lower, upper, alert in zip(
                    result[("chunk", "start_date")],
                    result[("f1", "value")],
                    result[("f1", "lower_threshold")],
                    result[("f1", "upper_threshold")],
                    result[("f1", "alert")],
                    strict=True,
                )
            ]
    print(json.dumps({"nannyml": nml.__version__, "chunks": out}))


if __name__ == "__main__":
    main()
