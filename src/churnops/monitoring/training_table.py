"""The table `train --from-store` learns from: what production saw, with the outcomes that came.

The rows are the store's production rows (the alias, role production) in ``[since, until)`` whose
outcome is mature: a churn, a "retained" whose horizon has passed, or an outcome given by
prediction id. A customer scored many times before one outcome would weigh many times, so each
customer keeps one row per outcome: the latest prediction before it (for outcomes keyed by
prediction id, the latest prediction of each churn-horizon period). The inputs are the stored
``input.*`` columns of the version's schema, the target is ``churn`` (1/0), and ``time`` (the
prediction's event time) orders the rows for the out-of-time split.

One SQL text (DuckDB's dialect) over the engine's ``predictions`` and ``outcomes``, as the
monitor's summaries are, so it runs on DuckDB or Spark.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import pandas as pd

from churnops.config import TARGET
from churnops.monitoring import store
from churnops.monitoring.engine import Engine, quoted, text
from churnops.monitoring.summary import Scope, _us, latest_outcomes_sql, rows_sql

TIME = "time"


@dataclass(frozen=True)
class Table:
    """The training rows, the rows served in the scope, and when the earliest outcomes that
    are still immature (and would add a row) mature."""

    rows: pd.DataFrame
    served: int
    labelled: int
    immature_until: list[pd.Timestamp]


def _sql(scope: Scope, inputs: Sequence[str]) -> str:
    horizon = scope.horizon // timedelta(microseconds=1)
    now = _us(scope.now)
    stored = [f"{store.INPUT_PREFIX}{name}" for name in inputs]
    production = f"alias = {text(scope.alias)} AND COALESCE(role, 'production') = 'production'"
    return f"""
WITH o AS ({latest_outcomes_sql()}),
byid AS (SELECT key, max(outcome) AS outcome FROM o WHERE key_kind = 'prediction_id'
         GROUP BY key),
churn AS (SELECT key, t_us FROM o WHERE key_kind = 'customer_id' AND outcome = 1),
stay AS (SELECT key, t_us FROM o WHERE key_kind = 'customer_id' AND outcome = 0),
p AS ({rows_sql(scope, stored, where=production)}),
j AS (
  SELECT p.*, byid.outcome AS id_outcome,
    (SELECT min(c.t_us) FROM churn c WHERE c.key = p.customer_id AND c.t_us >= p.t_us
     AND c.t_us <= p.t_us + {horizon}) AS churn_t,
    (SELECT min(s.t_us) FROM stay s WHERE s.key = p.customer_id AND s.t_us >= p.t_us
     AND s.t_us <= p.t_us + {horizon}) AS stay_t
  FROM p LEFT JOIN byid ON byid.key = p.prediction_id
),
l AS (
  SELECT j.*,
    CASE WHEN id_outcome IS NOT NULL THEN id_outcome
         WHEN churn_t IS NOT NULL THEN 1
         WHEN stay_t IS NOT NULL AND t_us + {horizon} <= {now} THEN 0 END AS outcome,
    CASE WHEN id_outcome IS NOT NULL THEN t_us - (t_us % {horizon})
         WHEN churn_t IS NOT NULL THEN churn_t ELSE stay_t END AS event_t,
    id_outcome IS NOT NULL AS by_id
  FROM j WHERE id_outcome IS NOT NULL OR churn_t IS NOT NULL OR stay_t IS NOT NULL
),
ranked AS (
  SELECT l.*, row_number() OVER (
    PARTITION BY COALESCE(customer_id, prediction_id), by_id, event_t, outcome IS NULL
    ORDER BY t_us DESC, prediction_id DESC) AS rn,
    count(outcome) OVER (
      PARTITION BY COALESCE(customer_id, prediction_id), by_id, event_t) AS mature_rows
  FROM l
)"""


def build(engine: Engine, scope: Scope, inputs: Sequence[str], needed: int = 0) -> Table:
    """The training table of ``scope`` with the ``inputs`` columns; ``needed``: how many
    immature outcomes' maturity times to list (the earliest first)."""
    present = set(engine.columns())
    missing = [c for c in inputs if f"{store.INPUT_PREFIX}{c}" not in present]
    inputs = [c for c in inputs if c not in missing]
    sql = _sql(scope, inputs)
    columns = ", ".join(f"{quoted(store.INPUT_PREFIX + name)} AS {quoted(name)}" for name in inputs)
    rows = engine.query(
        f"""{sql}
SELECT {columns}{", " if columns else ""}CAST(outcome AS BIGINT) AS {quoted(TARGET)},
  t_us AS {quoted(TIME)}, customer_id, prediction_id
FROM ranked WHERE rn = 1 AND outcome IS NOT NULL
ORDER BY t_us, prediction_id"""
    )
    rows[TIME] = pd.to_datetime(rows[TIME], unit="us", utc=True)
    for name in missing:
        rows[name] = pd.NA
    counts = engine.query(
        f"""{sql}
SELECT count(*) AS served FROM p"""
    )
    immature: list[pd.Timestamp] = []
    if needed > 0:
        horizon = scope.horizon // timedelta(microseconds=1)
        maturing = engine.query(
            f"""{sql}
SELECT min(t_us) + {horizon} AS mature_us FROM ranked
WHERE outcome IS NULL AND mature_rows = 0
GROUP BY COALESCE(customer_id, prediction_id), by_id, event_t
ORDER BY 1 LIMIT {int(needed)}"""
        )
        immature = [pd.Timestamp(int(v), unit="us", tz="UTC") for v in maturing["mature_us"]]
    return Table(
        rows=rows.reset_index(drop=True),
        served=int(counts["served"].iloc[0]),
        labelled=len(rows),
        immature_until=immature,
    )
