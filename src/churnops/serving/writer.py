"""The store's writer in the API: takes each answered request's rows off the request path without
blocking it, turns them into Arrow tables on a converter thread, keeps them in the worker's spool
(see :mod:`churnops.serving.spool`) and writes them to the prediction store
(:mod:`churnops.monitoring.store`, which owns the files' layout and schema) from a writer thread.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from churnops.monitoring.store import Batch, Store, apply_retention, to_table, write_day
from churnops.serving.spool import Converted, Spool, run_name, runs, stored_entries

log = logging.getLogger(__name__)

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
    _tables: dict[int, list[Converted]] = field(default_factory=dict)
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
                self._backlog = self._spool.claim_orphans(stored_entries(self.store))
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
                    self._tables.setdefault(day, []).append(Converted(table, spooled))

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
                    self._tables.setdefault(day, []).append(Converted(part, path))
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
            kept: list[Converted] = []
            for group in runs(tables[day]):
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
                self._backlog += self._spool.claim_orphans(stored_entries(self.store))
            self._load_backlog()
            if full:
                self._write_due.set()  # NB: still at the early-write mark: write again soon
        return rows

    def _write(self, day: int, group: list[Converted]) -> tuple[int, list[Converted], str | None]:
        """Write one group as one file: (rows written, the tables still to write, the error
        that kept them)."""
        count = sum(c.table.num_rows for c in group)
        try:
            table = pa.concat_tables([c.table for c in group], promote_options="default")
            write_day(self.store, day, table, time.time(), run_name(group))
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
