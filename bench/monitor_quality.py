"""Monitor quality: how often churnops's alerts fire on healthy traffic (false alarms), and how
soon they fire when what makes customers churn changes (concept drift) or when the customers
themselves change (covariate shift), over (training seed, traffic seed) pairs on the built-in
data and on the BigML telecom table.

No servers: each model is trained in process, its traffic scored in process with the outcome
delays `churnops simulate` uses (a churner's a uniform 1..horizon days after, a stayer's at the
horizon), and judged by ``monitor.assess`` (the pure core of `churnops monitor`) at the end of
every simulated day with the outcomes observed by then, the way a daily cron job would run it.

    .venv/bin/python bench/monitor_quality.py [--pairs 20] [--data-dir ../shared/data]
                                              [--out bench/results/monitor_quality.json]
                                              [--peers .venv-peers/bin/python]

Healthy: a version-period alerts when any alert fires (a) at its end with every outcome in (the
issue's check), or (b) on any day (a daily monitor). Detection: the first day any alert fires,
with the labelled rows by then; a pair counts when its true F1 (the model's F1 on 20,000 fresh
rows, or on the traffic rows themselves for the telecom table) falls by 0.05 or more.

With --peers (the bench-only venv of `make bench-peers`), NannyML's realised-performance rule
is applied to the same periods by bench/peers_quality.py in a subprocess: F1 per daily chunk
against the held-out rows' chunks' mean +/- 3 standard deviations. A chunk is judged once every
outcome of it is in (the day its last outcome arrives); its alert counts within the period when
that day is in the period, and at the end in any case.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sklearn
from sklearn.metrics import f1_score

from churnops import data, lifecycle, registry, training
from churnops.monitoring import monitor, simulate

HORIZON_DAYS = 7.0
START = pd.Timestamp("2026-01-01", tz="UTC")
QUALITY = {"realised_f1_below_gate", "estimated_f1_below_band"}
DRIFT = {"prediction_drift", "dataset_drift"}


@dataclass
class Model:
    """A trained version as monitoring sees it."""

    result: training.TrainingResult
    reference: registry.Reference
    info: registry.VersionInfo


class Peers:
    """The rows NannyML's rule is run on: each pair's held-out scores and served periods."""

    def __init__(self, python: Path | None) -> None:
        self.python = python
        self.references: list[pd.DataFrame] = []
        self.served: list[pd.DataFrame] = []

    def add(self, seed: int, model: Model, scenario: str, rows: pd.DataFrame) -> None:
        if self.python is None:
            return
        if scenario == "healthy":
            self.references.append(model.reference.scores.assign(pair=seed))
        columns = ["time", "probability", "label", "truth"]
        self.served.append(rows[columns].assign(pair=seed, scenario=scenario))

    def judge(self, records: list[dict[str, Any]], frames: dict[tuple[int, str], Any]) -> None:
        """Run NannyML on what was added and put its verdicts into the records."""
        if self.python is None or not self.served:
            return
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            pd.concat(self.references, ignore_index=True).to_parquet(folder / "reference.parquet")
            served = pd.concat(self.served, ignore_index=True)
            served.to_parquet(folder / "served.parquet")
            periods = served.groupby(["pair", "scenario"])["time"]
            rows_per_day = float(
                (periods.size() / periods.agg(lambda t: t.dt.floor("D").nunique())).median()
            )
            (folder / "meta.json").write_text(json.dumps({"rows_per_day": rows_per_day}))
            script = Path(__file__).with_name("peers_quality.py")
            done = subprocess.run(
                [str(self.python), str(script), tmp], capture_output=True, text=True
            )
        if done.returncode:
            sys.exit(f"bench/peers_quality.py failed:\n{done.stderr}")
        found = json.loads(done.stdout)
        for record in records:
            for scenario in ("healthy", "concept", "shift"):
                rows, days = frames[(record["training_seed"], scenario)]
                chunks = found["chunks"][f"{record['training_seed']}/{scenario}"]
                record[scenario]["nannyml"] = nannyml_verdict(chunks, rows, days)
        self.references.clear()
        self.served.clear()


def nannyml_verdict(chunks: list[dict[str, Any]], rows: pd.DataFrame, days: int) -> dict[str, Any]:
    """NannyML's alerts as a daily monitor would see them: a chunk on the day its last outcome
    is in, with the labelled rows by then."""
    chunk_day = (rows["time"] - START) // pd.Timedelta(days=1)
    ready = np.ceil((rows["observed"].groupby(chunk_day).max() - START) / pd.Timedelta(days=1))
    alerts = sorted(
        (int(ready[c["day"]]), c["day"], c["f1"] < c["lower"]) for c in chunks if c["alert"]
    )
    first = None
    if alerts and alerts[0][0] <= days:
        day = alerts[0][0]
        first = {
            "day": day,
            "labelled": int((rows["observed"] <= START + pd.Timedelta(days=day)).sum()),
        }
    return {
        "first": first,
        "end": bool(alerts),
        "end_low": any(low for _, _, low in alerts),
        "chunks": chunks,
    }


def fit(dataset: data.Dataset, seed: int) -> Model:
    result = training.train(dataset, seed=seed)
    info = registry.VersionInfo(1, datetime.now(UTC), "bench", True, result.metrics, (), {})
    return Model(result, lifecycle.monitoring_reference(result, seed), info)


def daily(model: Model, rows: pd.DataFrame, days: int) -> dict[str, Any]:
    """Run the monitor after each simulated day; the first alert and what it rested on, and the
    verdict at the end with every outcome in."""
    first: dict[str, dict[str, Any] | None] = {"any": None, "quality": None, "drift": None}
    for day in range(1, days + 1):
        cut = START + pd.Timedelta(days=day)
        seen = rows[rows["time"] < cut].copy()
        seen["outcome"] = seen["truth"].where(seen["observed"] <= cut)
        report, alerts = monitor.assess(
            1, seen, model.info, model.reference, cut - pd.Timedelta(days=HORIZON_DAYS)
        )
        kinds = {a.kind for a in alerts}
        for family, members in (("any", QUALITY | DRIFT), ("quality", QUALITY), ("drift", DRIFT)):
            if kinds & members and first[family] is None:
                first[family] = {
                    "day": day,
                    "labelled": report.labelled,
                    "kinds": sorted(kinds),
                }
        if all(first.values()):
            break
    complete = rows.copy()
    complete["outcome"] = complete["truth"]
    end = START + pd.Timedelta(days=days + HORIZON_DAYS + 1)
    report, alerts = monitor.assess(1, complete, model.info, model.reference, end)
    return {
        "first": first,
        "end_kinds": sorted({a.kind for a in alerts}),
        "realised_f1": report.realised["f1"].value,
        "gate_f1": report.gate_f1,
        "gate_f1_sd": report.gate_f1_sd,
        "drifted": report.drift.drifted,
    }


def true_f1(model: Model, frame: pd.DataFrame) -> float:
    features = frame.drop(columns=[c for c in ("customer_id", "churn") if c in frame])
    predicted = model.result.model.predict(features)
    return float(f1_score(frame["churn"], predicted))


def builtin(
    pairs: int, concept: float, shift: float, rows: int, peers: Peers
) -> list[dict[str, Any]]:
    out = []
    frames: dict[tuple[int, str], Any] = {}
    for seed in range(1, pairs + 1):
        table = data.generate(rows, seed=seed)
        model = fit(data.from_frame(table, source=data.BUILTIN_SOURCE), seed)
        traffic_seed = 1000 + seed
        base = true_f1(model, data.generate(20_000, seed=90_000 + seed))
        record: dict[str, Any] = {"training_seed": seed, "traffic_seed": traffic_seed}
        scenarios: tuple[tuple[str, int, dict[str, Any], float], ...] = (
            ("healthy", 15, {}, base),
            (
                "concept",
                30,
                {"concept_day": 0, "strength": concept},
                true_f1(model, data.generate(20_000, seed=90_000 + seed, concept_drift=concept)),
            ),
            (
                "shift",
                30,
                {"shift_day": 0, "strength": shift},
                true_f1(model, data.generate(20_000, seed=90_000 + seed, covariate_shift=shift)),
            ),
        )
        for name, days, options, truth in scenarios:
            served = simulate.offline(
                model.result.model,
                model.result.threshold,
                days=days,
                rows_per_day=400,
                seed=traffic_seed,
                end=START + pd.Timedelta(days=days),
                now=START + pd.Timedelta(days=10_000),
                horizon_days=HORIZON_DAYS,
                **options,
            )
            record[name] = daily(model, served, days) | {
                "true_f1": truth,
                "true_drop": base - truth,
            }
            peers.add(seed, model, name, served)
            frames[(seed, name)] = (served[["time", "observed"]], days)
        out.append(record)
        print(f"builtin pair {seed}: {summary_line(record)}", file=sys.stderr)
    peers.judge(out, frames)
    return out


def telecom(pairs: int, folder: Path, flip: float, peers: Peers) -> list[dict[str, Any]]:
    """Per pair: the 80% file split by the training seed, two thirds for training; the rest of
    it and the whole 20% file are the traffic, in an order drawn from the traffic seed."""
    train_file = pd.read_csv(folder / "telecom-churn-bigml-80.csv")
    held_out = pd.read_csv(folder / "telecom-churn-bigml-20.csv")
    out = []
    frames: dict[tuple[int, str], Any] = {}
    for seed in range(1, pairs + 1):
        order = np.random.default_rng(seed).permutation(len(train_file))
        cut = len(order) * 2 // 3
        training_rows = train_file.iloc[order[:cut]]
        dataset = data.from_frame(training_rows, target="Churn", source="telecom")
        model = fit(dataset, seed)
        traffic = pd.concat([train_file.iloc[order[cut:]], held_out], ignore_index=True)
        rng = np.random.default_rng(1000 + seed)
        traffic = traffic.iloc[rng.permutation(len(traffic))].reset_index(drop=True)
        truth = data.normalise_target(traffic["Churn"], "Churn").to_numpy(dtype=float)
        features = traffic[list(dataset.features.columns)]
        days = 8
        times = pd.Series(
            START + pd.to_timedelta(np.sort(rng.uniform(0, days * 86_400, len(traffic))), "s")
        )
        base = float(f1_score(truth, model.result.model.predict(features)))
        record: dict[str, Any] = {"training_seed": seed, "traffic_seed": 1000 + seed}
        # NB: concept drift: a share of the outcomes flips (what made a customer churn no
        # longer does); covariate shift: the traffic drawn again, weighted towards customers
        # with many service calls, their outcomes unchanged.
        flipped = truth.copy()
        chosen = rng.random(len(truth)) < flip
        flipped[chosen] = 1 - flipped[chosen]
        calls = traffic["Customer service calls"].to_numpy(dtype=float)
        weights = np.exp(0.6 * calls)
        picked = rng.choice(len(traffic), len(traffic), p=weights / weights.sum())
        for name, rows_truth, rows_features in (
            ("healthy", truth, features),
            ("concept", flipped, features),
            ("shift", truth[picked], features.iloc[picked].reset_index(drop=True)),
        ):
            rows = simulate.served(
                model.result.model,
                model.result.threshold,
                rows_features,
                rows_truth,
                times,
                rng,
                now=START + pd.Timedelta(days=10_000),
                horizon_days=HORIZON_DAYS,
            )
            now_f1 = float(f1_score(rows_truth, model.result.model.predict(rows_features)))
            record[name] = daily(model, rows, days) | {
                "true_f1": now_f1,
                "true_drop": base - now_f1,
            }
            peers.add(seed, model, name, rows)
            frames[(seed, name)] = (rows[["time", "observed"]], days)
        out.append(record)
        print(f"telecom pair {seed}: {summary_line(record)}", file=sys.stderr)
    peers.judge(out, frames)
    return out


def summary_line(record: dict[str, Any]) -> str:
    parts = []
    for name in ("healthy", "concept", "shift"):
        found = record[name]
        first = found["first"]["any"]
        parts.append(
            f"{name} drop {found['true_drop']:+.3f} "
            + (f"alert day {first['day']} {first['kinds']}" if first else "no alert")
            + f" end {found['end_kinds']}"
        )
    return "; ".join(parts)


def figures(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The benchmark's figures for one table."""
    n = len(records)
    healthy = [r["healthy"] for r in records]
    out: dict[str, Any] = {
        "pairs": n,
        "false_alarm_share_at_end": sum(bool(h["end_kinds"]) for h in healthy) / n,
        "false_alarm_share_any_day": sum(h["first"]["any"] is not None for h in healthy) / n,
        "false_alarm_kinds_at_end": sorted({k for h in healthy for k in h["end_kinds"]}),
        "false_alarm_kinds_any_day": sorted(
            {k for h in healthy if h["first"]["any"] for k in h["first"]["any"]["kinds"]}
        ),
    }
    for name, right in (("concept", "quality"), ("shift", "drift")):
        found = [r[name] for r in records]
        eligible = [f for f in found if f["true_drop"] >= 0.05] if name == "concept" else found
        caught = [f["first"][right] for f in eligible if f["first"][right] is not None]
        out[name] = {
            "pairs": len(eligible),
            "true_drop_median": statistics.median(f["true_drop"] for f in found),
            "true_drop_min": min(f["true_drop"] for f in found),
            "detected_by": right,
            "detection_share": len(caught) / len(eligible) if eligible else None,
            "detection_share_at_end": sum(
                bool((QUALITY if right == "quality" else DRIFT) & set(f["end_kinds"]))
                for f in eligible
            )
            / len(eligible)
            if eligible
            else None,
            "median_labelled_rows": statistics.median(c["labelled"] for c in caught)
            if caught
            else None,
            "median_days": statistics.median(c["day"] for c in caught) if caught else None,
            "quality_alert_share_any_day": sum(f["first"]["quality"] is not None for f in found)
            / n,
            "drift_alert_share_any_day": sum(f["first"]["drift"] is not None for f in found) / n,
        }
    if "nannyml" in records[0]["healthy"]:
        out["nannyml"] = nannyml_figures(records)
    return out


def nannyml_figures(records: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(records)
    healthy = [r["healthy"]["nannyml"] for r in records]
    concept = [r["concept"] for r in records if r["concept"]["true_drop"] >= 0.05]
    caught = [c["nannyml"]["first"] for c in concept if c["nannyml"]["first"] is not None]
    shift = [r["shift"]["nannyml"] for r in records]
    return {
        "false_alarm_share_at_end": sum(h["end"] for h in healthy) / n,
        "false_alarm_share_at_end_below": sum(h["end_low"] for h in healthy) / n,
        "false_alarm_share_any_day": sum(h["first"] is not None for h in healthy) / n,
        "concept": {
            "pairs": len(concept),
            "detection_share": len(caught) / len(concept) if concept else None,
            "detection_share_at_end": sum(c["nannyml"]["end"] for c in concept) / len(concept)
            if concept
            else None,
            "median_labelled_rows": statistics.median(c["labelled"] for c in caught)
            if caught
            else None,
            "median_days": statistics.median(c["day"] for c in caught) if caught else None,
        },
        "shift_alert_share_any_day": sum(s["first"] is not None for s in shift) / n,
        "shift_alert_share_at_end": sum(s["end"] for s in shift) / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument(
        "--rows", type=int, default=5000, help="built-in training table (a quarter held out)"
    )
    parser.add_argument("--concept", type=float, default=0.15)
    parser.add_argument("--shift", type=float, default=1.0)
    parser.add_argument("--flip", type=float, default=0.1)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--tables", default="builtin,telecom", help="builtin, telecom or both")
    parser.add_argument("--out", type=Path, default=Path("bench/results/monitor_quality.json"))
    parser.add_argument(
        "--peers", type=Path, help="the peers venv's python: also run NannyML's rule"
    )
    args = parser.parse_args()
    peers = Peers(args.peers)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}, scikit-learn {sklearn.__version__}",
        "horizon_days": HORIZON_DAYS,
        "z_alert": monitor.Z_ALERT,
        "arguments": vars(args)
        | {"data_dir": str(args.data_dir), "out": str(args.out), "peers": str(args.peers)},
    }
    tables = args.tables.split(",")
    records = {}
    if "builtin" in tables:
        records["builtin"] = builtin(args.pairs, args.concept, args.shift, args.rows, peers)
    if "telecom" in tables:
        records["telecom"] = telecom(args.pairs, args.data_dir, args.flip, peers)
    for table, found in records.items():
        results[table] = figures(found)
    results["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results | {"records": records}, indent=1, default=str))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
