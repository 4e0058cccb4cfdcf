"""Batch scoring on Spark (`churnops score --engine spark INPUT OUTPUT`): a Parquet or CSV
dataset wherever Spark reads (a local folder or file, hdfs://, s3a://) scored by a version with
the same rule book as the single-machine `score` (:mod:`churnops.scoring`), in Arrow batches on
Spark's Python workers.

Layout of OUTPUT (a folder)::

    OUTPUT/predictions/   Parquet: [id column], prediction_id, probability, prediction,
                          model_version; one row per scored input row
    OUTPUT/rejects/       Parquet: [id column], reason, file, row, the model's columns as text;
                          one row per input row that cannot be scored

Every worker builds the version's engine once (the ONNX graph, or the skops file checked
against churnops's allow-list, shipped in a broadcast), never a registry download per task.
Nothing is half-written: the datasets are written under ``OUTPUT/.churnops-<run>/`` (each with
Spark's committer and its ``_SUCCESS``) and renamed into place only when both are complete;
the prediction-store rows are staged beside the store and moved into its day partition only
after that, as single-machine `score` does. Rows that cannot be scored cost a second pass over
the input, and only when the first pass counted any.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from churnops import scoring
from churnops.config import Settings
from churnops.data import MISSING_MARKERS, PARQUET_SUFFIXES
from churnops.errors import ChurnopsError, DataError, EngineError
from churnops.inputs import InputField
from churnops.monitoring import store
from churnops.predict import Engine

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from churnops.registry import loading

log = logging.getLogger(__name__)

PREDICTIONS = "predictions"
REJECTS = "rejects"
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".tsv")
# NB: the input columns the rejects pass adds: where a rejected row came from.
_FILE, _ROW = "__churnops_file", "__churnops_row"


@dataclass(frozen=True)
class ModelPayload:
    """What a Spark worker needs to build a version's engine: the ONNX graph, or the skops file
    with the types the driver checked it needs; small and picklable, shipped once per worker."""

    kind: str
    data: bytes
    threshold: float
    trusted: tuple[str, ...] = ()

    @cached_property
    def digest(self) -> str:
        """Identifies the payload in a worker's engine cache."""
        return hashlib.sha256(self.data).hexdigest() + f"/{self.kind}/{self.threshold!r}"

    def build(self) -> Engine:
        """The engine, as the single-machine path builds it (one ONNX thread per worker)."""
        if self.kind == "onnx":
            from churnops.compiled import OnnxEngine

            return OnnxEngine(self.data, self.threshold, threads=1)
        import skops.io

        from churnops.predict import SklearnEngine

        return SklearnEngine(skops.io.loads(self.data, trusted=list(self.trusted)))


# NB: per Python worker process, which Spark reuses across tasks: the engine is built once per
# worker, not per task or batch.
_ENGINES: dict[str, Engine] = {}


def worker_engine(payload: ModelPayload) -> Engine:
    """The payload's engine, built on this worker's first call."""
    engine = _ENGINES.get(payload.digest)
    if engine is None:
        engine = _ENGINES[payload.digest] = payload.build()
    return engine


def model_payload(loaded: loading.LoadedModel, local: Path) -> ModelPayload:
    """The payload of a version loaded from ``local`` (its downloaded files)."""
    from churnops import safety

    engine: Any = loaded.engine
    if engine.kind == "onnx":
        return ModelPayload("onnx", bytes(engine.onnx), float(engine.threshold))
    path = safety.skops_file(local, loaded.version)
    trusted = tuple(safety.check_types(path, loaded.version))
    return ModelPayload("sklearn", path.read_bytes(), float(engine.threshold), trusted)


# NB: "-0", "-1", ... as one Arrow array per worker, grown to the largest batch: ids built in
# Arrow cost ~1 ms per 100,000 rows, against ~20 ms for store.prediction_ids' Python strings.
_SUFFIXES = pa.array([], pa.string())


def prediction_ids(rows: int) -> tuple[str, pa.Array]:
    """(random base, ``<base>-0`` ... ``<base>-<rows-1>``): the store's id form, built in
    Arrow."""
    global _SUFFIXES
    if rows > len(_SUFFIXES):
        _SUFFIXES = pa.array([f"-{i}" for i in range(rows)], pa.string())
    base = os.urandom(12).hex()
    return base, pc.binary_join_element_wise(base, _SUFFIXES[:rows], "")


_FORMULA_STARTS = pa.array(scoring.FORMULA_STARTS, pa.string())


def customer_text(
    column: pa.Array, values: pd.Series, good: np.ndarray, csv: bool = False
) -> pa.Array:
    """The scored rows' ids as scoring.as_text writes them ("" when missing, a formula
    neutralised), in Arrow when the column is text (as_text's pandas path cost ~25 ms per
    100,000 rows); from CSV, a missing marker is missing."""
    if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
        return pa.array(scoring.as_text(values[good]), pa.string())
    text = column.filter(pa.array(good)).cast(pa.string())
    if csv:
        markers = pc.is_in(text, pa.array(MISSING_MARKERS, pa.string()))
        text = pc.if_else(markers, pa.scalar(None, pa.string()), text)
    formula = pc.is_in(pc.utf8_slice_codeunits(text, 0, 1), value_set=_FORMULA_STARTS)
    quoted = pc.binary_join_element_wise("'", text, "")
    return pc.if_else(formula, quoted, text).fill_null("")


@dataclass(frozen=True)
class RuleBook:
    """The single-machine `score`'s rules, applied to Arrow batches on Spark's workers."""

    fields: tuple[InputField, ...]
    used: tuple[str, ...]
    id_column: str | None
    csv: bool
    meta: store.RowsMeta
    store_rows: bool

    def _input_type(self, field: InputField) -> pa.DataType:
        return pa.float64() if field.numeric else pa.string()

    @cached_property
    def scored_schema(self) -> pa.Schema:
        """What the scoring pass writes: prediction-store rows, or (without a store) the
        predictions dataset's rows."""
        if not self.store_rows:
            return self.predictions_schema
        inputs = {f.name: pa.array([], self._input_type(f)) for f in self.fields}
        empty = store.rows_table(
            self.meta,
            pa.array([], pa.string()),
            np.array([], float),
            np.array([], int),
            pa.array([], pa.string()),
            inputs,
        )
        return empty.schema

    @cached_property
    def predictions_schema(self) -> pa.Schema:
        """OUTPUT/predictions: the single-machine output file's columns."""
        ident = [(self.id_column, pa.string())] if self.id_column else []
        return pa.schema(
            [
                *ident,
                ("prediction_id", pa.string()),
                ("probability", pa.float64()),
                ("prediction", pa.int64()),
                ("model_version", pa.int64()),
            ]
        )

    @cached_property
    def rejects_schema(self) -> pa.Schema:
        """OUTPUT/rejects: why each row was refused, where it came from, its values as text."""
        ident = [(self.id_column, pa.string())] if self.id_column else []
        return pa.schema(
            [
                *ident,
                ("reason", pa.string()),
                ("file", pa.string()),
                ("row", pa.int64()),
                *[(name, pa.string()) for name in self.used],
            ]
        )

    def frame(self, batch: pa.RecordBatch) -> pd.DataFrame:
        """A batch as the single-machine reader would have read it: from CSV (all text in
        Spark), the missing markers read as missing, as pandas' reader is told to."""
        frame = batch.to_pandas()
        if self.csv:
            for f in self.fields:
                if f.name in frame.columns:
                    markers = scoring.NUMERIC_MISSING if f.numeric else MISSING_MARKERS
                    frame[f.name] = frame[f.name].where(~frame[f.name].isin(markers))
            if self.id_column and self.id_column in frame.columns:
                ids = frame[self.id_column]
                frame[self.id_column] = ids.where(~ids.isin(MISSING_MARKERS))
        return frame

    def score(
        self, batches: Iterator[pa.RecordBatch], payload: Any, rejected: Any
    ) -> Iterator[pa.RecordBatch]:
        """The scored rows of every batch (``payload`` a broadcast ModelPayload); adds the
        count of rows refused to the accumulator ``rejected``."""
        engine = worker_engine(payload.value)
        for batch in batches:
            frame = self.frame(batch)
            features, problems = scoring.validate(frame, self.fields)
            good = problems.good()
            refused = int((~good).sum())
            if refused:
                rejected.add(refused)
            if not good.any():
                continue
            inputs = features[good]
            result = engine.predict_frame(inputs)
            base, ids = prediction_ids(len(result.label))
            customers = (
                customer_text(
                    batch.column(self.id_column), frame.loc[:, self.id_column], good, self.csv
                )
                if self.id_column
                else None
            )
            if self.store_rows:
                meta = dataclasses.replace(self.meta, request_id=base, served_at=time.time())
                stored = (
                    pa.nulls(len(ids), pa.string())
                    if customers is None
                    else pc.if_else(
                        pc.equal(customers, ""), pa.scalar(None, pa.string()), customers
                    )
                )
                table = store.rows_table(
                    meta,
                    ids,
                    result.probability,
                    result.label,
                    stored,
                    {str(c): pa.Array.from_pandas(inputs[c]) for c in inputs.columns},
                )
            else:
                columns: dict[str, Any] = {
                    "prediction_id": ids,
                    "probability": pa.array(result.probability),
                    "prediction": pa.array(result.label),
                    "model_version": pa.repeat(pa.scalar(self.meta.version, pa.int64()), len(ids)),
                }
                if self.id_column and customers is not None:
                    columns = {self.id_column: customers, **columns}
                table = pa.table(columns)
            yield from table.cast(self.scored_schema).to_batches()

    def reject(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """The rows of every batch that cannot be scored, each with its reasons."""
        for batch in batches:
            frame = self.frame(batch)
            _, problems = scoring.validate(frame, self.fields)
            good = problems.good()
            if good.all():
                continue
            bad = frame.loc[~good]
            columns: dict[str, Any] = {}
            if self.id_column:
                columns[self.id_column] = scoring.as_text(bad[self.id_column])
            columns["reason"] = problems.reasons()
            columns["file"] = bad[_FILE].to_numpy(dtype=object)
            # NB: 1-based, as the single-machine rejects file counts data rows.
            columns["row"] = pa.array(bad[_ROW] + 1, pa.int64(), from_pandas=True)
            for name in self.used:
                columns[name] = scoring.as_text(bad[name])
            yield from pa.table(columns).cast(self.rejects_schema).to_batches()


class _Files:
    """Paths as Spark sees them (any Hadoop filesystem: file:, hdfs://, s3a://), through the
    driver's Hadoop FileSystem API."""

    def __init__(self, spark: SparkSession) -> None:
        context: Any = spark.sparkContext
        self._jvm = context._jvm
        self._conf = context._jsc.hadoopConfiguration()

    def _path(self, uri: str) -> tuple[Any, Any]:
        path = self._jvm.org.apache.hadoop.fs.Path(uri)
        return path, path.getFileSystem(self._conf)

    def qualified(self, uri: str) -> str:
        path, fs = self._path(uri)
        return str(fs.makeQualified(path).toString())

    def exists(self, uri: str) -> bool:
        path, fs = self._path(uri)
        return bool(fs.exists(path))

    def first_data_file(self, uri: str) -> str | None:
        """The name of the first data file under ``uri`` (itself if a file); hidden and
        ``_``-prefixed files (``_SUCCESS``, checksums) are skipped."""
        path, fs = self._path(uri)
        if fs.getFileStatus(path).isFile():
            return str(path.getName())
        found = fs.listFiles(path, True)
        while found.hasNext():
            name = str(found.next().getPath().getName())
            if not name.startswith(("_", ".")):
                return name
        return None

    def rename(self, source: str, target: str) -> None:
        src, fs = self._path(source)
        dst, _ = self._path(target)
        if not fs.rename(src, dst):
            raise DataError(f"could not rename {source} to {target}")

    def delete(self, uri: str) -> None:
        path, fs = self._path(uri)
        with contextlib.suppress(Exception):
            fs.delete(path, True)


def _first_line(exc: BaseException) -> str:
    """What failed, in one line: a JVM exception's root cause (py4j's own text only names the
    call), the last line of a Python worker's traceback, else the first line."""
    text = str(exc).strip()
    java: Any = getattr(exc, "java_exception", None)
    if java is not None:
        with contextlib.suppress(Exception):
            while java.getCause() is not None:
                java = java.getCause()
            text = str(java.toString()).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "Traceback (most recent call last):" in text:
        python = text.split("JVM stacktrace:")[0].strip().splitlines()
        lines = [python[-1].strip()] if python else lines
    return (lines[0] if lines else type(exc).__name__)[:500]


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def _is_csv(name: str) -> bool:
    return name.lower().endswith(CSV_SUFFIXES)


def read_input(spark: SparkSession, files: _Files, source: str) -> tuple[DataFrame, bool]:
    """The input dataset and whether it is CSV (read as text, as the rule book expects)."""
    try:
        present = files.exists(source)
    except Exception as exc:  # noqa: BLE001 - a scheme Spark has no filesystem for, say
        raise DataError(f"cannot read {source}: {_first_line(exc)}") from None
    if not present:
        raise DataError(f"input dataset {source} does not exist")
    name = files.first_data_file(source)
    if name is None:
        raise DataError(f"input dataset {source} holds no data files")
    csv = _is_csv(name)
    if not csv and not name.lower().endswith(PARQUET_SUFFIXES):
        raise DataError(
            f"{source}: {name} is neither Parquet (.parquet, .pq) nor CSV "
            f"({', '.join(CSV_SUFFIXES)})"
        )
    reader = spark.read
    try:
        if csv:
            # NB: every column as text, so the rule book sees what was written: a stray word
            # in a number column is rejected with its value, never silently nulled by Spark.
            frame = reader.csv(source, header=True, inferSchema=False)
        else:
            frame = reader.parquet(source)
    except Exception as exc:  # noqa: BLE001 - Spark's AnalysisException and friends
        raise DataError(f"cannot read {source}: {_first_line(exc)}") from None
    return frame, csv


def _store_uri(target: store.Store, path: str) -> str:
    """The Spark URI of a path in the prediction store."""
    if isinstance(target.fs, pafs.LocalFileSystem):
        return f"file://{path}"
    if isinstance(target.fs, pafs.S3FileSystem):
        # NB: Spark reads and writes S3 through hadoop-aws's s3a connector.
        return f"s3a://{path}"
    raise EngineError(f"the spark engine cannot write the prediction store at {target.uri}")


def _publish(target: store.Store, staged: str, day: int) -> int:
    """Move the staged store files into their day partition; how many moved."""
    found = target.fs.get_file_info(pafs.FileSelector(staged, recursive=True))
    files = sorted(
        f.path
        for f in found
        if f.type == pafs.FileType.File
        and f.path.endswith(".parquet")
        and not f.base_name.startswith(("_", "."))
    )
    folder = store.day_folder(target, day)
    if isinstance(target.fs, pafs.LocalFileSystem):
        target.fs.create_dir(folder, recursive=True)
    now = time.time()
    for path in files:
        # NB: the store's own naming, so its readers and compaction treat these files like any
        # other.
        target.fs.move(path, f"{folder}/{store.file_name(now)}")
    return len(files)


def score_dataset(
    settings: Settings,
    source: str,
    output: str,
    *,
    version: int | None = None,
    id_column: str | None = None,
    batch_rows: int | None = None,
    event_time: float | None = None,
) -> scoring.ScoreReport:
    """Score the dataset ``source`` on Spark into ``output``/predictions and /rejects with a
    version (default: the one the alias points at); scored rows also go to the prediction
    store, dated ``event_time`` (default: now)."""
    from churnops import spark as engines
    from churnops.registry import connection, loading, versions

    # NB: pyspark, Java and the master are checked before the registry is asked anything and
    # before a JVM starts (~10 s): a missing piece is one line at once.
    engines.check(settings)
    connection.ping(settings)
    number = scoring.resolve_version(settings, version)
    info = versions.get_version(settings, number)
    payloads: list[ModelPayload] = []
    loaded = loading.load_version(
        settings, number, keep=lambda model, _, local: payloads.append(model_payload(model, local))
    )
    spark = engines.session(settings)
    started = time.perf_counter()
    files = _Files(spark)
    frame, csv = read_input(spark, files, source)
    used = scoring.check_columns(source, frame.columns, loaded.inputs, number)
    ident = scoring.resolve_id_column(settings, info, frame.columns, id_column)
    run = uuid.uuid4().hex[:12]
    target_predictions, target_rejects = _join(output, PREDICTIONS), _join(output, REJECTS)
    for written in (target_predictions, target_rejects):
        if files.exists(written):
            raise DataError(f"{written} exists; remove it or choose another OUTPUT folder")
    inside = files.qualified(output).rstrip("/") + "/"
    if inside.startswith(files.qualified(source).rstrip("/") + "/"):
        raise DataError(f"OUTPUT {output} is inside the input {source}; choose another folder")
    now = time.time()
    moment = now if event_time is None else event_time
    book = RuleBook(
        fields=loaded.inputs,
        used=tuple(used),
        id_column=ident,
        csv=csv,
        meta=store.RowsMeta(
            time=moment,
            served_at=now,
            source="batch",
            model=settings.model_name,
            version=number,
            alias=settings.alias if version is None else "",
            threshold=loaded.engine.threshold,
            request_id="",
        ),
        store_rows=settings.store_predictions,
    )
    temporary = _join(output, f".churnops-{run}")
    target = store.settings_store(settings)
    staged = target.path(".spark-staging", run)
    context: Any = spark.sparkContext
    previous = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
    if batch_rows is not None:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_rows))
    try:
        try:
            read, scored, rejected = _run(
                spark,
                frame,
                book,
                context.broadcast(payloads[0]),
                temporary=temporary,
                staged=_store_uri(target, staged) if book.store_rows else None,
            )
        except Exception as exc:
            if isinstance(exc, ChurnopsError):
                raise
            # NB: py4j hands over the JVM's whole stack; its first line says what failed.
            log.debug("the Spark job failed", exc_info=True)
            raise EngineError(f"the Spark job failed: {_first_line(exc)}") from None
        finally:
            if previous is not None:
                spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", previous)
        files.rename(_join(temporary, PREDICTIONS), target_predictions)
        files.rename(_join(temporary, REJECTS), target_rejects)
        if book.store_rows:
            _publish(target, staged, int(moment // 86_400))
    finally:
        files.delete(temporary)
        if book.store_rows:
            with contextlib.suppress(OSError):
                target.fs.delete_dir(staged)
    return scoring.ScoreReport(
        source=source,
        output=target_predictions,
        rejects=target_rejects,
        version=number,
        id_column=ident,
        rows_read=read,
        rows_scored=scored,
        rows_rejected=rejected,
        seconds=time.perf_counter() - started,
        inference=f"{loaded.engine.kind} on spark {spark.sparkContext.master}",
    )


def _run(
    spark: SparkSession,
    frame: DataFrame,
    book: RuleBook,
    payload: Any,
    *,
    temporary: str,
    staged: str | None,
) -> tuple[int, int, int]:
    """The Spark jobs: score (into the store stage, or straight into the predictions), the
    predictions from the stage, the rejects; (rows read, scored, rejected)."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    def spark_schema(schema: pa.Schema) -> Any:
        return from_arrow_schema(schema, prefer_timestamp_ntz=False)

    columns = [
        F.col(f"`{f.name}`") if f.numeric else F.col(f"`{f.name}`").cast("string")
        for f in book.fields
        if f.name in book.used
    ]
    if book.id_column and book.id_column not in book.used:
        columns.append(F.col(f"`{book.id_column}`"))
    rejected = spark.sparkContext.accumulator(0)
    scored_rows = frame.select(*columns).mapInArrow(
        lambda batches: book.score(batches, payload, rejected), spark_schema(book.scored_schema)
    )
    predictions = _join(temporary, PREDICTIONS)
    if staged is not None:
        scored_rows.write.option("compression", "zstd").parquet(staged)
        stage = spark.read.parquet(staged)
        renamed = [F.col("customer_id").alias(book.id_column)] if book.id_column else []
        stage.select(
            *renamed,
            "prediction_id",
            "probability",
            F.col("label").cast("long").alias("prediction"),
            F.col("version").alias("model_version"),
        ).write.parquet(predictions)
    else:
        scored_rows.write.parquet(predictions)
    rejects = _join(temporary, REJECTS)
    if rejected.value:
        path = F.col("_metadata.file_path")
        # NB: Spark numbers rows within a file for Parquet only; a CSV reject has no row.
        row = F.lit(None).cast("long") if book.csv else F.col("_metadata.row_index")
        frame.select(*columns, path.alias(_FILE), row.alias(_ROW)).mapInArrow(
            book.reject, spark_schema(book.rejects_schema)
        ).write.parquet(rejects)
    else:
        spark.createDataFrame([], spark_schema(book.rejects_schema)).write.parquet(rejects)
    scored = spark.read.parquet(predictions).count()
    refused = spark.read.parquet(rejects).count()
    return scored + refused, scored, refused
