"""Spark batch-scoring benchmark: `churnops score --engine spark` against
``mlflow.pyfunc.spark_udf`` with the same version, in the same SparkSession (local[2] by default).

Starts a tracking server, trains a version on the built-in data (logreg), writes a Parquet
dataset of --rows customers shaped like the training table (the built-in generator, in files of
1,000,000 rows), and times, interleaved over --repeats, after one small warm-up run of each:

- churnops: ``spark_scoring.score_dataset`` (what `score --engine spark` runs) from reading the
  dataset to OUTPUT/predictions and OUTPUT/rejects renamed into place: the rule book on every
  row, scoring, writing both datasets; "churnops+store" also writes every row (with its inputs)
  into the prediction store, as the command does by default; "churnops" runs with
  CHURNOPS_STORE_PREDICTIONS=false, the like-for-like with the anchor;
- anchor: ``mlflow.pyfunc.spark_udf`` on the version's own files (its pyfunc entry point set to
  predict_proba, so it returns the probabilities; MLflow's registered entry point is predict,
  which gives labels only), writing customer_id and the churn probability as Parquet.

Both run with the same Arrow batch size (--batch-rows). Model loading and Spark's start are
excluded from both. Prints rows/s (best of the repeats), the churnops/anchor ratios (target >= 2)
and the largest |p_churnops - p_anchor| over a 1% sample of customers joined on their id (all of
them below 1,000,000 rows), and writes the figures as JSON.

    .venv/bin/python bench/spark_score.py [--rows 20000000] [--repeats 1] [--batch-rows 100000]
        [--master local[2]] [--out bench/results/spark_score.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import socket
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from churnops import data, lifecycle, spark_scoring, tracking_server
from churnops.config import Settings, apply_mlflow_client_limits
from churnops.registry import loading
from churnops.spark import session

FILE_ROWS = 1_000_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_dataset(folder: Path, rows: int) -> None:
    """``rows`` customers as Parquet files of FILE_ROWS rows (the churn column dropped)."""
    folder.mkdir(parents=True)
    for n, first in enumerate(range(0, rows, FILE_ROWS)):
        size = min(FILE_ROWS, rows - first)
        frame = data.generate(rows=size, seed=100 + n, first_id=first + 1)
        frame.drop(columns=[data.TARGET]).to_parquet(folder / f"part-{n:05d}.parquet", index=False)


def proba_model(settings: Settings, version: int, folder: Path) -> str:
    """The version's files, with MLflow's pyfunc entry point set to predict_proba."""
    loading.load_version(
        settings, version, keep=lambda _model, _info, local: shutil.copytree(local, folder)
    )
    mlmodel = folder / "MLmodel"
    spec = yaml.safe_load(mlmodel.read_text())
    spec["flavors"]["python_function"]["predict_fn"] = "predict_proba"
    mlmodel.write_text(yaml.safe_dump(spec))
    return str(folder)


def anchor(spark: Any, model: str, dataset: Path, out: Path, features: list[str]) -> float:
    """Seconds for spark_udf to score ``dataset`` into ``out`` (customer_id, probability)."""
    import mlflow.pyfunc
    from pyspark.sql import functions as F

    udf = mlflow.pyfunc.spark_udf(spark, model, result_type="array<double>", env_manager="local")
    started = time.perf_counter()
    frame = spark.read.parquet(str(dataset))
    frame.select(
        "customer_id", udf(F.struct(*features)).getItem(1).alias("probability")
    ).write.parquet(str(out))
    return time.perf_counter() - started


def largest_difference(spark: Any, ours: Path, theirs: Path, rows: int) -> float:
    """max |p_churnops - p_anchor| over customers joined on their id (a 1% sample when big)."""
    from pyspark.sql import functions as F

    def side(path: Path, name: str) -> Any:
        frame = spark.read.parquet(str(path)).select(
            "customer_id", F.col("probability").alias(name)
        )
        if rows >= 1_000_000:
            frame = frame.where(F.crc32("customer_id") % 100 == 0)
        return frame

    joined = side(ours, "ours").join(side(theirs, "theirs"), "customer_id")
    found = joined.agg(F.max(F.abs(F.col("ours") - F.col("theirs"))), F.count("*")).first()
    assert found is not None and found[1] > 0, "no customers joined"
    return float(found[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--batch-rows", type=int, default=100_000)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--out", type=Path, default=Path("bench/results/spark_score.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="churnops-bench-spark-") as tmp:
        work = Path(tmp)
        port = free_port()
        settings = Settings(
            tracking_uri=f"http://127.0.0.1:{port}", data_dir=work, spark_master=args.master
        )
        apply_mlflow_client_limits(settings)
        server = tracking_server.start(settings, port=port, quiet=True)
        try:
            trained = lifecycle.train(
                settings, data_file=None, version_label="v1", seed=42, gate_f1=0.6, kind="logreg"
            )
            lifecycle.promote(settings, trained.version)
            dataset, small = work / "customers", work / "warm-up"
            started = time.perf_counter()
            write_dataset(dataset, args.rows)
            write_dataset(small, 10_000)
            print(f"wrote {args.rows:,} rows in {time.perf_counter() - started:.0f} s")
            spark = session(settings)
            spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(args.batch_rows))
            model = proba_model(settings, trained.version, work / "model")
            features = list(data.NUMERIC_FEATURES + data.CATEGORICAL_FEATURES)
            without_store = settings.model_copy(update={"store_predictions": False})
            variants = {"churnops": without_store, "churnops+store": settings}
            runs: dict[str, list[float]] = {"anchor": [], **{name: [] for name in variants}}
            inference = ""
            for n in range(args.repeats + 1):
                source = small if n == 0 else dataset
                for name, chosen in variants.items():
                    out = work / f"{name}-{n}"
                    report = spark_scoring.score_dataset(
                        chosen, str(source), str(out), batch_rows=args.batch_rows
                    )
                    assert report.rows_rejected == 0, report
                    inference = report.inference
                    if n:
                        runs[name].append(report.seconds)
                seconds = anchor(spark, model, source, work / f"anchor-{n}", features)
                if n:
                    runs["anchor"].append(seconds)
                    print({name: round(times[-1], 1) for name, times in runs.items()}, flush=True)
                    difference = largest_difference(
                        spark,
                        work / f"churnops-{n}" / "predictions",
                        work / f"anchor-{n}",
                        args.rows,
                    )
                    for name in (*variants, "anchor"):
                        path = work / f"{name}-{n}"
                        shutil.rmtree(path, ignore_errors=True)
        finally:
            server.stop()
    rates = {name: args.rows / min(times) for name, times in runs.items()}
    print(
        f"{args.rows:,} rows on {args.master}, Arrow batches of {args.batch_rows:,} ({inference})"
    )
    for name, rate in rates.items():
        ratio = rate / rates["anchor"]
        print(f"  {name:15} {rate:>12,.0f} rows/s  {ratio:.2f}x the anchor")
    print(f"  max |p_churnops - p_spark_udf| = {difference:.2e}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(),
                "machine": platform.platform(),
                "rows": args.rows,
                "master": args.master,
                "batch_rows": args.batch_rows,
                "inference": inference,
                "seconds": runs,
                "rows_per_second": rates,
                "ratios": {name: rate / rates["anchor"] for name, rate in rates.items()},
                "max_abs_difference": difference,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
