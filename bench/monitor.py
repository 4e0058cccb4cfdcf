"""Monitoring benchmark: `churnops monitor` over 1,000,000 stored predictions with outcomes, its
drift tests against Evidently's data-drift preset and its CBPE estimate against NannyML's, on
the same rows, in one run.

Starts a tracking server, trains and promotes the built-in model, then writes 20 days x 50,000
simulated customers (covariate shift from day 10, no concept drift) scored by that model into
the prediction store, with every outcome. Measures:

- `churnops monitor --no-log --json` as a separate process: wall time and peak RSS;
- drift of the same current rows against the same reference (the version's training snapshot):
  churnops's drift.table_drift vs Evidently's DataDriftPreset, time and per-column verdicts;
- CBPE: per-day estimated F1, churnops vs NannyML's CBPE, and vs the realised F1.

Evidently and NannyML run from their own venv (bench/requirements-peers.txt, `make bench-peers`),
never from the runtime lock; bench/peers_monitor.py is what runs there.

    .venv/bin/python bench/monitor.py [--days 20] [--rows-per-day 50000]
                                      [--out bench/results/monitor.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from churnops import data, lifecycle, tracking_server
from churnops.config import TARGET, Settings, apply_mlflow_client_limits
from churnops.monitoring import drift, estimate, labels, realised, store
from churnops.monitoring.estimate import Calibration
from churnops.registry import loading, versions

PEERS_PYTHON = Path(".venv-peers/bin/python")
SHIFT_DAY = 10


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def traffic(
    settings: Settings, version: int, days: int, rows_per_day: int, end: datetime
) -> pd.DataFrame:
    """Score simulated days with the version and write them to the store; the rows back."""
    loaded = loading.load_version(settings, version, threads=os.cpu_count() or 1)
    target = store.settings_store(settings)
    frames = []
    start = end - timedelta(days=days)
    for day in range(days):
        frame = data.generate(
            rows_per_day,
            seed=1000 + day,
            first_id=day * rows_per_day + 1,
            covariate_shift=0.6 if day >= SHIFT_DAY else 0.0,
        )
        features = frame.drop(columns=[TARGET, "customer_id"])
        scored = loaded.engine.predict_frame(features)
        seconds = (start + timedelta(days=day)).timestamp() + np.random.default_rng(day).uniform(
            0, 86_399, rows_per_day
        )
        ids = [f"d{day}-{i}" for i in range(rows_per_day)]
        table = pa.table(
            {
                "prediction_id": ids,
                "time": pa.array((seconds * 1e6).astype("int64")).cast(store.TIMESTAMP),
                "served_at": pa.array((seconds * 1e6).astype("int64")).cast(store.TIMESTAMP),
                "source": ["api"] * rows_per_day,
                "model": [settings.model_name] * rows_per_day,
                "version": pa.array([version] * rows_per_day, pa.int64()),
                "alias": [settings.alias] * rows_per_day,
                "threshold": [loaded.engine.threshold] * rows_per_day,
                "probability": scored.probability,
                "label": pa.array(scored.label.astype("int8")),
                "customer_id": frame["customer_id"],
                "request_id": ids,
                **{
                    f"{store.INPUT_PREFIX}{c}": pa.array(
                        features[c].astype(float) if features[c].dtype.kind in "iu" else features[c]
                    )
                    for c in features.columns
                },
            }
        )
        store.write_predictions(target, table)
        frames.append(
            pd.DataFrame(
                {
                    "prediction_id": ids,
                    "time": pd.to_datetime(seconds, unit="s", utc=True),
                    "day": day,
                    "probability": scored.probability,
                    "label": scored.label,
                    "outcome": frame[TARGET].to_numpy(),
                    **{c: features[c].to_numpy() for c in features.columns},
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


# NB: the child reports its own peak RSS from /proc (VmHWM, kept per address space): getrusage's
# maxrss carries over exec from the fork of this process, which holds the million rows itself.
MEASURED = """
import runpy, sys
sys.argv = ["churnops", *sys.argv[1:]]
try:
    runpy.run_module("churnops", run_name="__main__")
finally:
    status = open("/proc/self/status").read()
    print("peak_rss_kib=" + status.split("VmHWM:")[1].split()[0], file=sys.stderr)
"""


def peak_rss_mib(arguments: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run `churnops ARGUMENTS`; (wall seconds, its peak RSS in MiB, its stdout)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", MEASURED, *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 3):
        raise RuntimeError(f"churnops {arguments} failed: {done.stderr[-2000:]}")
    peak = int(done.stderr.rpartition("peak_rss_kib=")[2].split()[0])
    return seconds, peak / 1024, done.stdout


def ours(reference: pd.DataFrame, current: pd.DataFrame, columns: list[str]) -> dict:
    started = time.perf_counter()
    results, dataset = drift.table_drift(reference, current, columns)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "verdicts": {r.column: r.drifted for r in results},
        "statistics": {r.column: r.statistic for r in results},
        "dataset_drift": dataset,
    }


def cbpe_per_day(rows: pd.DataFrame, calibration: Calibration) -> pd.DataFrame:
    out = []
    for day, group in rows.groupby("day"):
        p = group["probability"].to_numpy()
        found = estimate.estimate(calibration.apply(p), group["label"].to_numpy(), p)
        actual = realised.point(group["outcome"].to_numpy(), group["label"].to_numpy(), p)
        out.append({"day": day, "estimated_f1": found["f1"], "realised_f1": actual["f1"]})
    return pd.DataFrame(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=20)
    parser.add_argument("--rows-per-day", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=Path("bench/results/monitor.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="churnops-bench-monitor-"))
    port = free_port()
    settings = Settings(tracking_uri=f"http://127.0.0.1:{port}", data_dir=work)
    apply_mlflow_client_limits(settings)
    env = {**os.environ, **settings.as_environment()}
    server = tracking_server.start(settings, port=port, quiet=True)
    try:
        trained = lifecycle.train(settings, data_file=None, version_label="v1", seed=1, gate_f1=0.6)
        lifecycle.promote(settings, trained.version)
        # NB: days start at midnight UTC, so a day is one calendar day for NannyML's chunks too.
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        end = today - timedelta(days=1)
        rows = traffic(settings, trained.version, args.days, args.rows_per_day, end)
        outcome_file = work / "outcomes.parquet"
        rows[["prediction_id"]].assign(churn=rows["outcome"]).to_parquet(outcome_file)
        labels.add(store.settings_store(settings), settings.model_name, outcome_file, TARGET)
        info = versions.get_version(settings, trained.version)
        reference = loading.load_reference(settings, info)
        assert reference is not None
        calibration = Calibration.from_dict(reference.calibration)

        monitor_seconds, monitor_rss, stdout = peak_rss_mib(["monitor", "--no-log", "--json"], env)
        report = json.loads(stdout)

        columns = list(reference.rows.columns)
        current = rows[columns]
        folder = work / "peers"
        folder.mkdir()
        reference.rows.to_parquet(folder / "reference.parquet")
        current.to_parquet(folder / "current.parquet")
        reference.scores.to_parquet(folder / "reference_scores.parquet")
        rows[["time", "probability", "label"]].to_parquet(folder / "analysis.parquet")
        mine = ours(reference.rows, current, columns)
        peers = None
        if PEERS_PYTHON.exists():
            done = subprocess.run(
                [str(PEERS_PYTHON), "bench/peers_monitor.py", str(folder)],
                capture_output=True,
                text=True,
                timeout=3600,
                env={**os.environ, "NML_DISABLE_USAGE_LOGGING": "1"},
            )
            if done.returncode != 0:
                raise RuntimeError(f"peers failed: {done.stderr[-3000:]}")
            peers = json.loads(done.stdout.strip().splitlines()[-1])
        else:
            print(
                f"{PEERS_PYTHON} not found: run `make bench-peers` to compare with Evidently "
                "and NannyML",
                file=sys.stderr,
            )
        days = cbpe_per_day(rows, calibration)
        results = {
            "date": datetime.now(UTC).isoformat(),
            "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python "
            f"{platform.python_version()}",
            "rows": len(rows),
            "monitor_seconds": monitor_seconds,
            "monitor_peak_rss_mib": monitor_rss,
            "monitor_versions": [
                {k: v[k] for k in ("version", "rows", "labelled")} for v in report["versions"]
            ],
            "drift_ours": mine,
            "cbpe_days": days.to_dict(orient="records"),
            "peers": peers,
        }
        print_table(results)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=str))
    finally:
        server.stop()


def print_table(results: dict) -> None:
    mine, peers = results["drift_ours"], results["peers"]
    print(f"rows: {results['rows']:,}")
    print(
        f"churnops monitor (whole run, separate process): {results['monitor_seconds']:.1f} s, "
        f"peak RSS {results['monitor_peak_rss_mib']:.0f} MiB (target <= 1024)"
    )
    print(f"drift, churnops: {mine['seconds']:.2f} s")
    days = pd.DataFrame(results["cbpe_days"])
    gap = (days["estimated_f1"] - days["realised_f1"]).abs()
    print(f"CBPE vs realised F1 per day: max |diff| {gap.max():.4f} (target <= 0.03)")
    if peers is None:
        return
    evidently = peers["evidently"]
    print(
        f"drift, Evidently DataDriftPreset: {evidently['seconds']:.2f} s; ratio "
        f"{evidently['seconds'] / mine['seconds']:.1f}x (target >= 5)"
    )
    same = {c: (mine["verdicts"][c], evidently["verdicts"].get(c)) for c in mine["verdicts"]}
    agree = sum(a == b for a, b in same.values())
    print(f"per-column verdicts agreeing: {agree} of {len(same)}: {same}")
    nanny = pd.DataFrame(peers["nannyml"]["chunks"])
    if len(nanny) == len(days):
        diff = days["estimated_f1"].to_numpy() - nanny["estimated_f1"].to_numpy()
        print(
            f"CBPE vs NannyML per day: max |diff| {np.abs(diff).max():.4f} (target <= 0.02); "
            f"NannyML {peers['nannyml']['seconds']:.2f} s"
        )
    else:
        print(f"NannyML gave {len(nanny)} chunks for {len(days)} days")


if __name__ == "__main__":
    main()
