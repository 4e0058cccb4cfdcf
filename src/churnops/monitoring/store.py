"""The prediction store: every scored row kept durably as Parquet, partitioned by day, in a local
folder (default ``<data dir>/predictions``) or under ``s3://bucket/prefix`` for teams whose
replicas run on several machines. Late churn outcomes live beside the predictions, under
``labels/``.

Layout::

    <root>/predictions/date=2026-12-01/<ms>-<host>-<pid>-<n>.parquet
    <root>/labels/<sha256 of the normalised outcomes>.parquet

A file is written whole (a temporary name renamed on local disk; one PUT on S3), so a reader never
sees half a file. The API hands rows to its writer (:mod:`churnops.serving.writer`), which writes
them every ``flush_seconds`` (so rows are visible within that delay) and on shutdown; a worker
therefore writes at most ``86400 / flush_seconds`` files a day, plus one per ``buffer_rows`` rows
under heavy load; batch scoring writes its chunks here directly. Retention is by age: day
partitions older than ``retention_days`` are deleted.

`churnops store compact` (:mod:`churnops.monitoring.compaction`) merges a day's small files into
few large ones, ``<id>.compacted.parquet``, each with a record ``_compacted/<id>.json`` naming
every file whose rows it holds. A reader therefore never lists a folder itself: it calls
:func:`prediction_files`, which drops the files a visible compacted file replaces.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from churnops.config import Settings
from churnops.errors import DataError

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
# NB: the names compaction gives its files (see churnops.monitoring.compaction). No writer's name
# ends like a compacted file's, and "_" hides the records from Spark's and Hive's folder reads.
COMPACTED_SUFFIX = ".compacted.parquet"
RECORDS = "_compacted"
RECORD_SUFFIX = ".json"


@dataclass(frozen=True)
class Store:
    """Where one model's predictions and outcomes live: a filesystem and a root path in it."""

    fs: pafs.FileSystem
    root: str
    uri: str

    def path(self, *parts: str) -> str:
        """A path under the root."""
        return "/".join([self.root.rstrip("/"), *parts])


def open_store(uri: str, s3_endpoint: str | None = None, s3_region: str = "us-east-1") -> Store:
    """The store at ``uri``: a local folder, or ``s3://bucket/prefix`` at ``s3_endpoint`` (default:
    AWS's) with keys from the usual AWS_* variables, which the AWS SDK reads itself."""
    if uri.startswith("s3://"):
        parsed = urlparse(uri)
        options: dict[str, Any] = {
            "region": s3_region,
            # NB: a failed request fails the flush, which keeps its rows and retries later.
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=2),
            "connect_timeout": 5,
            "request_timeout": 20,
        }
        if s3_endpoint:
            endpoint_url = urlparse(s3_endpoint)
            options["endpoint_override"] = endpoint_url.netloc or s3_endpoint
            options["scheme"] = endpoint_url.scheme or "https"
        fs = pafs.S3FileSystem(**options)
        return Store(fs, f"{parsed.netloc}{parsed.path}".rstrip("/"), uri)
    local = os.path.abspath(uri)
    return Store(pafs.LocalFileSystem(), local, uri)


def settings_store(settings: Settings) -> Store:
    """The prediction store the settings name (CHURNOPS_PREDICTION_STORE, its S3 endpoint and
    region)."""
    return open_store(settings.store_uri, settings.s3_endpoint, settings.s3_region)


# NB: unique per row: dictionary-encoding them is wasted work (a third of a file's write time).
_DISTINCT = frozenset({"prediction_id", "customer_id", "probability"})


def _dictionary_columns(table: pa.Table) -> list[str]:
    return [
        f.name
        for f in table.schema
        if f.name not in _DISTINCT
        and not (f.name.startswith(INPUT_PREFIX) and pa.types.is_floating(f.type))
    ]


def parquet_options(table: pa.Table) -> dict[str, Any]:
    """How every store file is written: zstd, dictionaries only where values repeat."""
    return {"compression": "zstd", "use_dictionary": _dictionary_columns(table)}


def _write_table(store: Store, path: str, table: pa.Table) -> None:
    options = parquet_options(table)
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
        self._writer = pq.ParquetWriter(path, schema, **parquet_options(schema.empty_table()))
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
    path = "/".join([day_folder(store, day), file_name(time.time())])
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


@dataclass(frozen=True)
class Record:
    """What compaction wrote beside a compacted file: its name and the name of every file whose
    rows it holds (the files it merged and, for a compacted one among them, what that held)."""

    merged: str
    replaces: frozenset[str]
    rows: int

    def to_dict(self) -> dict[str, Any]:
        """The record as its JSON file holds it."""
        return {
            "format": 1,
            "merged": self.merged,
            "rows": self.rows,
            "replaces": sorted(self.replaces),
        }


def record_path(folder: str, merged: str) -> str:
    """Where the record of the compacted file ``merged`` (a name in ``folder``) lives."""
    return f"{folder}/{RECORDS}/{merged.removesuffix(COMPACTED_SUFFIX)}{RECORD_SUFFIX}"


def read_record(target: Store, path: str) -> Record | None:
    """The record at ``path``; None when there is none."""
    try:
        with target.fs.open_input_stream(path) as handle:
            document = json.loads(handle.read())
    except FileNotFoundError:
        return None
    return Record(document["merged"], frozenset(document["replaces"]), int(document["rows"]))


def readable(target: Store, folder: str, infos: Sequence[pafs.FileInfo]) -> list[pafs.FileInfo]:
    """Of the files listed in one day's ``folder``, those a reader must read: every file but
    the ones a listed compacted file replaces."""
    merged = [i for i in infos if i.base_name.endswith(COMPACTED_SUFFIX)]
    if not merged or len(infos) == 1:
        return list(infos)  # NB: nothing can be replaced: no record needs reading
    replaced: set[str] = set()
    unrecorded = []
    for info in merged:
        record = read_record(target, record_path(folder, info.base_name))
        if record is None:
            unrecorded.append(info)
        else:
            replaced |= record.replaces
    for info in unrecorded:
        # NB: a record is written before its compacted file appears and deleted after it goes,
        # so a missing one means the file went after this listing (unless it was replaced).
        if info.base_name not in replaced:
            raise DataError(
                f"prediction store: {info.path} has no record (it was compacted away while "
                "this command listed the store: run it again)"
            )
    return [i for i in infos if i.base_name not in replaced]


def prediction_files(
    target: Store, since: datetime | None = None, until: datetime | None = None
) -> list[str]:
    """The store paths of the prediction files a reader must read for ``since <= time <
    until`` (whole days: rows still need filtering by time), in path order; each stored row is
    in exactly one of them, whatever compaction is doing meanwhile."""
    first = since.astimezone(UTC).date() if since is not None else None
    last = until.astimezone(UTC).date() if until is not None else None
    folders: dict[str, list[pafs.FileInfo]] = {}
    for info in _files(target, PREDICTIONS):
        day = _day_of(info)
        if day is None or (first is not None and day < first) or (last is not None and day > last):
            continue
        folders.setdefault(info.path.rpartition("/")[0], []).append(info)
    paths = [i.path for folder, infos in folders.items() for i in readable(target, folder, infos)]
    return sorted(paths)


def records(target: Store, folder: str) -> list[Record]:
    """Every compaction record of one day's ``folder``."""
    selector = pafs.FileSelector(f"{folder}/{RECORDS}", allow_not_found=True)
    found = [
        read_record(target, info.path)
        for info in target.fs.get_file_info(selector)
        if info.type == pafs.FileType.File and info.base_name.endswith(RECORD_SUFFIX)
    ]
    return [r for r in found if r is not None]


def stored_names(target: Store, day: int) -> set[str]:
    """The name of every file whose rows are in one day's partition (days since 1970): the
    files there, and those compaction merged into them."""
    folder = day_folder(target, day)
    selector = pafs.FileSelector(folder, allow_not_found=True)
    names = {
        info.base_name
        for info in target.fs.get_file_info(selector)
        if info.type == pafs.FileType.File
    }
    for record in records(target, folder):
        names |= record.replaces
    return names


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


# NB: "-0", "-1", ... made once and grown to the largest request or chunk seen: a 1,000-row
# request's ids cost ~0.05 ms instead of ~0.3 ms, and a 100,000-row chunk's (with pa.array)
# less than building them in Arrow.
_SUFFIXES: tuple[str, ...] = tuple(f"-{i}" for i in range(1024))


def prediction_ids(rows: int) -> list[str]:
    """``<random base>-0`` ... ``-<rows-1>``: unique ids for one request's or scored chunk's
    rows (one random base per call and the row's position: unique without a uuid per row)."""
    global _SUFFIXES
    suffixes = _SUFFIXES
    if rows > len(suffixes):
        # NB: replaced whole, so a thread reading the old tuple meanwhile is unaffected.
        suffixes = _SUFFIXES = suffixes + tuple(f"-{i}" for i in range(len(suffixes), rows))
    base = os.urandom(12).hex()  # NB: 96 random bits, ~4x cheaper than uuid4().hex
    return [base + suffix for suffix in suffixes[:rows]]


_SEQUENCE = iter(range(1, 1 << 62))
_SEQUENCE_LOCK = threading.Lock()


def _day(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d")


def file_name(now: float) -> str:
    """A new prediction file's name (<ms>-<host>-<pid>-<sequence>-<random>.parquet): unique
    across processes and hosts, ordered by time, what readers and compaction expect."""
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
    return [write_day(store, day, rows, now) for day, rows in day_partitions(table)]


def day_folder(store: Store, day: int) -> str:
    """The partition of one day (days since 1970)."""
    return store.path(PREDICTIONS, f"date={_day(day * 86_400.0)}")


def write_day(store: Store, day: int, table: pa.Table, now: float, name: str | None = None) -> str:
    """Write rows of one day (days since 1970) as a file in its partition (a new name unless
    ``name`` is given); its path."""
    path = "/".join([day_folder(store, day), name or file_name(now)])
    _write_table(store, path, table)
    return path


def apply_retention(store: Store, retention_days: int, today: date | None = None) -> int:
    """Delete day partitions older than ``retention_days`` (their compaction records too);
    return how many data files went."""
    today = today or datetime.now(UTC).date()
    cutoff = today - timedelta(days=retention_days)
    selector = pafs.FileSelector(store.path(PREDICTIONS), allow_not_found=True, recursive=True)
    old = [
        info
        for info in store.fs.get_file_info(selector)
        if info.type == pafs.FileType.File
        and info.path.endswith((".parquet", RECORD_SUFFIX))
        and (day := _day_of(info)) is not None
        and day < cutoff
    ]
    # NB: the data files before the compaction records, so no reader ever finds a compacted
    # file without its record.
    old.sort(key=lambda info: info.path.endswith(RECORD_SUFFIX))
    for info in old:
        store.fs.delete_file(info.path)
    return sum(1 for info in old if info.path.endswith(".parquet"))


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
    for path in prediction_files(store, since, until):
        with store.fs.open_input_file(path) as handle:
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
