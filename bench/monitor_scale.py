"""Monitoring at scale (issue 23): what `churnops monitor` and `churnops compare` cost as the
prediction store grows from 1,000,000 to 100,000,000 rows, per query engine, with Evidently's
data-drift preset beside them on the same rows.

`generate` writes N stored predictions straight into a store folder, as a compacted store looks
(a few large files per day, `predictions/date=YYYY-MM-DD/*.parquet` with the store's columns and
Parquet options), for two real versions in a tracking server of its own: v1 in production (the
rows' model/version/alias), v2 a challenger that shadowed a share of the rows (role=shadow).
Customers (a tenth of the rows, at most 1,000,000) are scored repeatedly over --days days by the
real models; the last --drift-days days are shifted (more complaints, shorter sessions, more basic
plans), so drift and quality alerts have something to say. Outcomes go to `labels/` in the
store's schema: keyed by customer and time (churned when it happened; "retained" every churn
horizon), and a share keyed by prediction id. A store is made once per parameters and reused:
`<data root>/store-<rows>/manifest.json` says what it holds.

`run` starts the tracking server on the same registry and runs each command as a user runs it, a
separate process per engine and size (`--engine` given explicitly, and CHURNOPS_ENGINE set to the
same; an engine this checkout does not offer is skipped with a note), measuring wall time, the
peak RSS of the whole process tree (sampled from /proc, so a Spark JVM counts) and its CPU
seconds (steadier than wall time on a shared machine), each run bounded in time and memory (a run
past a bound is stopped and recorded as such). Evidently's DataDriftPreset runs from the
bench-only venv (`make bench-peers`) on the same rows (the store's production inputs vs the
version's reference). Results accumulate in bench/results/monitor_scale.json (a later run
replaces only the cells it measured), rendered as a markdown table and a log-log chart beside it.

    .venv/bin/python -m bench.monitor_scale generate --rows 10000000 100000000
    .venv/bin/python -m bench.monitor_scale run --rows 1000000 10000000 100000000 \\
        [--engines pandas duckdb spark] [--tasks monitor compare evidently] \\
        [--timeout 900] [--memory-limit-gib 12] [--data-root ../scale-data]
    .venv/bin/python -m bench.monitor_scale report   # table and chart from the results file
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from bench.common import write_results
from bench.serve import free_port
from churnops import data, lifecycle, tracking_server
from churnops.config import TARGET, Settings, apply_mlflow_client_limits
from churnops.monitoring import store
from churnops.registry import loading, versions

PEERS_PYTHON = Path(".venv-peers/bin/python")
RESULTS = Path("bench/results/monitor_scale.json")
ENGINES = ("pandas", "duckdb", "spark")
TASKS = ("monitor", "compare", "evidently")
# NB: the training table's 0/1 integer column, beside the built-in table's numeric and
# categorical ones: paperless billing, more common among customers who churn.
BINARY = "paperless_billing"
HORIZON_DAYS = 30
MIB = 1024 * 1024
TARGETS = {"monitor": (120.0, 1024.0), "compare": (60.0, None)}


@dataclass(frozen=True)
class Models:
    """The registry the stores are about: production v1 and challenger v2."""

    production: int
    challenger: int
    run_ids: tuple[str, str]

    @property
    def identity(self) -> str:
        """What a store's rows depend on in the registry."""
        return f"v{self.production}:{self.run_ids[0]},v{self.challenger}:{self.run_ids[1]}"


@dataclass(frozen=True)
class Shape:
    """A store's parameters: a store on disk is reused only when they are the same."""

    rows: int
    days: int = 60
    customers: int = 0
    drift_days: int = 10
    shadow_share: float = 0.1
    by_id_share: float = 0.02
    rows_per_file: int = 1_000_000
    chunk_rows: int = 250_000
    seed: int = 23

    def __post_init__(self) -> None:
        if self.customers == 0:
            # NB: a frozen dataclass sets a derived default through object.__setattr__.
            object.__setattr__(self, "customers", max(1000, min(1_000_000, self.rows // 10)))
        if self.rows < self.days:
            raise SystemExit(f"--rows must be at least --days ({self.days}), got {self.rows}")


def human(rows: int) -> str:
    """1000000 -> 1M, 100000000 -> 100M, 250000 -> 250k."""
    for size, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1000, "k")):
        if rows >= size and rows % size == 0:
            return f"{rows // size}{suffix}"
    return str(rows)


def customer_profiles(customers: int, seed: int) -> pd.DataFrame:
    """The built-in table's customers (their churn drawn from its logistic model) plus the 0/1
    column, which depends on the churn."""
    frame = data.generate(customers, seed=seed)
    rng = np.random.default_rng([seed, 1])
    frame[BINARY] = (rng.random(customers) < 0.25 + 0.35 * frame[TARGET]).astype(np.int64)
    return frame


@contextmanager
def registry(root: Path) -> Iterator[tuple[Settings, Models]]:
    """A tracking server on ``root/registry`` with v1 (production) and v2 trained there once."""
    home = root / "registry"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    settings = Settings(tracking_uri=f"http://127.0.0.1:{port}", data_dir=home)
    apply_mlflow_client_limits(settings)
    server = tracking_server.start(settings, port=port, quiet=True)
    try:
        yield settings, _models(settings, home)
    finally:
        server.stop()


def _models(settings: Settings, home: Path) -> Models:
    recorded = home / "models.json"
    if recorded.exists():
        known = json.loads(recorded.read_text())
        return Models(known["production"], known["challenger"], tuple(known["run_ids"]))
    trained = []
    # NB: the challenger is a logistic regression on a later sample of customers: a gradient
    # boosting one scored its shadow rows ~100x slower on this shared 2-core machine
    # (OpenMP threads competing), which would make the generator, not the monitor, the cost.
    for seed in (1, 2):
        table = home / f"training-{seed}.csv"
        customer_profiles(5000, seed=seed).to_csv(table, index=False)
        trained.append(
            lifecycle.train(
                settings,
                data_file=table,
                version_label=f"v{seed}",
                seed=seed,
                gate_f1=0.6,
                kind="logreg",
            )
        )
        if seed == 1:
            lifecycle.promote(settings, trained[0].version)
    first, second = trained
    run_ids = tuple(versions.get_version(settings, v).run_id or "" for v in (1, 2))
    models = Models(first.version, second.version, (run_ids[0], run_ids[1]))
    recorded.write_text(json.dumps(dataclasses.asdict(models)))
    return models


def store_folder(root: Path, shape: Shape) -> Path:
    """Where the store of ``shape.rows`` rows lives."""
    return root / f"store-{human(shape.rows)}"


def manifest_of(folder: Path) -> dict[str, Any] | None:
    """A finished store's manifest, or None."""
    path = folder / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else None


def ensure_store(settings: Settings, models: Models, root: Path, shape: Shape) -> Path:
    """The store for ``shape``: reused when one with the same parameters exists, else written."""
    folder = store_folder(root, shape)
    wanted = {"shape": dataclasses.asdict(shape), "models": models.identity}
    found = manifest_of(folder)
    if found is not None and {k: found[k] for k in wanted} == wanted:
        print(f"reusing {folder} ({found['production_rows']:,} rows, made {found['made']})")
        return folder
    if folder.exists():
        print(f"{folder} holds other parameters; writing it again")
        shutil.rmtree(folder)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    usage = shutil.disk_usage(root)
    # NB: ~45 bytes a stored row (measured), twice over for headroom.
    need = 90 * shape.rows * (1 + shape.shadow_share)
    if usage.free < need:
        raise SystemExit(
            f"{root}: {usage.free / 2**30:.1f} GiB free, a {human(shape.rows)}-row store needs "
            f"about {need / 2**30:.1f} GiB; free some or choose --data-root"
        )
    made = Generator(settings, models, shape).write(partial)
    (partial / "manifest.json").write_text(json.dumps(wanted | made, indent=2))
    partial.rename(folder)
    return folder


class Generator:
    """Writes one store: the day files, then the outcome files."""

    def __init__(self, settings: Settings, models: Models, shape: Shape) -> None:
        self.shape = shape
        self.settings = settings
        threads = os.cpu_count() or 1
        self.production = loading.load_version(settings, models.production, threads=threads)
        self.challenger = loading.load_version(settings, models.challenger, threads=threads)
        self.models = models
        self.people = customer_profiles(shape.customers, seed=shape.seed)
        self.customer_ids = pa.array(self.people["customer_id"], pa.string())
        rng = np.random.default_rng([shape.seed, 2])
        churns = self.people[TARGET].to_numpy() == 1
        # NB: in days from the first day; a churn after the last day is not known yet.
        self.churn_day = np.where(
            churns, rng.uniform(5.0, shape.days + HORIZON_DAYS, len(churns)), np.inf
        )
        self.end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        self.start = self.end - timedelta(days=shape.days)

    def write(self, folder: Path) -> dict[str, Any]:
        """Write the store into ``folder``; what was written, and how fast."""
        shape = self.shape
        target = store.open_store(str(folder))
        staging = folder / ".staging"
        staging.mkdir(parents=True)
        started = time.perf_counter()
        per_day = np.full(shape.days, shape.rows // shape.days)
        per_day[: shape.rows % shape.days] += 1
        first_day = int(self.start.timestamp() // 86_400)
        written = {"production": 0, "shadow": 0, "files": 0}
        by_id: list[pa.Table] = []
        for day in range(shape.days):
            rng = np.random.default_rng([shape.seed, 3, day])
            offsets = np.sort(rng.uniform(0, 86_400, per_day[day]))
            micros = (self.start.timestamp() + day * 86_400 + offsets) * 1e6
            files = math.ceil(per_day[day] / shape.rows_per_file)
            for number, part in enumerate(np.array_split(micros.astype(np.int64), files)):
                local = staging / f"{day}-{number}.parquet"
                out: store.DayFile | None = None
                for chunk_number, times in enumerate(_chunks(part, shape.chunk_rows)):
                    chunk_rng = np.random.default_rng([shape.seed, 4, day, number, chunk_number])
                    table, labels = self.chunk(chunk_rng, day, times)
                    if out is None:
                        out = store.DayFile(local, table.schema)
                    out.write(table)
                    by_id.append(labels)
                    shadowed = pc.sum(pc.equal(table["role"], "shadow")).as_py() or 0
                    written["shadow"] += shadowed
                    written["production"] += table.num_rows - shadowed
                assert out is not None
                out.close()
                store.place_file(target, first_day + day, local)
                written["files"] += 1
            done = written["production"]
            elapsed = time.perf_counter() - started
            print(
                f"  day {day + 1}/{shape.days}: {done:,} rows, {done / elapsed:,.0f} rows/s",
                flush=True,
            )
        staging.rmdir()
        outcomes = self.outcomes(target, pa.concat_tables(by_id))
        seconds = time.perf_counter() - started
        size = sum(f.stat().st_size for f in folder.rglob("*.parquet"))
        return {
            "made": datetime.now(UTC).isoformat(timespec="seconds"),
            "first_day": self.start.date().isoformat(),
            "last_day": (self.end - timedelta(days=1)).date().isoformat(),
            "production_rows": written["production"],
            "shadow_rows": written["shadow"],
            "prediction_files": written["files"],
            "outcomes": outcomes,
            "seconds": round(seconds, 1),
            "rows_per_second": round((written["production"] + written["shadow"]) / seconds),
            "bytes": size,
        }

    def features(self, rng: np.random.Generator, who: np.ndarray, drifting: bool) -> pd.DataFrame:
        """The inputs of one chunk's rows: each customer's profile, a session length of the
        day, and the shift on drifting days."""
        people = self.people
        rows = len(who)
        complaints = people["num_complaints"].to_numpy()[who]
        session = people["avg_session_minutes"].to_numpy()[who] + rng.normal(0.0, 4.0, rows)
        plan = people["plan_type"].to_numpy()[who]
        if drifting:
            complaints = np.minimum(complaints + rng.poisson(1.2, rows), 10)
            session = session - 8.0
            plan = np.where(rng.random(rows) < 0.3, data.PLAN_TYPES[0], plan)
        return pd.DataFrame(
            {
                "tenure_months": people["tenure_months"].to_numpy()[who],
                "num_complaints": complaints,
                "avg_session_minutes": np.clip(session, 1.0, None).round(1),
                "plan_type": plan,
                "region": people["region"].to_numpy()[who],
                BINARY: people[BINARY].to_numpy()[who],
            }
        )

    def chunk(
        self, rng: np.random.Generator, day: int, times: np.ndarray
    ) -> tuple[pa.Table, pa.Table]:
        """One chunk's stored rows (production, then the shadowed ones) and the outcomes that
        are keyed by prediction id for some of them."""
        shape, rows = self.shape, len(times)
        who = rng.integers(0, shape.customers, rows)
        features = self.features(rng, who, drifting=day >= shape.days - shape.drift_days)
        scored = self.production.engine.predict_frame(features)
        base = rng.bytes(12).hex()
        positions = pa.array(np.arange(rows)).cast(pa.string())
        ids = pc.binary_join_element_wise(base, positions, "-")
        requests = pa.array(np.arange(rows) // 20).cast(pa.string())
        when = pa.array(times).cast(store.TIMESTAMP)
        inputs = {
            str(name): pa.array(values.astype(float) if values.dtype.kind in "iu" else values)
            for name, values in features.items()
        }
        meta = {
            "prediction_id": ids,
            "time": when,
            "served_at": pa.array(times + 4_000).cast(store.TIMESTAMP),
            "customer_id": self.customer_ids.take(pa.array(who)),
            "request_id": pc.binary_join_element_wise(f"r{base}", requests, "-"),
        }
        production = self._table(
            meta, inputs, self.models.production, "production", "production", scored, rows
        )
        shadowed = np.flatnonzero(rng.random(rows) < shape.shadow_share)
        tables = [production]
        if len(shadowed):
            picked = pa.array(shadowed)
            challenger = self.challenger.engine.predict_frame(features.iloc[shadowed])
            tables.append(
                self._table(
                    {k: v.take(picked) for k, v in meta.items()},
                    {k: v.take(picked) for k, v in inputs.items()},
                    self.models.challenger,
                    self.settings.challenger_alias,
                    "shadow",
                    challenger,
                    len(shadowed),
                )
            )
        return pa.concat_tables(tables), self._by_id(rng, ids, who, day, times)

    def _table(
        self,
        meta: dict[str, pa.Array],
        inputs: dict[str, pa.Array],
        version: int,
        alias: str,
        role: str,
        scored: Any,
        rows: int,
    ) -> pa.Table:
        engine = self.production if role == "production" else self.challenger

        def same(value: Any, kind: pa.DataType) -> pa.Array:
            return pa.repeat(pa.scalar(value, kind), rows)

        columns = {
            "prediction_id": meta["prediction_id"],
            "time": meta["time"],
            "served_at": meta["served_at"],
            "source": same("api", pa.string()),
            "model": same(self.settings.model_name, pa.string()),
            "version": same(version, pa.int64()),
            "alias": same(alias, pa.string()),
            "role": same(role, pa.string()),
            "threshold": same(engine.engine.threshold, pa.float64()),
            "probability": pa.array(np.asarray(scored.probability, dtype=float)),
            "label": pa.array(np.asarray(scored.label, dtype=np.int8)),
            "customer_id": meta["customer_id"],
            "request_id": meta["request_id"],
        }
        assert tuple(columns) == store.FIXED_COLUMNS
        return pa.table(columns | {store.INPUT_PREFIX + k: v for k, v in inputs.items()})

    def _by_id(
        self, rng: np.random.Generator, ids: pa.Array, who: np.ndarray, day: int, times: np.ndarray
    ) -> pa.Table:
        """Outcomes keyed by prediction id for a share of the rows whose outcome is final by the
        last day: churned within the horizon after the prediction, or retained past it."""
        shape = self.shape
        at = day + (times / 1e6 - (self.start.timestamp() + day * 86_400)) / 86_400
        churn = self.churn_day[who]
        churned = (churn >= at) & (churn <= np.minimum(at + HORIZON_DAYS, shape.days))
        retained = ~churned & (at + HORIZON_DAYS <= shape.days)
        keep = np.flatnonzero((rng.random(len(who)) < shape.by_id_share) & (churned | retained))
        return pa.table(
            {
                "key_kind": pa.repeat(pa.scalar("prediction_id"), len(keep)),
                "key": ids.take(pa.array(keep)),
                "outcome": pa.array(churned[keep].astype(np.int8)),
            }
        )

    def outcomes(self, target: store.Store, by_id: pa.Table) -> dict[str, int]:
        """Write the outcome files: customers' churns and retentions by time, then the ones
        keyed by prediction id; how many of each."""
        shape = self.shape
        start = self.start.timestamp()
        customers = np.arange(shape.customers)
        churned = customers[self.churn_day <= shape.days]
        kept = [
            (customers[self.churn_day > k * HORIZON_DAYS], start + k * HORIZON_DAYS * 86_400.0)
            for k in range(1, shape.days // HORIZON_DAYS + 1)
        ]
        who = np.concatenate([churned, *(c for c, _ in kept)])
        seconds = np.concatenate(
            [
                start + self.churn_day[churned] * 86_400,
                *(np.full(len(c), moment) for c, moment in kept),
            ]
        )
        outcome = np.concatenate(
            [np.ones(len(churned), np.int8), *(np.zeros(len(c), np.int8) for c, _ in kept)]
        )
        by_customer = pa.table(
            {
                "key_kind": pa.repeat(pa.scalar("customer_id"), len(who)),
                "key": self.customer_ids.take(pa.array(who)),
                "outcome": pa.array(outcome),
                "time": pa.array((seconds * 1e6).astype(np.int64)).cast(store.TIMESTAMP),
            }
        )
        added = pa.scalar(round(time.time() * 1e6), pa.int64()).cast(store.TIMESTAMP)
        for kind, table in (("customers", by_customer), ("predictions", by_id)):
            for number, offset in enumerate(range(0, table.num_rows, 2_000_000)):
                part = table.slice(offset, 2_000_000)
                part = part.append_column("added_at", pa.repeat(added, part.num_rows))
                part = part.append_column("row", pa.array(np.arange(part.num_rows)))
                store.write_labels(target, f"scale-{kind}-{number:03d}", part)
        return {
            "by_customer": by_customer.num_rows,
            "by_customer_churned": len(churned),
            "by_prediction_id": by_id.num_rows,
        }


def _chunks(values: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for offset in range(0, len(values), size):
        yield values[offset : offset + size]


@dataclass
class Measured:
    """One measured run: wall seconds, the process tree's peak RSS, and how it ended."""

    seconds: float
    peak_mib: float
    cpu_seconds: float
    load: float
    status: str
    stdout: str
    stderr: str


def _process_tree(root: int) -> dict[int, int]:
    """The processes of ``root``'s tree and the CPU time each has used so far, in clock ticks."""
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # NB: the command name may hold spaces and parentheses; the fields after it do not.
        fields = stat.rpartition(b")")[2].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        # NB: utime + stime of the process itself; its reaped children's are counted as theirs.
        ticks[int(entry.name)] = int(fields[11]) + int(fields[12])
    found, todo = {}, [root]
    while todo:
        pid = todo.pop()
        found[pid] = ticks.get(pid, 0)
        todo += children.get(pid, [])
    return found


def _memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB; zeros once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            status = handle.read()
    except OSError:
        return 0, 0
    found = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.MULTILINE))
    return int(found.get("VmRSS", 0)), int(found.get("VmHWM", 0))


def measure(
    command: Sequence[str], env: dict[str, str], timeout: float, memory_limit_mib: float
) -> Measured:
    """Run ``command``; its wall time, the peak RSS of its process tree (the sum over the
    tree, sampled every 0.1 s, or the largest single process's own high-water mark if higher),
    the tree's CPU seconds (what a shared machine's other load changes least) and the mean
    1-minute load average meanwhile; stopped when it passes ``timeout`` seconds or
    ``memory_limit_mib``."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        # NB: a session of its own, so a stop ends every process it started (a Spark JVM too).
        child = subprocess.Popen(command, env=env, stdout=out, stderr=err, start_new_session=True)
        peak_sum = peak_single = 0
        cpu: dict[int, int] = {}
        loads = []
        status = "ok"
        while child.poll() is None:
            processes = _process_tree(child.pid)
            for pid, used in processes.items():
                cpu[pid] = max(cpu.get(pid, 0), used)
            loads.append(float(Path("/proc/loadavg").read_text().split()[0]))
            tree = [_memory_kib(pid) for pid in processes]
            peak_sum = max(peak_sum, sum(rss for rss, _ in tree))
            peak_single = max([peak_single, *(hwm for _, hwm in tree)])
            elapsed = time.perf_counter() - started
            if elapsed > timeout:
                status = f"stopped at the time limit ({timeout:g} s)"
            elif max(peak_sum, peak_single) / 1024 > memory_limit_mib:
                status = f"stopped at the memory limit ({memory_limit_mib / 1024:g} GiB)"
            if status != "ok":
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                break
            time.sleep(0.1)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if status == "ok" and child.returncode not in (0, 3):
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        # NB: a traceback's own line, not the advice some libraries print after it.
        errors = [line for line in lines if "Error" in line or "Exception" in line]
        shown = (errors or lines or ["no message"])[-1].replace("|", "/")
        status = f"failed (exit {child.returncode}): {shown}"
    cpu_seconds = sum(cpu.values()) / os.sysconf("SC_CLK_TCK")
    load = sum(loads) / len(loads) if loads else 0.0
    peak = max(peak_sum, peak_single) / 1024
    return Measured(seconds, peak, cpu_seconds, load, status, stdout, stderr)


def engine_choices(command: str, env: dict[str, str]) -> tuple[str, ...] | None:
    """The engines `churnops COMMAND --engine` accepts in this checkout; None without the
    option."""
    shown = subprocess.run(
        [sys.executable, "-m", "churnops", command, "--help"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "--engine" not in shown:
        return None
    listed = re.search(r"--engine\s+\[([a-z|]+)\]", shown)
    return tuple(listed.group(1).split("|")) if listed else ENGINES


def command_for(
    task: str, engine: str, choices: tuple[str, ...] | None, challenger: int
) -> list[str] | str:
    """The command line of one run, or why it is skipped."""
    arguments = ["monitor", "--no-log", "--json"]
    if task == "compare":
        arguments = ["compare", "--version", str(challenger), "--no-log", "--json"]
    if choices is None:
        if engine != "pandas":
            return f"`churnops {task}` has no --engine option in this checkout yet"
        # NB: before the engines, the command's one code path is the pandas one.
        return [sys.executable, "-m", "churnops", *arguments]
    if engine not in choices:
        return f"`churnops {task} --engine` does not offer {engine} in this checkout"
    return [sys.executable, "-m", "churnops", *arguments, "--engine", engine]


def seen(task: str, stdout: str) -> dict[str, Any]:
    """What the command reported about the rows, so a table cell says what was really read."""
    try:
        report = json.loads(stdout)
    except json.JSONDecodeError:
        return {}
    if task == "monitor":
        return {
            "rows": report.get("rows"),
            "labelled": sum(v.get("labelled") or 0 for v in report.get("versions", [])),
            "immature": report.get("immature"),
            "alerts": [a.get("kind") for a in report.get("alerts", [])],
        }
    shadow = report.get("shadow") or {}
    return {
        "shadow_rows": shadow.get("rows"),
        "labelled": shadow.get("labelled"),
        "verdict": (report.get("verdict") or {}).get("result"),
    }


def evidently_inputs(settings: Settings, version: int, root: Path, folder: Path, rows: int) -> Path:
    """Evidently's files for one store: the version's reference and the store's production
    inputs (with the reference's types), written once."""
    peers = root / f"peers-{human(rows)}"
    if (peers / "current.parquet").exists():
        return peers
    peers.mkdir(exist_ok=True)
    reference = loading.load_reference(settings, versions.get_version(settings, version))
    assert reference is not None
    reference.rows.to_parquet(peers / "reference.parquet")
    columns = list(reference.rows.columns)
    dataset = ds.dataset(folder / store.PREDICTIONS, format="parquet", partitioning="hive")
    types = pa.Schema.from_pandas(reference.rows, preserve_index=False)
    scanner = dataset.scanner(
        columns={c: ds.field(store.INPUT_PREFIX + c).cast(types.field(c).type) for c in columns},
        filter=ds.field("role") == "production",
    )
    partial = peers / "current.parquet.partial"
    with pq.ParquetWriter(partial, scanner.projected_schema) as writer:
        for batch in scanner.to_batches():
            writer.write_batch(batch)
    partial.rename(peers / "current.parquet")
    return peers


def run(args: argparse.Namespace) -> None:
    root = args.data_root.resolve()
    if not PEERS_PYTHON.exists() and "evidently" in args.tasks:
        print(f"{PEERS_PYTHON} not found: `make bench-peers` makes it; Evidently is skipped")
    results = load_results()
    with registry(root) as (settings, models):
        for rows in args.rows:
            shape = shape_from(args, rows)
            folder = ensure_store(settings, models, root, shape)
            scoped = settings.model_copy(update={"prediction_store": str(folder)})
            env = {**os.environ, **scoped.as_environment()}
            choices = {t: engine_choices(t, env) for t in ("monitor", "compare")}
            for task in args.tasks:
                for engine in ENGINES if task != "evidently" else ("evidently",):
                    if task != "evidently" and engine not in args.engines:
                        continue
                    entry = one_run(args, task, engine, rows, choices, models, env, root, folder)
                    if entry is not None:
                        results[(task, engine, rows)] = entry
                        save_results(results)
    render(results)


def one_run(
    args: argparse.Namespace,
    task: str,
    engine: str,
    rows: int,
    choices: dict[str, tuple[str, ...] | None],
    models: Models,
    env: dict[str, str],
    root: Path,
    folder: Path,
) -> dict[str, Any] | None:
    """Measure one cell of the table; None (with a printed note) when it cannot run here."""
    name = f"{task} {human(rows)}" if task == "evidently" else f"{task} {engine} {human(rows)}"
    if task == "evidently":
        if not PEERS_PYTHON.exists():
            return None
        if rows > args.evidently_max_rows:
            print(f"{name}: skipped (--evidently-max-rows {args.evidently_max_rows:,})")
            return None
        scoped = Settings(tracking_uri=env["MLFLOW_TRACKING_URI"])
        peers = evidently_inputs(scoped, models.production, root, folder, rows)
        command: list[str] | str = [
            str(PEERS_PYTHON),
            "bench/peers_monitor.py",
            str(peers),
            "evidently",
        ]
    else:
        command = command_for(task, engine, choices[task], models.challenger)
    if isinstance(command, str):
        print(f"{name}: skipped: {command}")
        return None
    print(f"{name}: running {' '.join(command)}")
    # NB: the setting too: a checkout whose command reads CHURNOPS_ENGINE before it has the
    # option must not run the default engine under another engine's name.
    if task != "evidently":
        env = {**env, "CHURNOPS_ENGINE": engine}
    done = measure(command, env, args.timeout, args.memory_limit_gib * 1024)
    detail = seen(task, done.stdout) if task != "evidently" else _evidently(done.stdout)
    print(
        f"  {done.status}: {done.seconds:.1f} s, peak {done.peak_mib:,.0f} MiB, CPU "
        f"{done.cpu_seconds:.1f} s, load {done.load:.1f} {detail}"
    )
    if done.status.startswith("failed"):
        print(done.stderr[-3000:], file=sys.stderr)
    return {
        "task": task,
        "engine": engine,
        "rows": rows,
        "seconds": round(done.seconds, 2),
        "peak_mib": round(done.peak_mib),
        "cpu_seconds": round(done.cpu_seconds, 1),
        "load": round(done.load, 1),
        "status": done.status,
        "seen": detail,
        "command": " ".join(command[1:])
        if task == "evidently"
        else f"CHURNOPS_ENGINE={engine} churnops " + " ".join(command[3:]),
        "commit": _commit(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _evidently(stdout: str) -> dict[str, Any]:
    lines = stdout.strip().splitlines()
    if not lines:
        return {}
    found = json.loads(lines[-1])["evidently"]
    return {"report_seconds": round(found["seconds"], 2), "drifted": found["verdicts"]}


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip()


def load_results() -> dict[tuple[str, str, int], dict[str, Any]]:
    """The cells measured so far."""
    if not RESULTS.exists():
        return {}
    cells = json.loads(RESULTS.read_text())["cells"]
    return {(c["task"], c["engine"], c["rows"]): c for c in cells}


def save_results(results: dict[tuple[str, str, int], dict[str, Any]]) -> None:
    """Write the cells (after each run, so a stopped bench keeps what it measured)."""
    write_results(RESULTS, {"cells": [results[k] for k in sorted(results)]})


def _order(column: tuple[str, str]) -> tuple[int, int]:
    task, engine = column
    return TASKS.index(task), ENGINES.index(engine) if engine in ENGINES else 0


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "not run"
    if entry["status"] != "ok":
        return f"{entry['status']} (after {entry['seconds']:.0f} s, {entry['peak_mib']:,} MiB)"
    cpu = f" (CPU {entry['cpu_seconds']:.0f} s)" if "cpu_seconds" in entry else ""
    return f"{entry['seconds']:.1f} s{cpu}, {entry['peak_mib']:,} MiB"


def table(results: dict[tuple[str, str, int], dict[str, Any]]) -> str:
    """The markdown table: a row per store size, a column per command and engine."""
    columns = sorted({(t, e) for t, e, _ in results}, key=_order)
    sizes = sorted({r for _, _, r in results})
    names = [
        "Evidently DataDriftPreset" if t == "evidently" else f"`{t} --engine {e}`"
        for t, e in columns
    ]
    lines = [
        "| stored predictions | " + " | ".join(names) + " |",
        "| ---: |" + " --- |" * len(columns),
    ]
    for rows in sizes:
        cells = [_cell(results.get((t, e, rows))) for t, e in columns]
        lines.append(f"| {rows:,} | " + " | ".join(cells) + " |")
    ran = sorted({f"`{c['command']}`" for c in results.values() if c.get("command")})
    lines += [
        "",
        "Commands run (`churnops ...` in .venv, Evidently in .venv-peers): " + ", ".join(ran),
    ]
    return "\n".join(lines)


def chart(results: dict[tuple[str, str, int], dict[str, Any]], path: Path) -> None:
    """Seconds and peak MiB against stored rows, log-log, a line per command and engine; a run
    stopped at a bound (or failed) is a hollow marker at what it had reached."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    lines = sorted({(t, e) for t, e, _ in results}, key=_order)
    for task, engine in lines:
        cells = sorted((r, c) for (t, e, r), c in results.items() if (t, e) == (task, engine))
        label = "Evidently DataDriftPreset" if task == "evidently" else f"{task} ({engine})"
        done = [(r, c) for r, c in cells if c["status"] == "ok"]
        stopped = [(r, c) for r, c in cells if c["status"] != "ok"]
        for axis, key in ((left, "seconds"), (right, "peak_mib")):
            # NB: a colour per engine, a line style per command.
            color = f"C{(*ENGINES, 'evidently').index(engine)}"
            style = {"monitor": "-", "compare": "--", "evidently": ":"}[task]
            xs, ys = [r for r, _ in done], [c[key] for _, c in done]
            axis.plot(xs, ys, marker="o", ls=style, color=color, label=label)
            if stopped:
                axis.plot(
                    [r for r, _ in stopped],
                    [c[key] for _, c in stopped],
                    "o",
                    mfc="none",
                    color=color,
                )
    for axis, level, style, text in (
        (left, 120, "--", "monitor target at 100M: 120 s"),
        (left, 60, ":", "compare target at 100M: 60 s"),
        (right, 1024, "--", "monitor target: 1 GiB"),
    ):
        axis.axhline(level, color="grey", ls=style, lw=0.8)
        # NB: x in axes fractions, y in data: the label stays inside whatever sizes were run.
        axis.text(
            0.02, level * 1.05, text, fontsize=8, color="grey", transform=axis.get_yaxis_transform()
        )
    for axis, title in ((left, "wall time (s)"), (right, "peak RSS of the process tree (MiB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("stored predictions")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=8, loc="upper left")
    figure.suptitle("churnops monitor / compare vs stored rows (hollow: stopped or failed)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def render(results: dict[tuple[str, str, int], dict[str, Any]]) -> None:
    """Print the table and write it and the chart beside the results file."""
    if not results:
        print("no results yet")
        return
    text = table(results)
    print(text)
    RESULTS.with_suffix(".md").write_text(text + "\n")
    chart(results, RESULTS.with_suffix(".png"))
    print(f"wrote {RESULTS}, {RESULTS.with_suffix('.md')} and {RESULTS.with_suffix('.png')}")


def shape_from(args: argparse.Namespace, rows: int) -> Shape:
    """The store's parameters from the command line."""
    return Shape(
        rows=rows,
        days=args.days,
        customers=args.customers,
        drift_days=args.drift_days,
        shadow_share=args.shadow_share,
        seed=args.seed,
        rows_per_file=args.rows_per_file,
    )


def generate(args: argparse.Namespace) -> None:
    root = args.data_root.resolve()
    with registry(root) as (settings, models):
        for rows in args.rows:
            folder = ensure_store(settings, models, root, shape_from(args, rows))
            made = manifest_of(folder)
            assert made is not None
            print(
                f"{folder}: {made['production_rows']:,} production + {made['shadow_rows']:,} "
                f"shadow rows in {made['prediction_files']} files, {made['bytes'] / 2**30:.2f} "
                f"GiB, written in {made['seconds']:.0f} s ({made['rows_per_second']:,} rows/s)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("generate", "run"):
        sub = commands.add_parser(name)
        sub.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
        sub.add_argument("--data-root", type=Path, default=Path("../scale-data"))
        sub.add_argument("--days", type=int, default=60)
        sub.add_argument("--customers", type=int, default=0, help="default: rows/10, <= 1M")
        sub.add_argument("--drift-days", type=int, default=10)
        sub.add_argument("--shadow-share", type=float, default=0.1)
        sub.add_argument("--rows-per-file", type=int, default=1_000_000)
        sub.add_argument("--seed", type=int, default=23)
    runner = commands.choices["run"]
    runner.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    runner.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    runner.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    runner.add_argument("--memory-limit-gib", type=float, default=12.0)
    runner.add_argument("--evidently-max-rows", type=int, default=10_000_000)
    commands.add_parser("report")
    args = parser.parse_args()
    if args.command == "generate":
        generate(args)
    elif args.command == "run":
        run(args)
    else:
        render(load_results())


if __name__ == "__main__":
    main()
