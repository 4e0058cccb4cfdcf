"""`churnops simulate`: days of customer traffic sent to the running API, optionally drifting
from a given day, and the churn outcomes that would have arrived by now, so a user sees the whole
loop (store, late labels, monitor) in minutes without production.

Each day draws fresh customers from the built-in generator; from ``shift_day`` their
distribution shifts (covariate shift: the model stays right about them), from ``concept_day``
what makes them churn changes (concept drift: the model becomes wrong while its estimate does
not notice). Requests carry the customer id and an ``X-Event-Time`` inside their day. A churner's
outcome is observed a uniform 1..horizon days after the prediction; a stayer's "retained" at the
horizon; only outcomes observed by now go to the label file. Customer ids carry a tag of
their own per run, so running it again over the same period adds a second set of customers
(and rows) beside the first, and their outcomes never join the other run's predictions.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from churnops import data
from churnops.config import TARGET
from churnops.errors import ApiUnavailableError, ChurnopsError
from churnops.monitoring.store import INPUT_PREFIX

BATCH_ROWS = 500


@dataclass(frozen=True)
class SimulationReport:
    """What a simulation sent and wrote."""

    days: int
    rows: int
    requests: int
    outcomes: int
    churned: int
    labels_file: str
    start: str
    end: str
    run: str

    def to_dict(self) -> dict[str, object]:
        """The report as JSON-ready data."""
        return dict(self.__dict__)


def simulate(
    api: str,
    labels_file: Path,
    *,
    days: int = 60,
    rows_per_day: int = 500,
    shift_day: int | None = None,
    concept_day: int | None = None,
    strength: float = 1.0,
    horizon_days: float = 30.0,
    seed: int = 7,
    token: str | None = None,
    end: datetime | None = None,
    now: datetime | None = None,
) -> SimulationReport:
    """Send ``days`` of traffic ending at ``end`` (default: now) to the API at ``api``; write
    the outcomes observed by ``now`` to ``labels_file`` (CSV keyed by customer_id and time)."""
    now = now or datetime.now(UTC)
    end = end or now
    start = (end - timedelta(days=days)).replace(microsecond=0)
    rng = np.random.default_rng(seed)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    outcomes = []
    requests = 0
    run = uuid.uuid4().hex[:6]
    with httpx.Client(base_url=api, headers=headers, timeout=30) as client:
        for day in range(days):
            shifted = shift_day is not None and day >= shift_day
            drifted = concept_day is not None and day >= concept_day
            frame = data.generate(
                rows_per_day,
                seed=seed * 10_000 + day,
                first_id=day * rows_per_day + 1,
                covariate_shift=strength if shifted else 0.0,
                concept_drift=strength if drifted else 0.0,
            )
            moment = start + timedelta(days=day)
            times = moment + pd.to_timedelta(rng.uniform(0, 86_400, len(frame)), unit="s")
            frame["customer_id"] = f"{run}-" + frame["customer_id"]
            features = frame.drop(columns=[TARGET])
            for first in range(0, len(frame), BATCH_ROWS):
                part = features.iloc[first : first + BATCH_ROWS]
                when = min(times[first : first + BATCH_ROWS])
                try:
                    response = client.post(
                        "/predict/batch",
                        json={"customers": part.to_dict(orient="records")},
                        headers={"X-Event-Time": when.isoformat()},
                    )
                except httpx.HTTPError as exc:
                    raise ApiUnavailableError(
                        f"the API at {api} does not answer ({type(exc).__name__}); start it "
                        "with `churnops serve` (or `make up`), or pass --api URL"
                    ) from None
                if response.status_code != 200:
                    raise ChurnopsError(
                        f"the API at {api} answered {response.status_code}: {response.text[:300]}"
                    )
                requests += 1
                delay = np.where(
                    frame[TARGET].iloc[first : first + BATCH_ROWS].to_numpy() == 1,
                    rng.uniform(1, horizon_days, len(part)),
                    horizon_days,
                )
                observed = [when + timedelta(days=float(d)) for d in delay]
                outcomes += [
                    (cid, t, "churned" if y else "retained")
                    for cid, t, y in zip(
                        part["customer_id"],
                        observed,
                        frame[TARGET].iloc[first : first + BATCH_ROWS],
                        strict=True,
                    )
                    if t <= now
                ]
    table = pd.DataFrame(outcomes, columns=["customer_id", "time", TARGET])
    table["time"] = pd.to_datetime(table["time"], utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    labels_file.parent.mkdir(parents=True, exist_ok=True)
    partial = labels_file.with_name(labels_file.name + ".partial")
    table.to_csv(partial, index=False)
    partial.replace(labels_file)
    return SimulationReport(
        days=days,
        rows=days * rows_per_day,
        requests=requests,
        outcomes=len(table),
        churned=int((table[TARGET] == "churned").sum()),
        labels_file=str(labels_file),
        start=start.isoformat(),
        end=end.isoformat(),
        run=run,
    )


def offline(
    model: Any,
    threshold: float,
    *,
    days: int,
    rows_per_day: int,
    seed: int,
    end: pd.Timestamp,
    now: pd.Timestamp,
    horizon_days: float = 30.0,
    shift_day: int | None = None,
    concept_day: int | None = None,
    strength: float = 1.0,
    version: int = 1,
) -> pd.DataFrame:
    """The traffic :func:`simulate` sends, scored in process by ``model`` and joined with the
    outcomes observed by ``now`` (same delays), in the columns monitoring reads: what the
    quality benchmark and the alert tests judge without servers."""
    rng = np.random.default_rng(seed)
    start = end - pd.Timedelta(days=days)
    parts = []
    for day in range(days):
        frame = data.generate(
            rows_per_day,
            seed=seed * 10_000 + day,
            first_id=day * rows_per_day + 1,
            covariate_shift=strength if shift_day is not None and day >= shift_day else 0.0,
            concept_drift=strength if concept_day is not None and day >= concept_day else 0.0,
        )
        frame["time"] = (
            start
            + pd.Timedelta(days=day)
            + pd.to_timedelta(rng.uniform(0, 86_400, len(frame)), unit="s")
        )
        parts.append(frame)
    table = pd.concat(parts, ignore_index=True)
    return served(
        model,
        threshold,
        table.drop(columns=[TARGET, "time", "customer_id"]),
        table[TARGET].to_numpy(),
        table["time"],
        rng,
        now=now,
        horizon_days=horizon_days,
        version=version,
    )


def served(
    model: Any,
    threshold: float,
    features: pd.DataFrame,
    truth: np.ndarray,
    times: pd.Series,
    rng: np.random.Generator,
    *,
    now: pd.Timestamp,
    horizon_days: float,
    version: int = 1,
) -> pd.DataFrame:
    """Rows scored by ``model`` at ``times`` as the store keeps them, each with the moment its
    outcome is observed (``observed``: a churner's a uniform 1..horizon days later, a stayer's
    at the horizon) and the outcome itself once that moment is past ``now``."""
    times = pd.Series(times).reset_index(drop=True)
    truth = np.asarray(truth, dtype=float)
    delay = np.where(truth == 1, rng.uniform(1, horizon_days, len(truth)), horizon_days)
    observed = times + pd.to_timedelta(delay, unit="D")
    probability = model.predict_proba(features)[:, 1]
    out = pd.DataFrame(
        {
            "time": times,
            "version": version,
            "probability": probability,
            "label": (probability >= threshold).astype(int),
            "truth": truth,
            "observed": observed,
            "outcome": np.where(observed <= now, truth, np.nan),
            "immature": False,
        }
    )
    for column in features.columns:
        out[INPUT_PREFIX + str(column)] = features[column].to_numpy()
    return out
