"""The query engines `monitor`, `compare` and `labels add` read the prediction store with.

The store's Parquet files are exposed to an engine as two relations, ``predictions`` (with ``t_us``,
the event time in microseconds since 1970) and ``outcomes`` (every outcome file, in
store.LABELS_SCHEMA, with ``t_us``), and every question is one SQL text written once in DuckDB's
dialect: DuckDB runs it as written, Spark runs sqlglot's translation to Spark SQL. Only the two
relations' definitions differ by engine. Results are summaries (counts and sums per cell), so
memory is bounded by the answer, not by the rows.

DuckDB is embedded (no server): a local store is read by DuckDB's own Parquet reader, an S3 store
through pyarrow's filesystem (DuckDB's httpfs extension is downloaded at run time, which a
locked-down host cannot do). Spark reads the files itself, so it needs a filesystem its cluster
can reach (a shared folder, HDFS, or s3a:// with Hadoop's S3 connector on the cluster).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from churnops.config import Settings
from churnops.errors import EngineError
from churnops.monitoring import store

ENGINES = ("duckdb", "spark", "pandas")
# NB: DuckDB's own default is 80% of the machine's memory; the monitor's summaries need far
# less, and a larger sort or join spills to the temporary folder instead of growing the process.
DUCKDB_MEMORY_LIMIT = "512MB"


def lit(value: float) -> str:
    """A float as an SQL DOUBLE literal, exactly (DuckDB reads a plain ``0.1`` as a DECIMAL)."""
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    return f"CAST({value!r} AS DOUBLE)"


def text(value: str) -> str:
    """A string as an SQL literal."""
    return "'" + value.replace("'", "''") + "'"


def quoted(name: str) -> str:
    """A column name as an SQL identifier (store input columns hold dots: ``input.state``)."""
    return '"' + name.replace('"', '""') + '"'


class Engine(Protocol):
    """Runs one SQL text over ``predictions`` and ``outcomes``; the answer as a pandas frame."""

    name: str

    def query(self, sql: str) -> pd.DataFrame:
        """The rows of ``sql`` (DuckDB's dialect)."""
        ...

    def columns(self) -> list[str]:
        """The columns of ``predictions`` (every file's, by name)."""
        ...

    def register(self, name: str, frame: pd.DataFrame) -> None:
        """Make a small table of the caller's a relation ``name`` beside the store's."""
        ...

    def column_type(self, name: str) -> str:
        """``numeric``, ``text`` or ``other``: how ``predictions`` holds the column."""
        ...


def _label_files(target: store.Store) -> list[str]:
    return [f.path for f in store._files(target, store.LABELS)]


def _unified_schema(target: store.Store, files: Sequence[str]) -> pa.Schema:
    schemas = []
    for path in files:
        with target.fs.open_input_file(path) as handle:
            schemas.append(pq.ParquetFile(handle).schema_arrow)
    return pa.unify_schemas(schemas, promote_options="permissive")


_NUMERIC_TYPES = (
    "TINYINT",
    "SMALLINT",
    "INTEGER",
    "BIGINT",
    "HUGEINT",
    "FLOAT",
    "DOUBLE",
    "DECIMAL",
)
_INT_TYPES = ("UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT")


class DuckDBEngine:
    """DuckDB in this process, over the store's files."""

    name = "duckdb"

    def __init__(self, target: store.Store, files: Sequence[str], spill: str) -> None:
        import duckdb

        self._connection = duckdb.connect(
            config={
                "memory_limit": DUCKDB_MEMORY_LIMIT,
                "temp_directory": spill,
                "threads": os.cpu_count() or 1,
                # NB: extensions come from nowhere: a locked-down host has no network.
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": False,
            }
        )
        local = isinstance(target.fs, pafs.LocalFileSystem)
        con = self._connection
        if not files:
            con.register("raw_predictions", store.empty_predictions())
        elif local:
            listed = ", ".join(text(f) for f in files)
            con.execute(
                f"CREATE VIEW raw_predictions AS SELECT * FROM read_parquet([{listed}], "
                "union_by_name = true)"
            )
        else:
            dataset = pads.dataset(
                list(files),
                schema=_unified_schema(target, files),
                filesystem=target.fs,
                format="parquet",
            )
            con.register("raw_predictions", dataset)
        con.execute(
            "CREATE VIEW predictions AS SELECT *, epoch_us(time) AS t_us FROM raw_predictions"
        )
        labels = _label_files(target)
        if labels and local:
            # NB: read by DuckDB in place, never whole in memory (outcomes keyed by prediction
            # id are as many as the predictions); files from earlier versions differ in types
            # (a time without a zone is UTC, as churnops always wrote it), which the casts and
            # epoch_us absorb.
            listed = ", ".join(text(f) for f in labels)
            con.execute(
                "CREATE VIEW outcomes AS SELECT CAST(key_kind AS VARCHAR) AS key_kind, "
                "CAST(key AS VARCHAR) AS key, CAST(outcome AS TINYINT) AS outcome, "
                "epoch_us(time) AS t_us, epoch_us(added_at) AS added_us, "
                f'CAST("row" AS BIGINT) AS "row" FROM read_parquet([{listed}], '
                "union_by_name = true)"
            )
        else:
            tables = [
                store.conform_labels(pq.read_table(path, filesystem=target.fs)) for path in labels
            ]
            con.register(
                "raw_outcomes",
                pa.concat_tables(tables) if tables else store.conform_labels(pa.table({})),
            )
            con.execute(
                "CREATE VIEW outcomes AS SELECT key_kind, key, outcome, epoch_us(time) AS t_us, "
                'epoch_us(added_at) AS added_us, "row" FROM raw_outcomes'
            )
        described = con.execute("DESCRIBE predictions").fetchall()
        self._types = {str(row[0]): str(row[1]) for row in described}

    def query(self, sql: str) -> pd.DataFrame:
        """The rows of ``sql``."""
        return self._connection.execute(sql).fetch_df()

    def register(self, name: str, frame: pd.DataFrame) -> None:
        """Make ``frame`` the relation ``name``."""
        self._connection.register(name, pa.Table.from_pandas(frame, preserve_index=False))

    def columns(self) -> list[str]:
        """The columns of ``predictions``."""
        return list(self._types)

    def column_type(self, name: str) -> str:
        """How ``predictions`` holds the column."""
        kind = self._types.get(name, "")
        if kind.startswith(_NUMERIC_TYPES) or kind.startswith(_INT_TYPES):
            return "numeric"
        if kind == "BOOLEAN":
            return "numeric"
        return "text" if kind == "VARCHAR" else "other"

    def close(self) -> None:
        """Let the connection go."""
        self._connection.close()


class SparkEngine:
    """A Spark session (CHURNOPS_SPARK_MASTER) over the store's files."""

    name = "spark"

    def __init__(self, settings: Settings, target: store.Store, files: Sequence[str]) -> None:
        from churnops import spark

        self._spark = spark.session(settings)
        session = self._spark
        if not isinstance(target.fs, pafs.LocalFileSystem):
            raise EngineError(
                f"the spark engine reads the store itself and cannot reach {target.uri} through "
                "churnops' S3 settings: use --engine duckdb, or point Spark at the bucket (s3a:// "
                "with the Hadoop AWS connector on the cluster)"
            )
        if files:
            frame = session.read.option("mergeSchema", "true").parquet(*files)
        else:
            frame = session.createDataFrame(store.empty_predictions().to_pandas())
        frame.createOrReplaceTempView("raw_predictions")
        session.sql(
            "SELECT *, unix_micros(time) AS t_us FROM raw_predictions"
        ).createOrReplaceTempView("predictions")
        labels = _label_files(target)
        tables = [store.conform_labels(pq.read_table(p, filesystem=target.fs)) for p in labels]
        outcomes = (
            pa.concat_tables(tables) if tables else store.conform_labels(pa.table({}))
        ).to_pandas()
        schema = (
            "key_kind string, key string, outcome tinyint, time timestamp, added_at timestamp, "
            "row bigint"
        )
        session.createDataFrame(outcomes, schema=schema).createOrReplaceTempView("raw_outcomes")
        session.sql(
            "SELECT key_kind, key, outcome, unix_micros(time) AS t_us, "
            "unix_micros(added_at) AS added_us, `row` FROM raw_outcomes"
        ).createOrReplaceTempView("outcomes")
        self._types = {
            f.name: f.dataType.simpleString() for f in session.table("predictions").schema
        }

    def query(self, sql: str) -> pd.DataFrame:
        """The rows of ``sql``, translated to Spark SQL."""
        import sqlglot

        translated = sqlglot.transpile(sql, read="duckdb", write="spark")[0]
        return self._spark.sql(translated).toArrow().to_pandas()

    def columns(self) -> list[str]:
        """The columns of ``predictions``."""
        return list(self._types)

    def register(self, name: str, frame: pd.DataFrame) -> None:
        """Make ``frame`` the relation ``name``."""
        self._spark.createDataFrame(frame).createOrReplaceTempView(name)

    def column_type(self, name: str) -> str:
        """How ``predictions`` holds the column."""
        kind = self._types.get(name, "")
        if kind in ("tinyint", "smallint", "int", "bigint", "float", "double", "boolean"):
            return "numeric"
        if kind.startswith("decimal"):
            return "numeric"
        return "text" if kind == "string" else "other"

    def close(self) -> None:
        """The session stays for the process (Spark's start-up is the expensive part)."""


@contextmanager
def open_engine(
    settings: Settings, name: str, target: store.Store, since: Any = None, until: Any = None
) -> Iterator[Engine]:
    """An engine over the store's prediction files for ``[since, until)`` and its outcomes."""
    files = store.prediction_files(target, since, until)
    if name == "spark":
        engine: Any = SparkEngine(settings, target, files)
        try:
            yield engine
        finally:
            engine.close()
        return
    if name != "duckdb":
        raise EngineError(f"unknown engine {name!r}: use one of {', '.join(ENGINES)}")
    with tempfile.TemporaryDirectory(prefix="churnops-duckdb-") as spill:
        engine = DuckDBEngine(target, files, spill)
        try:
            yield engine
        finally:
            engine.close()
