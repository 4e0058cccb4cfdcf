"""`churnops train --from-store`: a new version trained on what production served and the churn
outcomes that came back for it (monitoring/training_table.py builds the table).

The table is written to a Parquet file that the run keeps, like any table trained on, with the
event time in data.TIME_COLUMN, so training holds out the newest rows (and `reproduce` splits the
kept copy the same way). The run records the range, the rows served and labelled, the label
coverage and the engine; the table's digest is recorded as for every table. Too few mature
outcomes is a refusal that says how many there are and when more will be.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from churnops import lifecycle, training
from churnops.config import MIN_TRAINING_ROWS, TARGET, Settings
from churnops.data import ID_COLUMN_METADATA, TIME_COLUMN
from churnops.errors import DataError, NoProductionModelError
from churnops.monitoring import engine as engines
from churnops.monitoring import store, training_table
from churnops.monitoring.summary import Scope
from churnops.registry import loading, versions

STORE_ID_COLUMN = "customer_id"


def _range(since: datetime | None, until: datetime) -> str:
    start = "the first stored row" if since is None else since.isoformat()
    return f"{start} to {until.isoformat()}"


def build(
    settings: Settings,
    since: datetime | None = None,
    until: datetime | None = None,
    now: datetime | None = None,
) -> tuple[training_table.Table, list[str], str]:
    """The table, the production version's input columns and its id column."""
    serving = versions.alias_version(settings)
    if serving is None:
        raise NoProductionModelError(
            f"{settings.model_name} has no {settings.alias!r} version: train --from-store "
            "learns from the rows production served"
        )
    info = versions.get_version(settings, serving)
    reference = loading.load_reference(settings, info)
    if reference is None or reference.rows.empty:
        raise DataError(
            f"v{serving} recorded no input columns (no monitoring reference): train it again "
            "with this churnops, or use --data"
        )
    inputs = [str(c) for c in reference.rows.columns]
    now = now or datetime.now(UTC)
    until = until or now
    scope = Scope(
        settings.model_name,
        settings.alias,
        since,
        until,
        now,
        timedelta(days=settings.churn_horizon_days),
    )
    target = store.settings_store(settings)
    with engines.open_engine(settings, settings.engine, target, since, until) as engine:
        table = training_table.build(engine, scope, inputs, needed=MIN_TRAINING_ROWS)
    return table, inputs, info.tags.get(versions.ID_COLUMN_TAG) or STORE_ID_COLUMN


def _refuse(table: training_table.Table, since: datetime | None, until: datetime) -> None:
    churned = int(table.rows[TARGET].sum()) if len(table.rows) else 0
    kinds = {churned > 0, churned < len(table.rows)}
    if len(table.rows) >= MIN_TRAINING_ROWS and kinds == {True}:
        return
    more = MIN_TRAINING_ROWS - len(table.rows)
    waiting = table.immature_until
    if more > 0 and len(waiting) >= more:
        when = f"; {more} more will be mature by {waiting[more - 1].isoformat()}"
    elif waiting:
        when = (
            f"; {len(waiting)} more will be mature by {waiting[-1].isoformat()}, and more need "
            "outcomes added (`churnops labels add`)"
        )
    else:
        when = "; add churn outcomes (`churnops labels add`) for the rows served"
    raise DataError(
        f"train --from-store: {len(table.rows)} of the {table.served} production rows from "
        f"{_range(since, until)} have mature outcomes ({churned} churned); at least "
        f"{MIN_TRAINING_ROWS}, with both churned and retained customers, are needed{when}"
    )


def train(
    settings: Settings,
    *,
    since: datetime | None,
    until: datetime | None,
    seed: int,
    gate_f1: float,
    version_label: str | None = None,
    kind: training.ModelKind | None = None,
    search_budget: float | None = None,
    now: datetime | None = None,
) -> lifecycle.TrainReport:
    """Build the table from the store and train a new version on it."""
    now = now or datetime.now(UTC)
    until = until or now
    table, inputs, id_column = build(settings, since, until, now)
    _refuse(table, since, until)
    frame = table.rows[[*inputs, TARGET]].copy()
    frame.insert(0, id_column, table.rows["customer_id"].to_numpy())
    frame[TIME_COLUMN] = table.rows[training_table.TIME]
    stamp = until.strftime("%Y%m%dT%H%M%SZ")
    with tempfile.TemporaryDirectory(prefix="churnops-from-store-") as folder:
        path = Path(folder) / f"from-store-{stamp}.parquet"
        arrow = pa.Table.from_pandas(frame, preserve_index=False)
        metadata = {**(arrow.schema.metadata or {}), ID_COLUMN_METADATA: id_column.encode()}
        pq.write_table(arrow.replace_schema_metadata(metadata), path)
        return lifecycle.train(
            settings,
            data_file=path,
            version_label=version_label,
            seed=seed,
            gate_f1=gate_f1,
            target=TARGET,
            kind=kind or "auto",
            search_budget=search_budget,
            extra_params={
                "from_store.since": "" if since is None else since.isoformat(),
                "from_store.until": until.isoformat(),
                "from_store.served_rows": str(table.served),
                "from_store.labelled_rows": str(table.labelled),
                "from_store.label_coverage": f"{table.labelled / max(1, table.served):.4f}",
                "from_store.engine": settings.engine,
                "from_store.learned_from_version": str(versions.alias_version(settings)),
            },
        )
