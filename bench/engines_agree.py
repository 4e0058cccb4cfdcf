"""Do the three engines give the same monitor report on a large store? (issue 23)

Reads a store made by `bench.monitor_scale generate` (default: 1,000,000 rows) through the
pandas, DuckDB and Spark engines with one fixed "now", builds each version's report with
monitor's own code, and prints the largest differences against the pandas path: counts and
realised precision/recall/F1/Brier (exact), drift verdicts (identical) and statistics, CBPE's
precision/recall/F1, and ROC AUC with the bound the engines state. The reference is the store's
first day of inputs and scores (a stand-in for the version's training reference, so no tracking
server is needed) and a fixed piecewise-linear calibration map.

    .venv/bin/python -m bench.engines_agree [--store ../scale-data/store-1M] [--engines ...]
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from churnops.config import Settings
from churnops.monitoring import monitor, store
from churnops.monitoring import summary as summaries
from churnops.monitoring.estimate import Calibration
from churnops.registry.runs import Reference


def _reference(settings: Settings) -> tuple[Reference, list[str]]:
    target = store.settings_store(settings)
    first = store.prediction_files(target)[0]
    rows = pd.read_parquet(first).head(1_000)
    inputs = [c for c in rows.columns if c.startswith(store.INPUT_PREFIX)]
    columns = [c[len(store.INPUT_PREFIX) :] for c in inputs]
    reference_rows = rows[inputs].set_axis(columns, axis=1)
    rng = np.random.default_rng(0)
    scores = pd.DataFrame(
        {
            "probability": rows["probability"].to_numpy(),
            "label": rows["label"].to_numpy(dtype=int),
            "outcome": (rng.uniform(size=len(rows)) < rows["probability"]).astype(int),
        }
    )
    calibration = Calibration(True, x=[0.0, 0.2, 0.5, 1.0], y=[0.0, 0.15, 0.55, 1.0])
    kinds = {
        c: "numeric" if pd.api.types.is_numeric_dtype(reference_rows[c]) else "categorical"
        for c in columns
    }
    return Reference(reference_rows, scores, calibration.to_dict(), kinds), columns


def _report(settings: Settings, engine: str, now: datetime) -> tuple[dict, float]:
    reference, columns = _reference(settings)
    known = monitor._Version(None, reference)
    scope = summaries.Scope("churn_model", "production", None, now, now, timedelta(days=30))
    started = time.perf_counter()
    with summaries.open_source(settings, engine, scope) as source:
        versions = source.versions()
        found = source.summaries(
            timedelta(days=1),
            {v: known.calibration for v in versions},
            {v: columns for v in versions},
        )
    matured = pd.Timestamp(now) - pd.Timedelta(days=30)
    options = monitor.Options(window=timedelta(days=1))
    reports = {
        v: monitor._version_report(found[v], known, options, matured, 0).to_dict() for v in found
    }
    return reports, time.perf_counter() - started


def _flat(document: object, prefix: str = "") -> dict[str, object]:
    if isinstance(document, dict):
        out: dict[str, object] = {}
        for key, value in document.items():
            out |= _flat(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(document, list):
        out = {}
        for i, value in enumerate(document):
            out |= _flat(value, f"{prefix}[{i}]")
        return out
    return {prefix: document}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path("../scale-data/store-1M"))
    parser.add_argument("--engines", nargs="+", default=["duckdb", "spark"])
    args = parser.parse_args()
    settings = Settings(prediction_store=str(args.store.resolve()))
    now = datetime(2026, 12, 6, tzinfo=UTC)
    expected, seconds = _report(settings, "pandas", now)
    print(f"pandas: {seconds:.1f} s")
    for engine in args.engines:
        found, seconds = _report(settings, engine, now)
        worst: dict[str, float] = {}
        mismatched = []
        for version, document in expected.items():
            left, right = _flat(document), _flat(found[version])
            for key, value in left.items():
                other = right.get(key)
                if "roc_auc" in key or key.startswith("roc_auc_within"):
                    continue
                if isinstance(value, float) and isinstance(other, float):
                    group = key.split(".")[0] + "." + key.rsplit(".", 1)[-1]
                    worst[group] = max(worst.get(group, 0.0), abs(value - other))
                elif value != other:
                    mismatched.append((key, value, other))
            for side in ("realised", "estimated"):
                bound = found[version]["roc_auc_within"].get(side)
                exact = document[side]["roc_auc"]
                got = found[version][side]["roc_auc"]
                exact = exact["value"] if isinstance(exact, dict) else exact
                got = got["value"] if isinstance(got, dict) else got
                print(f"  v{version} {side} ROC AUC: {exact:.6f} vs {got:.6f} (bound {bound})")
        top = sorted(worst.items(), key=lambda kv: -kv[1])[:8]
        print(f"{engine}: {seconds:.1f} s; mismatches outside floats: {len(mismatched)}")
        for key, value, other in mismatched[:10]:
            print(f"  {key}: {value!r} vs {other!r}")
        print("  largest float differences:", json.dumps({k: f"{v:.2e}" for k, v in top}))


if __name__ == "__main__":
    main()
