"""Compaction benchmark: reading one day of the prediction store as the API leaves it (one small
file per worker flush) against the same day after `churnops store compact`.

Writes --files files of --rows rows each into one day partition of a fresh local store (the
built-in data's input columns, event times spread over the day, as the API's writer writes
them), then times, best of --repeats:

- before: ``store.read_predictions`` of that day (the pandas engine's read), and the DuckDB
  engine (``engine.open_engine``, what `monitor` runs by default) counting the day's rows and
  summing their probabilities;
- compaction: ``compaction.compact`` of the day with no grace (merge and delete the sources);
- after: the same reads.

Prints files, bytes and read seconds before and after, their ratio and the compaction's time,
and writes them as JSON.

    .venv/bin/python bench/compact.py [--files 2000] [--rows 100] [--repeats 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from churnops import data
from churnops.monitoring import compaction, store

DAY = date(2026, 11, 30)


def fill(target: store.Store, files: int, rows: int) -> int:
    """``files`` files of ``rows`` rows in DAY's partition, as the API's writer writes them."""
    frame = data.generate(rows=rows * files, seed=5).drop(columns=["churn"])
    start = datetime.combine(DAY, datetime.min.time(), UTC).timestamp()
    rng = np.random.default_rng(5)
    for n in range(files):
        part = frame.iloc[n * rows : (n + 1) * rows]
        at = start + 86_000 * n / files
        meta = store.RowsMeta(at, at, "api", "churn_model", 1, "production", 0.4, f"r{n}")
        table = store.rows_table(
            meta,
            pa.array(store.prediction_ids(rows)),
            rng.random(rows),
            rng.integers(0, 2, rows).astype(np.int8),
            pa.array(part["customer_id"].astype(str)),
            {c: pa.array(part[c]) for c in part.columns if c != "customer_id"},
        )
        store.write_predictions(target, table)
    return files * rows


def read_seconds(target: store.Store, repeats: int) -> tuple[float, int]:
    """Best time of reading DAY, and the rows read."""
    since = datetime.combine(DAY, datetime.min.time(), UTC)
    best, rows = float("inf"), 0
    for _ in range(repeats):
        started = time.perf_counter()
        rows = store.read_predictions(
            target, "churn_model", since, since + timedelta(days=1)
        ).num_rows
        best = min(best, time.perf_counter() - started)
    return best, rows


def duckdb_seconds(target: store.Store, repeats: int) -> tuple[float, int]:
    """Best time of the DuckDB engine's pass over DAY (opening included), and the rows."""
    from churnops.config import Settings
    from churnops.monitoring.engine import open_engine

    since = datetime.combine(DAY, datetime.min.time(), UTC)
    best, rows = float("inf"), 0
    with tempfile.TemporaryDirectory() as data_dir:
        for _ in range(repeats):
            started = time.perf_counter()
            settings = Settings(data_dir=Path(data_dir))
            with open_engine(settings, "duckdb", target, since, since + timedelta(days=1)) as e:
                answer = e.query("SELECT count(*) AS n, sum(probability) AS p FROM predictions")
            rows = int(answer["n"][0])
            best = min(best, time.perf_counter() - started)
    return best, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results/compact.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        target = store.open_store(folder)
        written = fill(target, args.files, args.rows)
        files_before = len(store.prediction_files(target))
        before, rows_before = read_seconds(target, args.repeats)
        duck_before, duck_rows_before = duckdb_seconds(target, args.repeats)
        report = compaction.compact(target, days=[DAY], grace_seconds=0)
        files_after = len(store.prediction_files(target))
        after, rows_after = read_seconds(target, args.repeats)
        duck_after, duck_rows_after = duckdb_seconds(target, args.repeats)
    assert rows_before == rows_after == written, (rows_before, rows_after, written)
    assert duck_rows_before == duck_rows_after == written, (duck_rows_before, duck_rows_after)
    [day] = report.days
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.node(),
        "rows": written,
        "files_before": files_before,
        "files_after": files_after,
        "bytes_before": day.bytes_before,
        "bytes_after": day.bytes_after,
        "read_seconds_before": round(before, 4),
        "read_seconds_after": round(after, 4),
        "read_speedup": round(before / after, 1),
        "duckdb_seconds_before": round(duck_before, 4),
        "duckdb_seconds_after": round(duck_after, 4),
        "duckdb_speedup": round(duck_before / duck_after, 1),
        "compact_seconds": round(report.seconds, 2),
    }
    print(
        f"{written:,} rows in one day: {files_before:,} files ({day.bytes_before / 2**20:.1f} MiB)"
        f" read in {before:.3f} s; compacted in {report.seconds:.2f} s to {files_after} file(s) "
        f"({day.bytes_after / 2**20:.1f} MiB) read in {after:.3f} s: {before / after:.1f}x "
        f"faster (best of {args.repeats})\n"
        f"the DuckDB engine over the day: {duck_before:.3f} s before, {duck_after:.3f} s after: "
        f"{duck_before / duck_after:.1f}x"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
