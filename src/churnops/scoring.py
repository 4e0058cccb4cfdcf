"""Batch scoring: a customer table in, one scored row per customer out, every row it cannot score
in a rejects file with the reason. Chunked, so tables larger than memory score too.

Rows are validated by the rules the API applies to requests, from the version's signature: a
numeric field must hold a number (or a missing marker when training saw missing values there);
a required field must be present. Input columns the model does not use, the target included,
are ignored. Both files are written under temporary names and renamed only when the whole table
is done, so a failure leaves no half-written output behind.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

from churnops.config import DEFAULT_CHUNK_ROWS, Settings
from churnops.data import IDENTIFIER, MISSING_MARKERS, PARQUET_SUFFIXES, writable_destination
from churnops.errors import DataError, NoProductionModelError
from churnops.inputs import MAX_TEXT_LENGTH, InputField, out_of_range, range_rule
from churnops.monitoring import store
from churnops.predict import Engine, Predictions

if TYPE_CHECKING:
    from churnops.registry import versions

# NB: the registry (and MLflow, ~2 s to import) is imported by the functions that use it, so a
# Spark worker applying validate() to its batches never loads it.

# NB: DEFAULT_CHUNK_ROWS (config) is large, because a gradient-boosting predict_proba costs ~35 ms
# per call whatever the rows (100 trees, one parallel region each): 10,000-row chunks scored at
# 0.55x the model's one-call speed here, 100,000-row chunks at 0.85-1.0x. A chunk of 100,000
# rows x 20 columns is ~30 MB.
# NB: "NA" means missing only in numeric columns; as text it is a region code (North America).
NUMERIC_MISSING = (*MISSING_MARKERS, "NA", "na")
OUTPUT_COLUMNS = ("prediction_id", "probability", "prediction", "model_version")


@dataclass(frozen=True)
class ScoreReport:
    """What one scoring run did."""

    source: str
    output: str
    rejects: str
    version: int
    id_column: str | None
    rows_read: int
    rows_scored: int
    rows_rejected: int
    seconds: float
    inference: str

    @property
    def rows_per_second(self) -> float:
        """Rows read per second of scoring (reading, validating, predicting and writing)."""
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        """The report as JSON-ready data."""
        return {**self.__dict__, "rows_per_second": round(self.rows_per_second, 1)}

    def render(self, model_name: str) -> str:
        """What was scored with which version, how fast, and where both files went."""
        return (
            f"scored {self.rows_scored} of {self.rows_read} rows of {self.source} with "
            f"{model_name} v{self.version} ({self.inference}) in "
            f"{self.seconds:.2f} s: {self.rows_per_second:,.0f} rows/s\n"
            f"output:  {self.output}\n"
            f"rejects: {self.rejects} ({self.rows_rejected} rows)"
        )


def rejects_path(output: Path) -> Path:
    """Where rows that cannot be scored go: next to the output, named after it."""
    return output.with_name(f"{output.stem}.rejects{output.suffix or '.csv'}")


def _header(source: Path) -> list[str]:
    try:
        if _is_parquet(source):
            import pyarrow.parquet as pq

            return list(pq.read_schema(source).names)
        return [str(c) for c in pd.read_csv(source, nrows=0).columns]
    except FileNotFoundError:
        raise DataError(f"input file {source} does not exist") from None
    except (
        pd.errors.ParserError,
        pd.errors.EmptyDataError,
        UnicodeDecodeError,
        OSError,
        pa.ArrowException,
    ) as exc:
        raise DataError(f"cannot read {source}: {exc}") from None


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def _chunks(
    source: Path, fields: tuple[InputField, ...], columns: list[str], chunk_rows: int
) -> Iterator[pd.DataFrame]:
    """The needed columns in chunks; numbers parsed by the C reader, text kept as text."""
    if _is_parquet(source):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(source).iter_batches(batch_size=chunk_rows, columns=columns):
            yield batch.to_pandas()
        return
    text = [f.name for f in fields if not f.numeric and f.name in columns]
    na_values = {c: list(MISSING_MARKERS) for c in columns}
    na_values |= {f.name: list(NUMERIC_MISSING) for f in fields if f.numeric and f.name in columns}
    # NB: per-column missing markers and numbers parsed natively keep clean tables on pandas' C
    # parser; only a column holding stray text falls back to the slower check in validate.
    with pd.read_csv(
        source,
        usecols=columns,
        dtype=dict.fromkeys(text, str),
        na_values=na_values,
        keep_default_na=False,
        chunksize=chunk_rows,
    ) as reader:
        # NB: a small first chunk, so predicting starts early and the rest of the reading
        # overlaps with it.
        size = max(1, chunk_rows // 20)
        while True:
            try:
                yield reader.get_chunk(size)
            except StopIteration:
                return
            size = chunk_rows


class Problems:
    """Why rows cannot be scored, kept only for the rows that have a problem.

    NB: per-row text is built for bad rows alone; building it for every row of every column
    cost ~10x the model's own predict_proba on clean tables.
    """

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self._found: dict[int, list[str]] = {}

    def add(self, mask: np.ndarray, describe: Callable[[int], str] | str) -> None:
        """Record a problem for each row in ``mask``: a fixed text or one built per row."""
        for position in np.flatnonzero(mask):
            text = describe if isinstance(describe, str) else describe(int(position))
            self._found.setdefault(int(position), []).append(text)

    def good(self) -> np.ndarray:
        ok = np.ones(self.rows, dtype=bool)
        ok[list(self._found)] = False
        return ok

    def reasons(self) -> list[str]:
        """One reason per bad row, in row order."""
        return ["; ".join(self._found[p]) for p in sorted(self._found)]


_DONE = object()


def _read_ahead(chunks: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Yield ``chunks`` while a thread produces the next ones, so reading and validating overlap
    with predicting (pandas' parser and the models' native code release the GIL).

    NB: the queue is bounded, so memory stays at ``depth`` chunks; a consumer that stops early
    sets ``stop`` and the thread exits instead of blocking forever.
    """
    ready: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                while not stop.is_set():
                    with contextlib.suppress(queue.Full):
                        ready.put(chunk, timeout=0.1)
                        break
                if stop.is_set():
                    return
            item: Any = _DONE
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises
            item = exc
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                ready.put(item, timeout=0.1)
                return

    thread = threading.Thread(target=produce, name="churnops-score-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)


def _numeric(values: pd.Series, field: InputField, problems: Problems) -> np.ndarray:
    """The column as float64, recording values that are not valid numbers for the field."""
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        markers = values.isin(NUMERIC_MISSING).to_numpy()
        numbers = pd.to_numeric(values.where(~markers), errors="coerce").to_numpy(dtype=float)
        raw = values.to_numpy()
        bad = np.isnan(numbers) & values.notna().to_numpy() & ~markers
        problems.add(bad, lambda i: f"{field.name}: {raw[i]!r} is not a number")
    else:
        numbers = values.to_numpy(dtype=float, na_value=np.nan)
    outside = out_of_range(numbers)
    problems.add(outside, lambda i: f"{field.name}: {numbers[i]} is {range_rule()}")
    if field.type in ("integer", "long") and not pd.api.types.is_integer_dtype(values):
        with np.errstate(invalid="ignore"):
            fractional = ~np.isnan(numbers) & ~outside & (numbers % 1 != 0)
        problems.add(fractional, lambda i: f"{field.name}: {numbers[i]} is not a whole number")
    return numbers


def validate(chunk: pd.DataFrame, fields: tuple[InputField, ...]) -> tuple[pd.DataFrame, Problems]:
    """Typed model columns, and the problems of every row that cannot be scored."""
    typed: dict[str, Any] = {}
    problems = Problems(len(chunk))
    for field in fields:
        if field.name not in chunk.columns:
            typed[field.name] = np.full(len(chunk), np.nan if field.numeric else None)
            continue
        values = chunk[field.name]
        if field.numeric:
            typed[field.name] = _numeric(values, field, problems)
            # NB: a marker ("?", "NA") counts as missing; text that is not a number does not.
            missing = values.isna().to_numpy()
            if not pd.api.types.is_numeric_dtype(values):
                missing = missing | values.isin(NUMERIC_MISSING).to_numpy()
        else:
            # NB: kept as read: the pipeline's encoders take missing text as NaN.
            missing = values.isna().to_numpy()
            typed[field.name] = values
            lengths = values.str.len().to_numpy(dtype=float, na_value=0)
            problems.add(
                lengths > MAX_TEXT_LENGTH,
                f"{field.name}: longer than {MAX_TEXT_LENGTH} characters",
            )
        if field.required:
            reason = f"{field.name}: missing, and training had no missing values there"
            problems.add(missing, reason)
    return pd.DataFrame(typed, index=chunk.index), problems


class _CsvOut:
    """A CSV written chunk by chunk with pyarrow (~10x faster than DataFrame.to_csv here), on a
    background thread so writing overlaps with predicting; at most one chunk is in flight."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: pa_csv.CSVWriter | None = None
        self._schema: pa.Schema | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="churnops-writer")
        self._pending: Future[None] | None = None

    def write(self, frame: pd.DataFrame | pa.Table) -> None:
        self._wait()
        self._pending = self._thread.submit(self._write, frame)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def _write(self, frame: pd.DataFrame | pa.Table) -> None:
        table = (
            frame
            if isinstance(frame, pa.Table)
            else pa.Table.from_pandas(frame, preserve_index=False)
        )
        if self._writer is None or self._schema is None:
            self._schema = table.schema
            self._writer = pa_csv.CSVWriter(str(self.path), table.schema)
        # NB: a later chunk may infer another type for a column (all-empty text, say).
        self._writer.write_table(table.cast(self._schema))

    def close(self, columns: list[str]) -> None:
        self._wait()
        self._thread.shutdown()
        if self._writer is None:
            # NB: no rows at all still gives a file with a header, so readers see the columns.
            pd.DataFrame(columns=columns).to_csv(self.path, index=False)
            return
        self._writer.close()

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self._wait()
        self._thread.shutdown()
        with contextlib.suppress(Exception):
            if self._writer is not None:
                self._writer.close()
        self.path.unlink(missing_ok=True)


def resolve_id_column(
    settings: Settings, info: versions.VersionInfo, header: list[str], wanted: str | None
) -> str | None:
    """The column copied to every output row: ``wanted`` (which the input must have), else the
    identifier column training dropped, if the input has it."""
    if wanted is not None:
        if wanted not in header:
            raise DataError(
                f"--id-column {wanted!r} is not a column of the input; columns: {', '.join(header)}"
            )
        return wanted
    from churnops.registry import loading

    report = loading.load_data_report(settings, info) or {}
    dropped = report.get("dropped_columns", {})
    found = [c for c, why in dropped.items() if why == IDENTIFIER and c in header]
    return found[0] if found else None


def check_columns(
    source: str, header: list[str], fields: tuple[InputField, ...], version: int
) -> list[str]:
    """The model's columns ``header`` has, in the fields' order; DataError naming the required
    ones it lacks."""
    absent = [f.name for f in fields if f.required and f.name not in header]
    if absent:
        raise DataError(
            f"{source} lacks columns version {version} needs: {', '.join(absent)}; "
            f"its columns are: {', '.join(header)}"
        )
    return [f.name for f in fields if f.name in header]


def resolve_version(settings: Settings, version: int | None) -> int:
    """``version`` itself, or where the alias points; a clear error when it points nowhere."""
    from churnops.registry import versions

    if version is not None:
        return versions.get_version(settings, version).version
    aliased = versions.alias_version(settings)
    if aliased is None:
        raise NoProductionModelError(
            f"{settings.model_name}@{settings.alias} is not set; promote a version with "
            "`churnops promote N` or pass --version N"
        )
    return aliased


def score_engine(
    engine: Engine,
    fields: tuple[InputField, ...],
    source: Path,
    output: Path,
    *,
    version: int,
    id_column: str | None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    on_chunk: Callable[[int], object] = lambda _: None,
    on_scored: Callable[[pa.Array, Predictions, pd.DataFrame, np.ndarray | None], object] = (
        lambda *_: None
    ),
) -> tuple[int, int, int]:
    """Score ``source`` into ``output`` and its rejects file; return rows (read, scored,
    rejected). Nothing appears under either name unless every row was handled. ``on_scored``
    gets each chunk's prediction ids, predictions, model inputs and customer ids."""
    header = _header(source)
    used = check_columns(str(source), header, fields, version)
    columns = used + ([id_column] if id_column and id_column not in used else [])
    rejects = rejects_path(output)
    partial_out, partial_rejects = temporary_name(output), temporary_name(rejects)
    for written in (output, rejects, partial_out, partial_rejects):
        refuse_overwriting(source, written)
    out_columns = ([id_column] if id_column else []) + list(OUTPUT_COLUMNS)
    reject_columns = ["row", *([id_column] if id_column else []), "reason", *used]
    scored_out, rejected_out = _CsvOut(partial_out), _CsvOut(partial_rejects)
    read = scored = rejected = 0
    try:
        chunks = _chunks(source, fields, columns, chunk_rows)
        for chunk, features, problems in _read_ahead((c, *validate(c, fields)) for c in chunks):
            # NB: "row" in the rejects file is the 1-based data row (the header is row 0).
            chunk.index = pd.RangeIndex(read + 1, read + 1 + len(chunk))
            good = problems.good()
            if good.any():
                inputs = features[good]
                result = engine.predict_frame(inputs)
                ids = pa.array(store.prediction_ids(len(result.label)), pa.string())
                # NB: built as Arrow columns, the form the CSV writer takes: through pandas,
                # 100,000 id strings cost more than scoring them.
                out: dict[str, pa.Array] = {
                    "prediction_id": ids,
                    "probability": pa.array(result.probability),
                    "prediction": pa.array(result.label),
                    "model_version": pa.repeat(pa.scalar(version, pa.int64()), len(ids)),
                }
                customers = None
                if id_column:
                    customers = as_text(chunk.loc[good, id_column])
                    out = {id_column: pa.array(customers, pa.string()), **out}
                scored_out.write(pa.table(out))
                on_scored(ids, result, inputs, customers)
            if not good.all():
                bad = chunk.loc[~good]
                rows = pd.DataFrame({"row": bad.index.to_numpy()})
                if id_column:
                    rows[id_column] = as_text(bad[id_column])
                rows["reason"] = problems.reasons()
                for name in used:
                    rows[name] = as_text(bad[name])
                rejected_out.write(rows)
            read += len(chunk)
            scored += int(good.sum())
            rejected += int((~good).sum())
            on_chunk(len(chunk))
        scored_out.close(out_columns)
        rejected_out.close(reject_columns)
    except BaseException as exc:
        scored_out.discard()
        rejected_out.discard()
        if isinstance(exc, pd.errors.ParserError | UnicodeDecodeError | pa.ArrowException):
            raise DataError(f"cannot read {source}: {exc}") from None
        raise
    partial_out.replace(output)
    partial_rejects.replace(rejects)
    return read, scored, rejected


def temporary_name(path: Path, kind: str = "partial") -> Path:
    """A hidden name beside ``path`` that no other run (and no input) has: ``.<name>.<random>.
    <kind>``."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.{kind}")


def refuse_overwriting(source: Path, written: Path) -> None:
    """A DataError when writing ``written`` would replace the input ``source``."""
    same = source.resolve() == written.resolve()
    if not same and written.exists():
        with contextlib.suppress(OSError):
            same = os.path.samefile(source, written)
    if same:
        raise DataError(f"{written} would overwrite the input {source}; choose another output path")


class StoreStage:
    """Scored chunks' prediction-store rows, written as the store's own Parquet files (one day
    each, a row group per chunk) into a hidden folder beside the output on a background thread,
    so memory holds a chunk, never the run; moved into the store only once the outputs exist (a
    failed run leaves no rows whose ids nobody has).

    NB: the files are final: publishing renames them into the store's partitions (or uploads
    them to S3) without reading them again. Re-encoding staged files at the end cost more than
    scoring (0.5-1.2 s per 200,000 rows)."""

    # NB: store files of about this many rows: few files for the monitor to open.
    FILE_ROWS = 1_000_000

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._done: list[tuple[int, Path]] = []
        self._open: dict[int, tuple[store.DayFile, Path]] = {}
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="churnops-stage")
        self._pending: Future[None] | None = None

    def add(self, table: pa.Table) -> None:
        # NB: at most one chunk in flight: its Parquet encoding overlaps the next chunk's scoring.
        self._wait()
        self._pending = self._thread.submit(self._write, table)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def _write(self, table: pa.Table) -> None:
        self.folder.mkdir(exist_ok=True)
        for day, rows in store.day_partitions(table):
            current = self._open.get(day)
            if current is not None and not current[0].takes(rows, self.FILE_ROWS):
                self._close(day)
                current = None
            if current is None:
                path = self.folder / f"{len(self._done) + len(self._open):08d}.parquet"
                current = self._open[day] = (store.DayFile(path, rows.schema), path)
            current[0].write(rows)

    def _close(self, day: int) -> None:
        writer, path = self._open.pop(day)
        writer.close()
        self._done.append((day, path))

    def publish(self, target: store.Store) -> None:
        self._wait()
        self._thread.shutdown()
        for day in list(self._open):
            self._close(day)
        for day, path in self._done:
            store.place_file(target, day, path)

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self._wait()
        self._thread.shutdown()
        for writer, _ in self._open.values():
            with contextlib.suppress(Exception):
                writer.close()
        shutil.rmtree(self.folder, ignore_errors=True)


# NB: a spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def as_text(values: pd.Series) -> np.ndarray:
    """Values as they would be written back, with an empty string for a missing one; text that
    a spreadsheet would run as a formula is prefixed with an apostrophe."""
    if pd.api.types.is_float_dtype(values):
        # NB: a column with a blank is read as floats; 137 is written back as 137, not 137.0.
        whole = values.notna() & (values % 1 == 0) & (values.abs() < 2**53)
        text = values.astype(str).where(~whole, values.where(whole, 0).astype("int64").astype(str))
        text = text.where(values.notna(), "")
    else:
        text = values.astype(str).where(values.notna(), "")
    if not pd.api.types.is_numeric_dtype(values):
        text = text.where(~text.str.startswith(FORMULA_STARTS), "'" + text)
    return text.to_numpy()


def count_rows(source: Path) -> int | None:
    """Data rows in a CSV (lines after the header), for a progress bar; None for Parquet."""
    if _is_parquet(source):
        with contextlib.suppress(Exception):
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(source).metadata.num_rows)
        return None
    lines, last = 0, b"\n"
    with source.open("rb") as handle:
        while block := handle.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    return max(0, lines + (last != b"\n") - 1)


def score_file(
    settings: Settings,
    source: Path,
    output: Path,
    *,
    version: int | None = None,
    id_column: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    on_chunk: Callable[[int], object] = lambda _: None,
    event_time: float | None = None,
) -> ScoreReport:
    """Score a customer table with a version (default: the one the alias points at); every
    scored row also goes to the prediction store, dated ``event_time`` (default: now)."""
    for written in (output, rejects_path(output)):
        refuse_overwriting(source, written)
    if output.suffix.lower() in PARQUET_SUFFIXES:
        raise DataError(
            f"churnops score writes CSV; name the output e.g. {output.with_suffix('.csv')}"
        )
    writable_destination(output)
    from churnops.registry import connection, loading, versions

    connection.ping(settings)
    number = resolve_version(settings, version)
    info = versions.get_version(settings, number)
    loaded = loading.load_version(settings, number, threads=os.cpu_count() or 1)
    ident = resolve_id_column(settings, info, _header(source), id_column)
    started = time.perf_counter()
    stage = StoreStage(temporary_name(output, "store"))
    refuse_overwriting(source, stage.folder)

    def keep(
        ids: pa.Array, result: Predictions, inputs: pd.DataFrame, customers: np.ndarray | None
    ) -> None:
        if settings.store_predictions:
            alias = settings.alias if version is None else ""
            rows = _Scored(ids, result, inputs, customers)
            stage.add(
                _stored_rows(settings, number, alias, loaded.engine.threshold, rows, event_time)
            )

    try:
        read, scored, rejected = score_engine(
            loaded.engine,
            loaded.inputs,
            source,
            output,
            version=number,
            id_column=ident,
            chunk_rows=chunk_rows,
            on_chunk=on_chunk,
            on_scored=keep,
        )
        stage.publish(store.settings_store(settings))
    finally:
        stage.discard()
    return ScoreReport(
        source=str(source),
        output=str(output),
        rejects=str(rejects_path(output)),
        version=number,
        id_column=ident,
        rows_read=read,
        rows_scored=scored,
        rows_rejected=rejected,
        seconds=time.perf_counter() - started,
        inference=loaded.engine.kind,
    )


@dataclass(frozen=True)
class _Scored:
    ids: pa.Array
    result: Predictions
    inputs: pd.DataFrame
    customers: np.ndarray | None


def _stored_rows(
    settings: Settings,
    version: int,
    alias: str,
    threshold: float,
    scored: _Scored,
    event_time: float | None,
) -> pa.Table:
    """One scored chunk as prediction-store rows, built column by column from the arrays.

    NB: not through store.Batch's Python lists: for 100,000-row chunks that path cost more
    than scoring itself (measured: `score` at 0.21x the model's own speed, from 0.8x).
    """
    now = time.time()
    rows = len(scored.ids)
    customers = (
        pa.nulls(rows, pa.string())
        if scored.customers is None
        else pa.array([c or None for c in scored.customers.tolist()], pa.string())
    )
    return store.rows_table(
        store.RowsMeta(
            time=now if event_time is None else event_time,
            served_at=now,
            source="batch",
            model=settings.model_name,
            version=version,
            alias=alias,
            threshold=threshold,
            request_id=str(scored.ids[0]).rpartition("-")[0],
        ),
        scored.ids,
        scored.result.probability,
        scored.result.label,
        customers,
        {str(c): pa.Array.from_pandas(scored.inputs[c]) for c in scored.inputs.columns},
    )
