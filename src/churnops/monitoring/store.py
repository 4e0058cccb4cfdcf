"""The prediction store: every scored row kept durably as Parquet, partitioned by day, in a local
folder (default ``<data dir>/predictions``) or under ``s3://bucket/prefix`` for teams whose
replicas run on several machines. Late churn outcomes live beside the predictions, under
``labels/``.

Layout::

    <root>/predictions/date=2026-12-01/<ms>-<host>-<pid>-<n>.parquet
    <root>/labels/<sha256 of the normalised outcomes>.parquet

A file is written whole (a temporary name renamed on local disk; one PUT on S3), so a reader never
sees half a file. The API hands rows to a :class:`BufferedWriter`, whose thread writes them every
``flush_seconds`` (so rows are visible within that delay) and on shutdown; a worker therefore
writes at most ``86400 / flush_seconds`` files a day, plus one per ``buffer_rows`` rows under
heavy load. Retention is by age: day partitions older than ``retention_days`` are deleted.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from churnops.monitoring.spool import Entry, Spool, entry_of

log = logging.getLogger(__name__)

PREDICTIONS = "predictions"
LABELS = "labels"
INPUT_PREFIX = "input."
# NB: the columns every prediction row has; a version's input fields follow as input.<name>.
FIXED_COLUMNS = (
    "prediction_id",
    "time",
    "served_at",
    "source",
    "model",
    "version",
    "alias",
    "role",
    "threshold",
    "probability",
    "label",
    "customer_id",
    "request_id",
)
TIMESTAMP = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class Store:
    """Where one model's predictions and outcomes live: a filesystem and a root path in it."""

    fs: pafs.FileSystem
    root: str
    uri: str

    def path(self, *parts: str) -> str:
        """A path under the root."""
        return "/".join([self.root.rstrip("/"), *parts])


def open_store(uri: str) -> Store:
    """The store at ``uri``: a local folder, or ``s3://bucket/prefix`` with the endpoint from
    AWS_ENDPOINT_URL / MLFLOW_S3_ENDPOINT_URL and keys from the usual AWS_* variables."""
    if uri.startswith("s3://"):
        parsed = urlparse(uri)
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL")
        options: dict[str, Any] = {
            "region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            # NB: a failed request fails the flush, which keeps its rows and retries later.
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=2),
            "connect_timeout": 5,
            "request_timeout": 20,
        }
        if endpoint:
            endpoint_url = urlparse(endpoint)
            options["endpoint_override"] = endpoint_url.netloc or endpoint
            options["scheme"] = endpoint_url.scheme or "https"
        fs = pafs.S3FileSystem(**options)
        return Store(fs, f"{parsed.netloc}{parsed.path}".rstrip("/"), uri)
    local = os.path.abspath(uri)
    return Store(pafs.LocalFileSystem(), local, uri)


# NB: unique per row: dictionary-encoding them is wasted work (a third of a file's write time).
_DISTINCT = frozenset({"prediction_id", "customer_id", "probability"})


def _dictionary_columns(table: pa.Table) -> list[str]:
    return [
        f.name
        for f in table.schema
        if f.name not in _DISTINCT
        and not (f.name.startswith(INPUT_PREFIX) and pa.types.is_floating(f.type))
    ]


def _parquet_options(table: pa.Table) -> dict[str, Any]:
    return {"compression": "zstd", "use_dictionary": _dictionary_columns(table)}


def _write_table(store: Store, path: str, table: pa.Table) -> None:
    options = _parquet_options(table)
    if isinstance(store.fs, pafs.LocalFileSystem):
        # NB: only on disk: on S3 a "directory" would be an empty marker object per folder.
        store.fs.create_dir(path.rpartition("/")[0], recursive=True)
        partial = f"{path}.partial"
        pq.write_table(table, partial, filesystem=store.fs, **options)
        store.fs.move(partial, path)
    else:
        pq.write_table(table, path, filesystem=store.fs, **options)


class DayFile:
    """A store file of one day's rows at a local path, written a table (row group) at a time,
    for ``place_file`` once closed."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self._writer = pq.ParquetWriter(path, schema, **_parquet_options(schema.empty_table()))
        self.rows = 0

    def takes(self, table: pa.Table, most_rows: int) -> bool:
        """Whether ``table`` may go into this file: same columns and types, and room left."""
        return table.schema == self._writer.schema and self.rows + table.num_rows <= most_rows

    def write(self, table: pa.Table) -> None:
        """Append ``table`` as a row group."""
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> None:
        """Finish the file (its footer); only then may it be placed."""
        self._writer.close()


def place_file(store: Store, day: int, local: Path) -> str:
    """Move a file ``write_local`` wrote into its day's partition (days since 1970) under a new
    name; its path in the store. A rename on the store's disk; else a copy, then the local file
    goes."""
    path = "/".join([_day_folder(store, day), _file_name(time.time())])
    if isinstance(store.fs, pafs.LocalFileSystem):
        store.fs.create_dir(path.rpartition("/")[0], recursive=True)
        try:
            os.replace(local, path)
            return path
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
    # NB: through a hidden name on disk, so a reader never sees half a file; an S3 object
    # appears whole when its upload completes.
    partial = f"{path}.partial" if isinstance(store.fs, pafs.LocalFileSystem) else path
    pafs.copy_files(
        str(local),
        partial,
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=store.fs,
    )
    if partial != path:
        store.fs.move(partial, path)
    local.unlink()
    return path


def _files(store: Store, folder: str) -> list[pafs.FileInfo]:
    selector = pafs.FileSelector(store.path(folder), allow_not_found=True, recursive=True)
    found = store.fs.get_file_info(selector)
    return [f for f in found if f.type == pafs.FileType.File and f.path.endswith(".parquet")]


def _day_of(info: pafs.FileInfo) -> date | None:
    for part in info.path.split("/"):
        if part.startswith("date="):
            with contextlib.suppress(ValueError):
                return date.fromisoformat(part[5:])
    return None


@dataclass
class Batch:
    """The rows of one request (or one scored chunk), as the serving path hands them over."""

    time: float | None
    served_at: float
    source: str
    model: str
    version: int
    alias: str
    threshold: float
    prediction_ids: list[str]
    probabilities: Sequence[float] | np.ndarray
    labels: Sequence[int] | np.ndarray
    customer_ids: list[str | None] | None
    request_id: str
    columns: dict[str, list[Any]]
    # NB: production answered the row; "canary": the challenger answered it; "shadow": the
    # challenger scored it after production answered (same prediction_id, never returned).
    role: str = "production"


def _timestamps(seconds: Sequence[float]) -> pa.Array:
    return pa.array([round(s * 1_000_000) for s in seconds], type=pa.int64()).cast(TIMESTAMP)


def to_table(batches: Sequence[Batch]) -> pa.Table:
    """Many batches as one table (batches of one version share its input columns)."""
    groups: dict[tuple[str, ...], list[Batch]] = {}
    for batch in batches:
        groups.setdefault(tuple(batch.columns), []).append(batch)
    tables = [_group_table(list(names), group) for names, group in groups.items()]
    return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]


def _group_table(names: list[str], group: list[Batch]) -> pa.Table:
    # NB: what a batch shares is built once per batch and repeated by Arrow's take(), not per
    # row in Python: this thread shares the GIL with the request path (measured: 1.5 ms per
    # 1,000-row request before, a third of it now).
    per_batch = pa.table(
        {
            "time": _timestamps([b.time if b.time is not None else b.served_at for b in group]),
            "served_at": _timestamps([b.served_at for b in group]),
            "source": pa.array([b.source for b in group], pa.string()),
            "model": pa.array([b.model for b in group], pa.string()),
            "version": pa.array([b.version for b in group], pa.int64()),
            "alias": pa.array([b.alias for b in group], pa.string()),
            "role": pa.array([b.role for b in group], pa.string()),
            "threshold": pa.array([b.threshold for b in group], pa.float64()),
            "request_id": pa.array([b.request_id for b in group], pa.string()),
        }
    )
    counts = np.fromiter((len(b.prediction_ids) for b in group), dtype=np.int64, count=len(group))
    repeated = per_batch.take(pa.array(np.repeat(np.arange(len(group)), counts)))
    ids: list[str] = []
    customers: list[str | None] = []
    inputs: dict[str, list[Any]] = {name: [] for name in names}
    for b in group:
        ids += b.prediction_ids
        customers += b.customer_ids if b.customer_ids is not None else [None] * len(b.labels)
        for name in names:
            inputs[name] += b.columns[name]
    # NB: the request path hands over the engine's numpy arrays: no Python float per row.
    probabilities = np.concatenate([np.asarray(b.probabilities, dtype=float) for b in group])
    labels = np.concatenate([np.asarray(b.labels, dtype=np.int8) for b in group])
    columns: dict[str, pa.Array | pa.ChunkedArray] = {
        "prediction_id": pa.array(ids, pa.string()),
        "time": repeated["time"],
        "served_at": repeated["served_at"],
        "source": repeated["source"],
        "model": repeated["model"],
        "version": repeated["version"],
        "alias": repeated["alias"],
        "role": repeated["role"],
        "threshold": repeated["threshold"],
        "probability": pa.array(probabilities, pa.float64()),
        "label": pa.array(labels, pa.int8()),
        "customer_id": pa.array(customers, pa.string()),
        "request_id": repeated["request_id"],
    }
    for name in names:
        columns[INPUT_PREFIX + name] = _input_array(inputs[name])
    return pa.table(columns)


@dataclass(frozen=True)
class RowsMeta:
    """What every row of one scored chunk shares."""

    time: float
    served_at: float
    source: str
    model: str
    version: int
    alias: str
    threshold: float
    request_id: str
    role: str = "production"


def rows_table(
    meta: RowsMeta,
    ids: pa.Array,
    probabilities: np.ndarray,
    labels: np.ndarray,
    customers: pa.Array,
    inputs: dict[str, pa.Array],
) -> pa.Table:
    """Prediction-store rows from arrays (batch scoring's chunks): the same columns as
    :func:`to_table` builds from the API's requests."""
    rows = len(ids)

    def same(value: Any, kind: pa.DataType) -> pa.Array:
        return pa.repeat(pa.scalar(value, kind), rows)

    columns: dict[str, pa.Array] = {
        "prediction_id": ids,
        "time": same(round(meta.time * 1_000_000), pa.int64()).cast(TIMESTAMP),
        "served_at": same(round(meta.served_at * 1_000_000), pa.int64()).cast(TIMESTAMP),
        "source": same(meta.source, pa.string()),
        "model": same(meta.model, pa.string()),
        "version": same(meta.version, pa.int64()),
        "alias": same(meta.alias, pa.string()),
        "role": same(meta.role, pa.string()),
        "threshold": same(meta.threshold, pa.float64()),
        "probability": pa.array(np.asarray(probabilities, dtype=float)),
        "label": pa.array(np.asarray(labels, dtype=np.int8)),
        "customer_id": customers,
        "request_id": same(meta.request_id, pa.string()),
    }
    for name, values in inputs.items():
        columns[INPUT_PREFIX + name] = _one_numeric_type(values)
    return pa.table(columns)


def _one_numeric_type(array: pa.Array) -> pa.Array:
    # NB: one type per column across files: JSON integers in a float field are floats.
    return array.cast(pa.float64()) if pa.types.is_integer(array.type) else array


def _input_array(values: list[Any]) -> pa.Array:
    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # NB: a column mixing kinds (never from one validated version) is kept as text.
        array = pa.array([None if v is None else str(v) for v in values], pa.string())
    return _one_numeric_type(array)


_SEQUENCE = iter(range(1, 1 << 62))
_SEQUENCE_LOCK = threading.Lock()


def _day(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d")


def _file_name(now: float) -> str:
    with _SEQUENCE_LOCK:
        n = next(_SEQUENCE)
    host = socket.gethostname().replace("/", "_")[:40]
    return f"{int(now * 1000)}-{host}-{os.getpid()}-{n}-{uuid.uuid4().hex[:8]}.parquet"


def day_partitions(table: pa.Table) -> Iterator[tuple[int, pa.Table]]:
    """The rows of each day (days since 1970, by event time), in order."""
    # NB: days as integer division of the microseconds: strftime on every row cost ~0.15 s per
    # 100,000 rows.
    days = pc.divide(table["time"].cast(pa.int64()), 86_400_000_000)
    for day in sorted(days.unique().to_pylist()):
        yield day, table.filter(pc.equal(days, day))


def write_predictions(store: Store, table: pa.Table) -> list[str]:
    """Write rows into their day partitions (by event time); return the files written."""
    if table.num_rows == 0:
        return []
    now = time.time()
    return [_write_day(store, day, rows, now) for day, rows in day_partitions(table)]


def _day_folder(store: Store, day: int) -> str:
    """The partition of one day (days since 1970)."""
    return store.path(PREDICTIONS, f"date={_day(day * 86_400.0)}")


def _write_day(store: Store, day: int, table: pa.Table, now: float, name: str | None = None) -> str:
    """Write rows of one day (days since 1970) as a file in its partition (a new name unless
    ``name`` is given); its path."""
    path = "/".join([_day_folder(store, day), name or _file_name(now)])
    _write_table(store, path, table)
    return path


def apply_retention(store: Store, retention_days: int, today: date | None = None) -> int:
    """Delete day partitions older than ``retention_days``; return how many files went."""
    today = today or datetime.now(UTC).date()
    cutoff = today - timedelta(days=retention_days)
    removed = 0
    for info in _files(store, PREDICTIONS):
        day = _day_of(info)
        if day is not None and day < cutoff:
            store.fs.delete_file(info.path)
            removed += 1
    return removed


def read_predictions(
    store: Store,
    model: str,
    since: datetime | None = None,
    until: datetime | None = None,
    columns: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    ordered: bool = True,
) -> pa.Table:
    """Every stored prediction of ``model`` with ``since <= time < until`` (in time order
    unless ``ordered`` is false), with only ``columns`` if given, and without ``skip``."""
    wanted = None if columns is None else set(columns)
    skipped = set(skip)
    tables = []
    for info in sorted(_files(store, PREDICTIONS), key=lambda f: f.path):
        day = _day_of(info)
        if day is None:
            continue
        if since is not None and day < since.astimezone(UTC).date():
            continue
        if until is not None and day > until.astimezone(UTC).date():
            continue
        with store.fs.open_input_file(info.path) as handle:
            parquet = pq.ParquetFile(handle)
            names = parquet.schema_arrow.names
            keep = [n for n in names if (wanted is None or n in wanted) and n not in skipped]
            table = parquet.read(columns=sorted(set(keep) | {"model", "time"}, key=names.index))
        # NB: filtered file by file, so memory holds the matching rows only, never every file.
        mask = pc.equal(table["model"], model)
        if since is not None:
            mask = pc.and_(mask, pc.greater_equal(table["time"], _scalar(since)))
        if until is not None:
            mask = pc.and_(mask, pc.less(table["time"], _scalar(until)))
        tables.append(table.filter(mask).select(keep))
    if not tables:
        empty = empty_predictions()
        return empty.select([c for c in empty.column_names if c not in skipped])
    table = pa.concat_tables(tables, promote_options="permissive")
    del tables
    if ordered and "time" in table.column_names:
        table = table.sort_by("time")
    pa.default_memory_pool().release_unused()
    return table


def _scalar(moment: datetime) -> pa.Scalar:
    return pa.scalar(moment.astimezone(UTC), type=TIMESTAMP)


def empty_predictions() -> pa.Table:
    """A table with the fixed columns and no rows."""
    types = {
        "time": TIMESTAMP,
        "served_at": TIMESTAMP,
        "version": pa.int64(),
        "threshold": pa.float64(),
        "probability": pa.float64(),
        "label": pa.int8(),
    }
    return pa.table({c: pa.array([], types.get(c, pa.string())) for c in FIXED_COLUMNS})


# NB: one schema for every outcome file, whatever its key: files keyed by prediction id have no
# times, and pandas once wrote that empty column as timestamp[s] (or [ms]) without a zone, which
# no concatenation with a customer-keyed file's timestamp[us, UTC] accepts.
LABELS_SCHEMA = pa.schema(
    [
        ("key_kind", pa.string()),
        ("key", pa.string()),
        ("outcome", pa.int8()),
        ("time", TIMESTAMP),
        ("added_at", TIMESTAMP),
        ("row", pa.int64()),
    ]
)


def conform_labels(table: pa.Table) -> pa.Table:
    """An outcome table in LABELS_SCHEMA: columns in order, types cast (a time without a zone
    is UTC, as churnops always wrote it); files written by earlier versions read too."""
    columns = []
    for field_ in LABELS_SCHEMA:
        if field_.name in table.column_names:
            column = table[field_.name]
            if pa.types.is_timestamp(column.type) and column.type.tz is None:
                column = column.cast(pa.timestamp(column.type.unit, tz="UTC"))
            columns.append(column.cast(field_.type))
        else:
            columns.append(pa.nulls(table.num_rows, field_.type))
    return pa.Table.from_arrays(columns, schema=LABELS_SCHEMA)


def write_labels(store: Store, name: str, table: pa.Table) -> tuple[str, bool]:
    """Write one normalised outcome file under its content name; (path, whether it is new).
    Two writers of the same content race safely: one writes it, the other is told it exists."""
    path = store.path(LABELS, f"{name}.parquet")
    if store.fs.get_file_info(path).type == pafs.FileType.File:
        return path, False
    table = conform_labels(table)
    if not isinstance(store.fs, pafs.LocalFileSystem):
        _write_table(store, path, table)
        return path, True
    store.fs.create_dir(path.rpartition("/")[0], recursive=True)
    partial = f"{path}.{uuid.uuid4().hex}.partial"
    pq.write_table(table, partial, compression="zstd")
    try:
        # NB: a hard link fails when the name exists, so exactly one racer adds the file.
        os.link(partial, path)
    except FileExistsError:
        return path, False
    finally:
        os.unlink(partial)
    return path, True


def read_labels(store: Store) -> pa.Table | None:
    """Every outcome file, concatenated; None when there are none."""
    tables = [
        conform_labels(pq.read_table(f.path, filesystem=store.fs)) for f in _files(store, LABELS)
    ]
    if not tables:
        return None
    return pa.concat_tables(tables)


# NB: how often the writer thread turns queued rows into Arrow tables: small steps, so it holds
# the GIL (which it shares with the request path) for a few milliseconds at a time, not for one
# long conversion per file (measured: ~0.2 s for 18,500 single-row requests, which showed as a
# p99 of 90 ms at one connection). It is also how often converted rows reach the spool, so it
# bounds what a killed worker can lose.
CONVERT_SECONDS = 0.25
# NB: after a failed write the next try waits this long, doubling up to the maximum: a store
# that is down is not hammered on every request, and the log gets a line per try, not per row.
RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 60.0
# NB: the event times the store can partition by: a day before 0001-01-01 or after 9999-12-31
# has no date, and the API refuses times before the epoch anyway.
_FIRST_DAY = (date(1970, 1, 1) - date(1970, 1, 1)).days
_LAST_DAY = (date(9999, 12, 31) - date(1970, 1, 1)).days


@dataclass(frozen=True)
class WriterState:
    """What a worker's store writer has done, for /model, /ready and /metrics."""

    written_rows: int
    unwritten_rows: int
    failing: bool
    dropped_rows: int
    bad_rows: int
    recovered_rows: int
    failed_writes: int
    spool_failures: int
    last_error: str | None
    retry_in_seconds: float | None

    def to_dict(self) -> dict[str, object]:
        """The state as JSON-ready data."""
        return dict(self.__dict__)


@dataclass
class _Converted:
    table: pa.Table
    spooled: Path | None


SPOOLED_SUFFIX = ".spooled.parquet"


def _groups(converted: list[_Converted]) -> list[list[_Converted]]:
    """One day's tables as the files to write: each unbroken run of this writer's spool
    numbers is one file, named after the run (so a takeover can tell exactly which entries a
    file holds); tables that are not in the spool go together in one more."""
    numbered = sorted(
        ((entry_of(c.spooled).number, c) for c in converted if c.spooled is not None),
        key=lambda pair: pair[0],
    )
    runs: list[list[_Converted]] = []
    previous = None
    for number, item in numbered:
        if previous is not None and number == previous + 1:
            runs[-1].append(item)
        else:
            runs.append([item])
        previous = number
    loose = [c for c in converted if c.spooled is None]
    return runs + ([loose] if loose else [])


def _group_name(group: list[_Converted]) -> str | None:
    """``<token>-<first>-<last>.spooled.parquet`` for a run of spool entries (the same name
    when a failed write is tried again, so a write that landed after all is overwritten);
    None for rows not in the spool."""
    if not group or group[0].spooled is None:
        return None
    first, last = entry_of(group[0].spooled), entry_of(group[-1].spooled or group[0].spooled)
    return f"{first.token}-{first.number}-{last.number}{SPOOLED_SUFFIX}"


def _stored_entries(store: Store) -> Callable[[Entry], bool]:
    """Whether a spool entry's rows are in a store file already, by the file names of its day
    (each day's folder listed once); OSError when the store cannot be listed."""
    ranges: dict[int, dict[str, list[tuple[int, int]]]] = {}

    def stored(entry: Entry) -> bool:
        if entry.day not in ranges:
            folder = _day_folder(store, entry.day)
            found: dict[str, list[tuple[int, int]]] = {}
            selector = pafs.FileSelector(folder, allow_not_found=True)
            for info in store.fs.get_file_info(selector):
                if info.base_name.endswith(SPOOLED_SUFFIX):
                    token, first, last = info.base_name[: -len(SPOOLED_SUFFIX)].rsplit("-", 2)
                    found.setdefault(token, []).append((int(first), int(last)))
            ranges[entry.day] = found
        spans = ranges[entry.day].get(entry.token, [])
        return any(first <= entry.number <= last for first, last in spans)

    return stored


# NB: what a table the store cannot take raises (a value no file can hold); anything else
# (I/O, memory, the unforeseen) is tried again later rather than thrown away.
_BAD_DATA = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, ValueError)


@dataclass
class BufferedWriter:
    """Takes rows from the request path without blocking it and writes them from two threads.

    ``add`` only appends to a list under a lock. Every CONVERT_SECONDS the converter thread
    turns what is queued into Arrow tables, one list per day, and puts them in the spool (when
    there is one); every ``flush_seconds`` (sooner once ``buffer_rows`` rows wait) the writer
    thread writes one file per day and run of spool entries;
    ``close`` writes everything left. A failed write (S3 down, a read-only disk) keeps the rows,
    is logged, and is tried again after a backoff (RETRY_SECONDS doubling to MAX_RETRY_SECONDS).
    At most ``max_rows`` rows wait in memory: beyond that a request's rows are dropped and
    counted, never memory. A row the store cannot take (a date it cannot partition by) is
    skipped and counted; the thread never stops on one.
    """

    store: Store
    flush_seconds: float
    buffer_rows: int
    retention_days: int
    max_rows: int = 1_000_000
    spool_dir: Path | None = None
    on_state: Callable[[WriterState], object] = lambda _: None
    _pending: list[Batch] = field(default_factory=list)
    _tables: dict[int, list[_Converted]] = field(default_factory=dict)
    _backlog: list[Path] = field(default_factory=list)
    _rows: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _write_lock: threading.Lock = field(default_factory=threading.Lock)
    _wake: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _writes: threading.Thread | None = None
    _write_due: threading.Event = field(default_factory=threading.Event)
    _spool: Spool | None = None
    _retry_at: float = 0.0
    _retry_wait: float = 0.0
    written_rows: int = 0
    failed_flushes: int = 0
    dropped_rows: int = 0
    bad_rows: int = 0
    recovered_rows: int = 0
    spool_failures: int = 0
    last_error: str | None = None
    failing: bool = False
    _flushing: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        """Open the spool and take over a dead writer's rows, then start the writer thread
        (and apply retention once)."""
        # NB: the first table and Parquet file import pyarrow's lazy modules (~0.3 s, holding
        # the GIL): done here, before serving, rather than in the middle of the traffic.
        sample = Batch(None, 0.0, "", "", 0, "", 0.0, ["x"], [0.0], [0], None, "", {"x": [0]})
        pq.write_table(to_table([sample]), pa.BufferOutputStream(), compression="zstd")
        if self.spool_dir is not None:
            try:
                self._spool = Spool(self.spool_dir)
                self._backlog = self._spool.claim_orphans(_stored_entries(self.store))
            except OSError as exc:
                log.warning(
                    "prediction store spool %s unusable (%s): a killed worker loses the rows "
                    "it had not written",
                    self.spool_dir,
                    exc,
                )
            self._load_backlog()
        try:
            apply_retention(self.store, self.retention_days)
        except OSError as exc:
            log.warning("prediction store retention failed: %s", exc)
        self._thread = threading.Thread(
            target=self._run, name="churnops-prediction-store", daemon=True
        )
        self._writes = threading.Thread(
            target=self._run_writes, name="churnops-prediction-store-writes", daemon=True
        )
        self._thread.start()
        self._writes.start()

    def add(self, batch: Batch) -> None:
        """Queue one request's rows (cheap: the request path calls this)."""
        rows = len(batch.prediction_ids)
        with self._lock:
            if self._rows + rows > self.max_rows:
                self.dropped_rows += rows
                return
            self._pending.append(batch)
            before, self._rows = self._rows, self._rows + rows
        # NB: once, when the buffer fills: while writes fail, the timer retries, not each request.
        if before < self.buffer_rows <= before + rows:
            self._wake.set()

    def _run(self) -> None:
        """The converter: every tick, queued rows become tables and reach the spool; when a
        write is due it asks the writer thread, so a slow write (S3 timing out) never holds
        up the spool."""
        last_write = time.monotonic()
        while not self._stop.is_set():
            woken = self._wake.wait(min(CONVERT_SECONDS, self.flush_seconds))
            self._wake.clear()
            try:
                self._convert()
                due = woken or time.monotonic() - last_write >= self.flush_seconds
                if due and time.monotonic() >= self._retry_at:
                    last_write = time.monotonic()
                    self._write_due.set()
            except Exception:
                # NB: the thread is the only keeper of this worker's rows: it must outlive any
                # one bad row or surprise, or everything after it is lost.
                log.exception("prediction store writer: unexpected error; writing continues")
            self._publish()

    def _run_writes(self) -> None:
        """The writer: writes when the converter says a write is due; retention once a day."""
        last_retention = time.monotonic()
        while not self._stop.is_set():
            if not self._write_due.wait(CONVERT_SECONDS):
                continue
            self._write_due.clear()
            try:
                self.flush()
                if time.monotonic() - last_retention > 86_400:
                    last_retention = time.monotonic()
                    with contextlib.suppress(OSError):
                        apply_retention(self.store, self.retention_days)
            except Exception:
                log.exception("prediction store writer: unexpected error; writing continues")

    def _publish(self) -> None:
        try:
            self.on_state(self.state())
        except Exception:
            log.exception("prediction store writer: could not publish its counts")

    def _convert(self) -> None:
        with self._lock:
            batches, self._pending = self._pending, []
        by_day: dict[int, list[Batch]] = {}
        for b in batches:
            moment = b.time if b.time is not None else b.served_at
            day = int(moment // 86_400) if math.isfinite(moment) else _LAST_DAY + 1
            if not _FIRST_DAY <= day <= _LAST_DAY:
                self._skip([b], f"event time {moment!r} has no date the store can keep")
                continue
            by_day.setdefault(day, []).append(b)
        for day, group in by_day.items():
            # NB: a batch has one time, so days are split per batch, not per row.
            for table in self._tables_of(group):
                spooled = self._put_in_spool(table, day)
                with self._write_lock:
                    self._tables.setdefault(day, []).append(_Converted(table, spooled))

    def _tables_of(self, group: list[Batch]) -> list[pa.Table]:
        try:
            return [to_table(group)]
        except Exception:  # noqa: BLE001
            # NB: one batch the store cannot take must not cost the others: find it.
            tables = []
            for b in group:
                try:
                    tables.append(to_table([b]))
                except Exception as exc:  # noqa: BLE001
                    self._skip([b], str(exc))
            return tables

    def _skip(self, batches: list[Batch], why: str) -> None:
        rows = sum(len(b.prediction_ids) for b in batches)
        with self._lock:
            self.bad_rows += rows
            self._rows -= rows
        log.error("prediction store: skipped %d row(s) it cannot keep: %s", rows, why[:200])

    def _put_in_spool(self, table: pa.Table, day: int) -> Path | None:
        if self._spool is None:
            return None
        try:
            return self._spool.put(table, day)
        except OSError as exc:
            self.spool_failures += 1
            if self.spool_failures == 1 or self.spool_failures % 1000 == 0:
                log.warning("prediction store spool: could not keep rows on disk: %s", exc)
            return None

    def _load_backlog(self) -> None:
        """Queue spooled rows a dead writer left, as far as memory allows."""
        while self._backlog and self.unwritten() < self.max_rows:
            path = self._backlog.pop(0)
            try:
                table = Spool.read(path)
            except (OSError, pa.ArrowException) as exc:
                log.error("prediction store spool: %s is unreadable, left in place: %s", path, exc)
                continue
            days = pc.divide(table["time"].cast(pa.int64()), 86_400_000_000)
            with self._write_lock:
                for day in days.unique().to_pylist():
                    part = table.filter(pc.equal(days, day))
                    # NB: the file is deleted once its last day is written.
                    self._tables.setdefault(day, []).append(_Converted(part, path))
            with self._lock:
                self._rows += table.num_rows
            self.recovered_rows += table.num_rows
            log.info(
                "prediction store: recovered %d rows a stopped worker had not written",
                table.num_rows,
            )

    def flush(self) -> int:
        """Write every queued row now; return how many were written."""
        with self._flushing:
            return self._flush()

    def _flush(self) -> int:
        self._convert()
        with self._write_lock:
            tables, self._tables = self._tables, {}
        rows = 0
        failed = False
        for day in sorted(tables):
            kept: list[_Converted] = []
            for group in _groups(tables[day]):
                if failed:
                    kept += group  # NB: the store failed this flush: the rest waits too
                    continue
                written, left, error = self._write(day, group)
                rows += written
                kept += left
                failed = error is not None
            if kept:
                with self._write_lock:
                    self._tables.setdefault(day, [])[:0] = kept
        with self._write_lock:
            waiting = {c.spooled for ts in self._tables.values() for c in ts}
        done = {c.spooled for ts in tables.values() for c in ts} - waiting
        Spool.discard([p for p in done if p is not None])
        with self._lock, self._write_lock:
            self._rows = self._unwritten()
            full = self._rows >= self.buffer_rows
        self.written_rows += rows
        if failed:
            self.failed_flushes += 1
            self.failing = True
            self._retry_wait = min(MAX_RETRY_SECONDS, max(RETRY_SECONDS, self._retry_wait * 2))
            self._retry_at = time.monotonic() + self._retry_wait
        else:
            self.failing = False
            self._retry_wait, self._retry_at = 0.0, 0.0
            if self._spool is not None and self._spool.claim_pending:
                self._backlog += self._spool.claim_orphans(_stored_entries(self.store))
            self._load_backlog()
            if full:
                self._write_due.set()  # NB: still at the early-write mark: write again soon
        return rows

    def _write(self, day: int, group: list[_Converted]) -> tuple[int, list[_Converted], str | None]:
        """Write one group as one file: (rows written, the tables still to write, the error
        that kept them)."""
        count = sum(c.table.num_rows for c in group)
        try:
            table = pa.concat_tables([c.table for c in group], promote_options="default")
            _write_day(self.store, day, table, time.time(), _group_name(group))
        except _BAD_DATA as exc:
            # NB: the rows' fault, not the store's: one table at a time, skipping the ones
            # that cannot be written, rather than retrying them for ever.
            if len(group) > 1:
                written = 0
                for position, one in enumerate(group):
                    done, left, error = self._write(day, [one])
                    written += done
                    if error is not None:
                        return written, left + group[position + 1 :], error
                return written, [], None
            self.bad_rows += count
            log.error("prediction store: skipped %d row(s) it cannot write: %s", count, exc)
            return 0, [], None
        except Exception as exc:  # noqa: BLE001
            # NB: OSError above all (a full or read-only disk, S3 down): kept and tried again.
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            log.warning(
                "could not write %d predictions to %s (next try in %.0f s): %s",
                count,
                self.store.uri,
                min(MAX_RETRY_SECONDS, max(RETRY_SECONDS, self._retry_wait * 2)),
                exc,
            )
            return 0, group, self.last_error
        return count, [], None

    def _unwritten(self) -> int:
        return sum(len(b.prediction_ids) for b in self._pending) + sum(
            c.table.num_rows for ts in self._tables.values() for c in ts
        )

    def unwritten(self) -> int:
        """Rows queued or converted but not yet in a file."""
        with self._lock, self._write_lock:
            return self._unwritten()

    def state(self) -> WriterState:
        """Counts for /model, /ready and /metrics (from counters: cheap while rows pile up)."""
        wait = self._retry_at - time.monotonic()
        return WriterState(
            written_rows=self.written_rows,
            unwritten_rows=self._rows,
            failing=self.failing,
            dropped_rows=self.dropped_rows,
            bad_rows=self.bad_rows,
            recovered_rows=self.recovered_rows,
            failed_writes=self.failed_flushes,
            spool_failures=self.spool_failures,
            last_error=self.last_error,
            retry_in_seconds=round(wait, 1) if wait > 0 else None,
        )

    def close(self) -> None:
        """Stop the thread and write everything still queued; what cannot be written stays in
        the spool for the next start."""
        self._stop.set()
        self._wake.set()
        for thread in (self._thread, self._writes):
            if thread is not None:
                thread.join(timeout=30)
        for attempt in range(3):
            self.flush()
            if not self.unwritten():
                break
            time.sleep(0.5 * (attempt + 1))
        left = self.unwritten()
        if left:
            with self._write_lock:
                spooled = all(c.spooled for ts in self._tables.values() for c in ts)
            kept = (
                f"they are kept in {self._spool.folder} and written when the API next starts"
                if self._spool is not None and spooled
                else "those not in the spool are lost"
            )
            log.error(
                "prediction store: %d rows could not be written at shutdown (%s); %s",
                left,
                self.last_error,
                kept,
            )
        if self._spool is not None:
            self._spool.close()
        self._publish()
