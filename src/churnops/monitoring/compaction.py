"""Compaction of the prediction store: each day partition's many small files (a worker writes one
per flush, up to 8,640 a day) merged into few large ones, sorted by time, that query engines read
well, while the API keeps writing and monitors keep reading, never losing or doubling a row.

The protocol. Writers only ever add files under new names, so a run works on a snapshot of a
day's files. For each merged file it

1. writes a record, ``date=D/_compacted/<id>.json``, naming every file whose rows the merged
   file will hold (the files it merges and, for an earlier compacted file among them, every
   file that one held: the record is complete on its own);
2. writes the merged file, ``date=D/<id>.compacted.parquet``: on disk under a hidden name
   (``.partial``) renamed when whole, on S3 one upload that appears whole when it completes
   (S3 has no rename; the record already exists when the object appears);
3. once the merged file has been visible for ``grace_seconds`` (measured from its modification
   time, on this run or a later one), deletes the files its record names.

Readers list through :func:`churnops.monitoring.store.prediction_files`: for each compacted file
they list they read its record and drop every file it names. A reader listing between steps 2
and 3 therefore reads each row once (the merged file, not its sources); one listing before step
2 reads the sources, which stay for ``grace_seconds`` so that it can finish. A crash leaves one
of these states, and the next run finishes it: a record without its merged file (readers never
read it; the next run deletes it and any ``.partial``, on S3 once it is ``grace_seconds`` old,
and merges the sources again), a merged file beside its sources (readers read the merged file
only; the next run deletes the sources), some sources deleted (the same). Records stay until
retention deletes their day, after its data files: a spool takeover
(:mod:`churnops.serving.spool`) reads them to know which spooled files are already stored. A
record costs ~60 bytes per file it names.

Two runs at once never merge the same file twice. On a local store a lock file keeps a second
run out (it is refused; the kernel releases the lock when a run dies). S3 has no lock, so between
steps 1 and 2 a run lists the day's records and steps back (deleting its record) when another
record names a file it merges, or when its own record is gone: each run writes before it
looks, so of two overlapping runs at least one sees the other. A record without its merged file
counts as a dead run's, and is deleted, only once it is ``grace_seconds`` old (at once on a
local store, under the lock), so ``grace_seconds`` must also exceed the time a run takes
between its record and its merged file (seconds). Schedule it from one place all the same (the
Kubernetes CronJob has ``concurrencyPolicy: Forbid``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from churnops.errors import StoreBusyError
from churnops.monitoring import store
from churnops.monitoring.store import COMPACTED_SUFFIX, RECORD_SUFFIX, RECORDS, Store

log = logging.getLogger(__name__)

# NB: Arrow memory of the rows one merged file takes, read at once and written sorted a row group
# at a time: a run's memory is bounded by this, not by the day. Stored rows take ~200 bytes in
# Arrow and ~15-40 on disk, so a merged file holds ~1.3M rows and 20-50 MB: large enough that
# per-file costs (a listing entry, a footer, an S3 request) vanish, small enough for a 1 GiB job
# (measured: 2,000 files of 1,000 rows compacted at a peak of 660 MiB RSS, the process included).
MERGE_ARROW_BYTES = 256 * 1024 * 1024
# NB: 2^18 rows: above DuckDB's own 122,880-row groups, so an engine parallelises and prunes by
# time per group without a group's overhead (its footer entry, its statistics) showing.
ROW_GROUP_ROWS = 262_144
# NB: a file this big is left alone: an engine reads it as well as a merged one (Spark splits at
# 128 MB, DuckDB per row group), and merging it again would rewrite it on every run.
LARGE_FILE_BYTES = 32 * 1024 * 1024
PARTIAL = ".partial"
LOCK = "_compaction.lock"
# NB: reads and deletes of small files are I/O-bound (an S3 request each): in parallel.
IO_THREADS = 8


@dataclass(frozen=True)
class DayReport:
    """What a run did to one day partition (files and bytes: those a reader reads)."""

    day: str
    files_before: int
    files_after: int
    rows: int
    bytes_before: int
    bytes_after: int
    merged: int

    def to_dict(self) -> dict[str, Any]:
        """The day's numbers as JSON-ready data."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class CompactionReport:
    """What one `churnops store compact` run did."""

    store: str
    days: list[DayReport]
    deleted: int
    waiting: int
    grace_seconds: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {
            "store": self.store,
            "days": [d.to_dict() for d in self.days],
            "files_before": sum(d.files_before for d in self.days),
            "files_after": sum(d.files_after for d in self.days),
            "rows": sum(d.rows for d in self.days),
            "bytes_before": sum(d.bytes_before for d in self.days),
            "bytes_after": sum(d.bytes_after for d in self.days),
            "deleted": self.deleted,
            "waiting": self.waiting,
            "grace_seconds": self.grace_seconds,
            "seconds": round(self.seconds, 3),
        }

    def render(self) -> str:
        """The report as text."""
        totals = self.to_dict()
        lines = [
            f"{d.day}: {d.files_before} -> {d.files_after} files, {d.rows} rows merged into "
            f"{d.merged} file(s), {_mib(d.bytes_before)} -> {_mib(d.bytes_after)}"
            for d in self.days
        ]
        if not self.days:
            lines.append("no day to compact")
        lines.append(
            f"{len(self.days)} day(s): {totals['files_before']} -> {totals['files_after']} files "
            f"in {self.seconds:.1f} s; {self.deleted} replaced file(s) deleted"
            + (
                f", {self.waiting} wait {self.grace_seconds:g} s for readers (a later run "
                "deletes them)"
                if self.waiting
                else ""
            )
        )
        return "\n".join(lines)


def _mib(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MiB"


Observer = Callable[[str], None]


@dataclass
class _Day:
    """One day folder as a run lists it."""

    folder: str
    day: date
    data: list[pafs.FileInfo] = field(default_factory=list)
    records: list[pafs.FileInfo] = field(default_factory=list)
    partials: list[pafs.FileInfo] = field(default_factory=list)


def compact(
    target: Store,
    days: Sequence[date] | None = None,
    before: date | None = None,
    grace_seconds: float = 900.0,
    observe: Observer | None = None,
) -> CompactionReport:
    """Compact the day partitions ``days`` (default: every day before ``before``, itself
    default today, UTC), then delete the files merged files replaced ``grace_seconds`` ago or
    more, in any day. ``observe`` is called with each step's name as it completes ("record",
    "partial", "merged", "deleted"): tests read the store or stop there."""
    started = time.monotonic()
    step = observe or (lambda _: None)
    with _exclusive(target):
        listed = _list(target)
        _clean_up(target, listed, grace_seconds)
        if days is not None:
            chosen = set(days)
            selected = [d for d in listed.values() if d.day in chosen]
        else:
            cutoff = before or datetime.now(UTC).date()
            selected = [d for d in listed.values() if d.day < cutoff]
        compacted = [_compact_day(target, d, step) for d in sorted(selected, key=lambda d: d.day)]
        deleted, waiting = _delete_replaced(target, _list(target), grace_seconds, step)
        after = _list(target) if compacted else {}
        reports = [_with_after(target, folder, r, after) for folder, r in compacted]
    return CompactionReport(
        target.uri,
        [r for r in reports if r.merged or r.files_before != r.files_after],
        deleted,
        waiting,
        grace_seconds,
        time.monotonic() - started,
    )


@contextlib.contextmanager
def _exclusive(target: Store) -> Iterator[None]:
    """Hold the store's compaction lock (local stores; see the module docstring for S3)."""
    if not isinstance(target.fs, pafs.LocalFileSystem):
        yield
        return
    folder = target.path(store.PREDICTIONS)
    target.fs.create_dir(folder, recursive=True)
    handle = os.open(f"{folder}/{LOCK}", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreBusyError(
                f"another `churnops store compact` is running on {target.uri}; run this one "
                "when it has finished"
            ) from None
        yield
    finally:
        os.close(handle)


def _list(target: Store) -> dict[str, _Day]:
    """Every day folder's data files, records and compaction leftovers, in one listing."""
    selector = pafs.FileSelector(
        target.path(store.PREDICTIONS), allow_not_found=True, recursive=True
    )
    days: dict[str, _Day] = {}
    for info in target.fs.get_file_info(selector):
        if info.type != pafs.FileType.File:
            continue
        folder, _, name = info.path.rpartition("/")
        in_records = folder.endswith(f"/{RECORDS}")
        folder = folder.removesuffix(f"/{RECORDS}") if in_records else folder
        part = folder.rpartition("/")[2]
        if not part.startswith("date="):
            continue
        try:
            day = date.fromisoformat(part[5:])
        except ValueError:
            continue
        entry = days.setdefault(folder, _Day(folder, day))
        if in_records and name.endswith(RECORD_SUFFIX):
            entry.records.append(info)
        elif (in_records and name.endswith(PARTIAL)) or name.endswith(COMPACTED_SUFFIX + PARTIAL):
            entry.partials.append(info)
        elif not in_records and name.endswith(".parquet"):
            entry.data.append(info)
    return days


def _clean_up(target: Store, listed: dict[str, _Day], grace_seconds: float) -> None:
    """Finish what a crashed run left: records whose merged file never appeared (or was itself
    merged and deleted since: a later record names what it held) and half-written files. On S3,
    where no lock keeps another run out, only records older than ``grace_seconds``: a younger
    one may be a live run's, about to upload its merged file."""
    locked = isinstance(target.fs, pafs.LocalFileSystem)
    now_ns = time.time_ns()
    for day in listed.values():
        present = {i.base_name for i in day.data}
        for info in day.records:
            merged = info.base_name.removesuffix(RECORD_SUFFIX) + COMPACTED_SUFFIX
            age = (now_ns - (info.mtime_ns or now_ns)) / 1e9
            if merged not in present and (locked or age >= grace_seconds):
                _delete(target, info.path)
        for info in day.partials:
            _delete(target, info.path)


def _delete(target: Store, path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        target.fs.delete_file(path)


def _compact_day(target: Store, day: _Day, step: Observer) -> tuple[str, DayReport]:
    """Merge one day's small files (see the module docstring); its folder and report."""
    readable = store.readable(target, day.folder, day.data)
    records = {
        i.base_name: store.read_record(target, store.record_path(day.folder, i.base_name))
        for i in readable
        if i.base_name.endswith(COMPACTED_SUFFIX)
    }
    small = sorted(
        (i for i in readable if (i.size or 0) < LARGE_FILE_BYTES),
        key=lambda i: (i.mtime_ns or 0, i.path),
    )
    rows = merged = 0
    if len(small) > 1:
        for group in _merge_groups(target, small):
            replaces = set()
            for info, _ in group:
                replaces.add(info.base_name)
                record = records.get(info.base_name)
                if record is not None:
                    replaces |= record.replaces
            table = pa.concat_tables([t for _, t in group], promote_options="permissive")
            if _write_merged(target, day.folder, table, replaces, step) is not None:
                rows += table.num_rows
                merged += 1
            del table, group
            pa.default_memory_pool().release_unused()
    size = sum(i.size or 0 for i in readable)
    report = DayReport(day.day.isoformat(), len(readable), len(readable), rows, size, size, merged)
    return day.folder, report


def _merge_groups(
    target: Store, files: list[pafs.FileInfo]
) -> Iterator[list[tuple[pafs.FileInfo, pa.Table]]]:
    """The files, read a few at a time in parallel, as groups to merge: each at most about
    MERGE_ARROW_BYTES, of files whose columns can share one schema, two files or more."""
    groups: list[tuple[pa.Schema, list[tuple[pafs.FileInfo, pa.Table]]]] = []
    held = 0
    with ThreadPoolExecutor(IO_THREADS) as pool:
        for start in range(0, len(files), IO_THREADS * 4):
            chunk = files[start : start + IO_THREADS * 4]
            for info, table in zip(chunk, pool.map(lambda i: _read(target, i), chunk), strict=True):
                if table is None:
                    continue
                _place(groups, info, table)
                held += table.nbytes
            if held >= MERGE_ARROW_BYTES:
                yield from (members for _, members in groups if len(members) > 1)
                groups, held = [], 0
    yield from (members for _, members in groups if len(members) > 1)


def _read(target: Store, info: pafs.FileInfo) -> pa.Table | None:
    try:
        with target.fs.open_input_file(info.path) as handle:
            return pq.read_table(handle)
    except FileNotFoundError:
        # NB: retention deleted it meanwhile (a day past the limit): nothing to merge.
        log.info("prediction store: %s went while compacting; skipped", info.path)
        return None


def _place(
    groups: list[tuple[pa.Schema, list[tuple[pafs.FileInfo, pa.Table]]]],
    info: pafs.FileInfo,
    table: pa.Table,
) -> None:
    """Put a file in the first group whose schema its columns can join (a column all null in
    one flush joins the same column typed in another), else in a group of its own."""
    for position, (schema, members) in enumerate(groups):
        try:
            unified = pa.unify_schemas([schema, table.schema], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            continue
        groups[position] = (unified, [*members, (info, table)])
        return
    groups.append((table.schema, [(info, table)]))


def _write_merged(
    target: Store, folder: str, table: pa.Table, replaces: set[str], step: Observer
) -> str | None:
    """Steps 1 and 2 of the protocol for one merged file (``table``'s rows sorted by time);
    its path, or None when another run merges some of the same files."""
    name = f"{int(time.time() * 1000)}-{uuid.uuid4().hex[:12]}{COMPACTED_SUFFIX}"
    record = store.Record(name, frozenset(replaces), table.num_rows)
    _write_record(target, store.record_path(folder, name), record)
    step("record")
    if not _alone(target, folder, name, replaces):
        _delete(target, store.record_path(folder, name))
        log.warning("prediction store: another compaction merges files of %s; left to it", folder)
        return None
    path = f"{folder}/{name}"
    if isinstance(target.fs, pafs.LocalFileSystem):
        _write_sorted(target, path + PARTIAL, table)
        step("partial")
        target.fs.move(path + PARTIAL, path)
    else:
        _write_sorted(target, path, table)
    step("merged")
    log.info("prediction store: %d files merged into %s", len(replaces), path)
    return path


def _alone(target: Store, folder: str, name: str, replaces: set[str]) -> bool:
    """Whether the merged file ``name`` may appear: its record is still there and no other
    record names any file it holds (but records of the compacted files it merges). Each run
    writes its record before it looks, so of two runs merging the same file at least one sees
    the other's record and steps back (S3 lists what was written before, strongly)."""
    found = store.records(target, folder)
    if not any(r.merged == name for r in found):
        return False  # NB: taken for a dead run's and deleted: step back too
    return not any(
        r.merged != name and r.merged not in replaces and r.replaces & replaces for r in found
    )


def _write_sorted(target: Store, path: str, table: pa.Table) -> None:
    """Write ``table`` sorted by time (a stable sort), one row group at a time: the sorted copy
    is made a group at a time, so memory holds the rows once, not twice."""
    order = pc.sort_indices(table, sort_keys=[("time", "ascending")])
    options = store.parquet_options(table)
    with pq.ParquetWriter(path, table.schema, filesystem=target.fs, **options) as writer:
        for start in range(0, table.num_rows, ROW_GROUP_ROWS):
            writer.write_table(table.take(order.slice(start, ROW_GROUP_ROWS)))


def _write_record(target: Store, path: str, record: store.Record) -> None:
    body = json.dumps(record.to_dict()).encode()
    if isinstance(target.fs, pafs.LocalFileSystem):
        target.fs.create_dir(path.rpartition("/")[0], recursive=True)
        # NB: renamed when whole: a spool takeover reads every record, and must not find half.
        with target.fs.open_output_stream(path + PARTIAL) as out:
            out.write(body)
        target.fs.move(path + PARTIAL, path)
    else:
        with target.fs.open_output_stream(path) as out:
            out.write(body)


def _delete_replaced(
    target: Store, listed: dict[str, _Day], grace_seconds: float, step: Observer
) -> tuple[int, int]:
    """Step 3 for every day: delete the files each merged file replaces once it has been
    visible ``grace_seconds``; (files deleted, files still waiting)."""
    now_ns = time.time_ns()
    deleted = waiting = 0
    for day in listed.values():
        merged = [i for i in day.data if i.base_name.endswith(COMPACTED_SUFFIX)]
        if not merged or len(day.data) == 1:
            continue
        by_name = {i.base_name: i for i in day.data}
        doomed: list[str] = []
        for info in merged:
            record = store.read_record(target, store.record_path(day.folder, info.base_name))
            if record is None:
                continue
            present = [by_name[n].path for n in record.replaces if n in by_name]
            # NB: an unknown modification time counts as now: the files wait another run.
            visible_for = (now_ns - (info.mtime_ns or now_ns)) / 1e9
            if visible_for < grace_seconds:
                waiting += len(present)
            else:
                doomed += present
        with ThreadPoolExecutor(IO_THREADS) as pool:
            for _ in pool.map(lambda path: _delete_one(target, path, step), sorted(set(doomed))):
                deleted += 1
    return deleted, waiting


def _delete_one(target: Store, path: str, step: Observer) -> None:
    _delete(target, path)
    step("deleted")


def _with_after(
    target: Store, folder: str, report: DayReport, listed: dict[str, _Day]
) -> DayReport:
    """The day's report with what a reader reads now."""
    day = listed.get(folder)
    readable = store.readable(target, folder, day.data) if day is not None else []
    return DayReport(
        report.day,
        report.files_before,
        len(readable),
        report.rows,
        report.bytes_before,
        sum(i.size or 0 for i in readable),
        report.merged,
    )
