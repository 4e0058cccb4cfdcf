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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

from churnops import registry
from churnops.config import Settings
from churnops.data import IDENTIFIER, MISSING_MARKERS
from churnops.errors import DataError, NoProductionModelError
from churnops.inputs import InputField
from churnops.predict import Engine

DEFAULT_CHUNK_ROWS = 50_000
# NB: "NA" means missing only in numeric columns; as text it is a region code (North America).
NUMERIC_MISSING = (*MISSING_MARKERS, "NA", "na")
OUTPUT_COLUMNS = ("probability", "prediction", "model_version")


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
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"cannot read {source}: {exc}") from None
    except pa.ArrowException as exc:
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
    # parser; only a column holding stray text falls back to the slower check in _validate.
    yield from pd.read_csv(
        source,
        usecols=columns,
        dtype=dict.fromkeys(text, str),
        na_values=na_values,
        keep_default_na=False,
        chunksize=chunk_rows,
    )


def _numeric(values: pd.Series, field: InputField) -> tuple[pd.Series, pd.Series]:
    """The column as float64 and, per row, why it is not a valid number ("" when it is)."""
    reasons = pd.Series("", index=values.index, dtype=object)
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        numbers = pd.to_numeric(values.where(~values.isin(NUMERIC_MISSING)), errors="coerce")
        bad = numbers.isna() & values.notna() & ~values.isin(NUMERIC_MISSING)
        shown = values.astype(str).map(repr)
        reasons = reasons.mask(bad, f"{field.name}: " + shown + " is not a number")
    else:
        numbers = values.astype(float)
    if field.type in ("integer", "long"):
        fractional = numbers.notna() & (numbers % 1 != 0)
        reasons = reasons.mask(
            fractional, f"{field.name}: " + numbers.astype(str) + " is not a whole number"
        )
    return numbers, reasons


def _validate(
    chunk: pd.DataFrame, fields: tuple[InputField, ...]
) -> tuple[pd.DataFrame, pd.Series]:
    """Typed model columns and, per row, every reason it cannot be scored ("" when it can)."""
    typed: dict[str, Any] = {}
    reasons = pd.Series("", index=chunk.index, dtype=object)

    def add(mask: pd.Series, why: pd.Series | str) -> None:
        nonlocal reasons
        extra = why if isinstance(why, pd.Series) else pd.Series(why, index=chunk.index)
        joined = reasons.str.cat(extra, sep="; ").str.strip("; ")
        reasons = reasons.where(~mask, joined)

    for field in fields:
        if field.name not in chunk.columns:
            typed[field.name] = np.full(len(chunk), np.nan if field.numeric else None)
            continue
        values = chunk[field.name]
        if field.numeric:
            numbers, why = _numeric(values, field)
            add(why != "", why)
            typed[field.name] = numbers.to_numpy(dtype=float)
            missing = numbers.isna() & (why == "")
        else:
            missing = values.isna()
            typed[field.name] = values.astype(object).where(~missing, None).to_numpy()
        if field.required:
            add(missing, f"{field.name}: missing, and training had no missing values there")
    return pd.DataFrame(typed, index=chunk.index), reasons


class _CsvOut:
    """A CSV written chunk by chunk with pyarrow (~10x faster than DataFrame.to_csv here)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: pa_csv.CSVWriter | None = None
        self._schema: pa.Schema | None = None

    def write(self, frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self._writer is None or self._schema is None:
            self._schema = table.schema
            self._writer = pa_csv.CSVWriter(str(self.path), table.schema)
        # NB: a later chunk may infer another type for a column (all-empty text, say).
        self._writer.write_table(table.cast(self._schema))

    def close(self, columns: list[str]) -> None:
        if self._writer is None:
            # NB: no rows at all still gives a file with a header, so readers see the columns.
            pd.DataFrame(columns=columns).to_csv(self.path, index=False)
            return
        self._writer.close()

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            if self._writer is not None:
                self._writer.close()
        self.path.unlink(missing_ok=True)


def _id_column(
    settings: Settings, info: registry.VersionInfo, header: list[str], wanted: str | None
) -> str | None:
    if wanted is not None:
        if wanted not in header:
            raise DataError(
                f"--id-column {wanted!r} is not a column of the input; columns: {', '.join(header)}"
            )
        return wanted
    report = registry.load_data_report(settings, info) or {}
    dropped = report.get("dropped_columns", {})
    found = [c for c, why in dropped.items() if why == IDENTIFIER and c in header]
    return found[0] if found else None


def resolve_version(settings: Settings, version: int | None) -> int:
    """``version`` itself, or where the alias points; a clear error when it points nowhere."""
    if version is not None:
        return registry.get_version(settings, version).version
    aliased = registry.alias_version(settings)
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
) -> tuple[int, int, int]:
    """Score ``source`` into ``output`` and its rejects file; return rows (read, scored,
    rejected). Nothing appears under either name unless every row was handled."""
    header = _header(source)
    absent = [f.name for f in fields if f.required and f.name not in header]
    if absent:
        raise DataError(
            f"{source} lacks columns version {version} needs: {', '.join(absent)}; "
            f"its columns are: {', '.join(header)}"
        )
    used = [f.name for f in fields if f.name in header]
    columns = used + ([id_column] if id_column and id_column not in used else [])
    rejects = rejects_path(output)
    partial_out = output.with_name(output.name + ".partial")
    partial_rejects = rejects.with_name(rejects.name + ".partial")
    out_columns = ([id_column] if id_column else []) + list(OUTPUT_COLUMNS)
    reject_columns = ["row", *([id_column] if id_column else []), "reason", *used]
    scored_out, rejected_out = _CsvOut(partial_out), _CsvOut(partial_rejects)
    read = scored = rejected = 0
    try:
        for chunk in _chunks(source, fields, columns, chunk_rows):
            # NB: "row" in the rejects file is the 1-based data row (the header is row 0).
            chunk.index = pd.RangeIndex(read + 1, read + 1 + len(chunk))
            features, reasons = _validate(chunk, fields)
            good = (reasons == "").to_numpy()
            if good.any():
                result = engine.predict_frame(features[good])
                frame = pd.DataFrame({"probability": result.probability})
                frame["prediction"] = result.label
                frame["model_version"] = version
                if id_column:
                    frame.insert(0, id_column, _text(chunk.loc[good, id_column]))
                scored_out.write(frame)
            if not good.all():
                bad = chunk.loc[~good]
                rows = pd.DataFrame({"row": bad.index.to_numpy()})
                if id_column:
                    rows[id_column] = _text(bad[id_column])
                rows["reason"] = reasons[~good].to_numpy()
                for name in used:
                    rows[name] = _text(bad[name])
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


def _text(values: pd.Series) -> np.ndarray:
    """Values as they would be written back, with an empty string for a missing one."""
    return values.astype(str).where(values.notna(), "").to_numpy()


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
) -> ScoreReport:
    """Score a customer table with a version (default: the one the alias points at)."""
    if source.resolve() == output.resolve():
        raise DataError(f"the output {output} would overwrite the input; choose another path")
    registry.ping(settings)
    number = resolve_version(settings, version)
    info = registry.get_version(settings, number)
    loaded = registry.load_version(settings, number)
    ident = _id_column(settings, info, _header(source), id_column)
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    read, scored, rejected = score_engine(
        loaded.engine,
        loaded.inputs,
        source,
        output,
        version=number,
        id_column=ident,
        chunk_rows=chunk_rows,
        on_chunk=on_chunk,
    )
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
