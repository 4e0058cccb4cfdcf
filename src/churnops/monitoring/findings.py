"""What a monitor run found, as typed results: per version its realised and estimated quality,
drift and windows; the alerts, the rollback advice, the churn horizon in force and what the
run did. ``to_dict()`` is the JSON `churnops monitor --json` prints and the MLflow run keeps;
``render()`` is the text `churnops monitor` prints. The numbers are computed in
churnops.monitoring.monitor; this module only holds and shows them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from churnops.monitoring.drift import ColumnDrift
from churnops.monitoring.realised import Interval


@dataclass(frozen=True)
class Band:
    """The range of F1 the training reference gives for this many rows."""

    reference_f1: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        """JSON-ready."""
        return asdict(self)


@dataclass(frozen=True)
class Window:
    """One window of a version's traffic. ``mature`` once the churn horizon has passed since
    its end; ``note`` says why a window has no figures ("too few rows")."""

    start: str
    end: str
    rows: int
    labelled: int
    immature: int
    mature: bool
    realised_f1: float | None
    realised_f1_low: float | None
    realised_f1_high: float | None
    estimated_f1: float | None
    band: Band | None
    note: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


@dataclass(frozen=True)
class Drift:
    """Every input column's drift and the predicted probability's, against the version's
    training reference; ``note`` says why there are none ("no reference")."""

    columns: tuple[ColumnDrift, ...]
    dataset_drift: bool | None
    prediction: ColumnDrift | None
    note: str | None = None

    @property
    def drifted(self) -> list[str]:
        """The columns that drifted."""
        return [c.column for c in self.columns if c.drifted]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``note`` only when there is one)."""
        found: dict[str, Any] = {
            "columns": [c.to_dict() for c in self.columns],
            "dataset_drift": self.dataset_drift,
            "prediction": None if self.prediction is None else self.prediction.to_dict(),
        }
        if self.note is not None:
            found["note"] = self.note
        return found


@dataclass(frozen=True)
class VersionReport:
    """One version over the rows it served: realised quality (by metric, from the late
    outcomes; empty below the labelled rows that need), CBPE's estimate, the gate's F1, drift
    and the windows."""

    version: int
    rows: int
    labelled: int
    immature: int
    coverage: float
    first: str
    last: str
    gate_f1: float | None
    gate_f1_sd: float
    realised: dict[str, Interval]
    estimated: dict[str, float] | None
    estimate_error: float | None
    band: Band | None
    calibrated: bool | None
    drift: Drift
    windows: tuple[Window, ...]
    # NB: the most each ROC AUC (realised, estimated) can differ from the rows' own, when it
    # comes from an engine's probability bins; empty when computed from the rows themselves.
    roc_auc_within: dict[str, float] = field(default_factory=dict)

    @property
    def realised_f1(self) -> Interval | None:
        """The realised F1 with its interval, None before enough outcomes."""
        return self.realised.get("f1")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "version": self.version,
            "rows": self.rows,
            "labelled": self.labelled,
            "immature": self.immature,
            "coverage": self.coverage,
            "first": self.first,
            "last": self.last,
            "gate_f1": self.gate_f1,
            "gate_f1_sd": self.gate_f1_sd,
            "realised": {name: interval.to_dict() for name, interval in self.realised.items()},
            "estimated": self.estimated,
            "estimate_error": self.estimate_error,
            "band": None if self.band is None else self.band.to_dict(),
            "calibrated": self.calibrated,
            "drift": self.drift.to_dict(),
            "windows": [w.to_dict() for w in self.windows],
            "roc_auc_within": self.roc_auc_within,
        }

    def row(self) -> str:
        """The version's line in `churnops monitor`'s table."""
        f1 = self.realised_f1
        realised_text = f"{f1.value:.4f} ({f1.low:.4f}-{f1.high:.4f})" if f1 else "no outcomes yet"
        estimated = f"{self.estimated['f1']:.4f}" if self.estimated else "-"
        gate_f1 = f"{self.gate_f1:.4f}" if self.gate_f1 is not None else "-"
        few = all(c.drifted is None for c in self.drift.columns)
        drifted = self.drift.drifted
        drift_text = "too few rows" if few else (", ".join(drifted) if drifted else "none")
        return (
            f"{self.version:>7}  {self.rows:>8}  {self.labelled:>8}  {realised_text:<28}  "
            f"{estimated:>12}  {gate_f1:>7}  {drift_text}"
        )


@dataclass(frozen=True)
class Alert:
    """One alert: its kind, the version it is about, the message, and the figures it rests on
    (JSON-ready)."""

    kind: str
    version: int
    message: str
    evidence: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


@dataclass(frozen=True)
class Quality:
    """A version's F1 over its period with the range it is compared by."""

    version: int
    f1: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready."""
        return asdict(self)


@dataclass(frozen=True)
class Advice:
    """Roll back to ``rollback_to``: the serving version is worse than the one before it,
    beyond both ranges, on ``basis`` (realised or estimated F1)."""

    rollback_to: int
    basis: str
    serving: Quality
    previous: Quality
    reason: str
    command: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


@dataclass(frozen=True)
class Diagnosis:
    """What kind of change a fall in the serving version's realised quality looks like:
    ``concept drift`` when no input column drifted (what predicts churn changed: an older
    version is unlikely to do better on these customers, one trained on them can), ``covariate
    shift`` when the inputs drifted too (the customers changed)."""

    kind: str
    evidence: str
    command: str | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


@dataclass(frozen=True)
class Horizon:
    """The churn horizon in force against the one each version was first monitored with;
    ``auto_rollback`` says why an asked-for rollback was not done."""

    in_force_days: float
    recorded_days: dict[str, float]
    changed: list[int]
    note: str
    auto_rollback: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``auto_rollback`` only when set)."""
        found: dict[str, Any] = {
            "in_force_days": self.in_force_days,
            "recorded_days": dict(self.recorded_days),
            "changed": list(self.changed),
            "note": self.note,
        }
        if self.auto_rollback is not None:
            found["auto_rollback"] = self.auto_rollback
        return found


@dataclass(frozen=True)
class Move:
    """A done move of the monitored alias, from the ledger (marked on the F1 chart)."""

    time: str
    action: str
    from_version: int | None
    to_version: int | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


@dataclass(frozen=True)
class RolledBack:
    """What --auto-rollback did; ``refused`` says why it changed nothing."""

    from_version: int | None
    to_version: int | None
    changed: bool
    refused: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``refused`` only when refused)."""
        found: dict[str, Any] = {
            "from_version": self.from_version,
            "to_version": self.to_version,
            "changed": self.changed,
        }
        if self.refused is not None:
            found["refused"] = self.refused
        return found


@dataclass(frozen=True)
class MonitorReport:
    """One monitor run over a time range: every version that served under the alias, the
    alerts on the serving one, the advice, and what the run did (rollback, MLflow run)."""

    model: str
    alias: str
    since: str | None
    until: str
    window: str
    horizon_days: float
    horizon: Horizon
    serving_version: int | None
    previous_version: int | None
    rows: int
    label_conflicts: int
    immature: int
    versions: tuple[VersionReport, ...]
    alerts: tuple[Alert, ...]
    advice: Advice | None
    moves: tuple[Move, ...]
    rolled_back: RolledBack | None = None
    run_id: str | None = None
    diagnosis: Diagnosis | None = None

    @property
    def healthy(self) -> bool:
        """True when no alert fired."""
        return not self.alerts

    @property
    def serving(self) -> VersionReport | None:
        """The serving version's report, if it served any of these rows."""
        return next((v for v in self.versions if v.version == self.serving_version), None)

    def to_dict(self) -> dict[str, Any]:
        """The report as `churnops monitor --json` prints it (``diagnosis`` only when the serving
        version's realised quality fell; ``rolled_back`` and ``run_id`` only when the run did
        that)."""
        found: dict[str, Any] = {
            "model": self.model,
            "alias": self.alias,
            "since": self.since,
            "until": self.until,
            "window": self.window,
            "horizon_days": self.horizon_days,
            "horizon": self.horizon.to_dict(),
            "serving_version": self.serving_version,
            "previous_version": self.previous_version,
            "rows": self.rows,
            "label_conflicts": self.label_conflicts,
            "immature": self.immature,
            "versions": [v.to_dict() for v in self.versions],
            "alerts": [a.to_dict() for a in self.alerts],
            "advice": None if self.advice is None else self.advice.to_dict(),
            "moves": [m.to_dict() for m in self.moves],
        }
        if self.diagnosis is not None:
            found["diagnosis"] = self.diagnosis.to_dict()
        if self.rolled_back is not None:
            found["rolled_back"] = self.rolled_back.to_dict()
        if self.run_id is not None:
            found["run_id"] = self.run_id
        return found

    def render(self) -> str:
        """The report as `churnops monitor` prints it: a line per version, then the alerts,
        the advice and what was done."""
        lines = [
            f"{self.model}@{self.alias}: serving v{self.serving_version}; "
            f"{self.rows} stored predictions from {self.since or 'the start'} to "
            f"{self.until} ({self.immature} with an immature 'retained' outcome)",
            f"{'version':>7}  {'rows':>8}  {'labelled':>8}  {'realised f1 (95% interval)':<28}  "
            f"{'estimated f1':>12}  {'gate f1':>7}  drift",
        ]
        if not self.versions:
            lines.append(
                f"no stored predictions of {self.model}@{self.alias} in this range: serve "
                "traffic (`churnops serve`, `churnops score`), or try `churnops simulate`"
            )
        lines += [v.row() for v in self.versions]
        if self.horizon.note:
            lines.append(f"NOTE: {self.horizon.note}")
        lines += [f"ALERT: {a.message}" for a in self.alerts] or ["no alerts"]
        if self.diagnosis is not None:
            lines.append(f"diagnosis: {self.diagnosis.message}")
        if self.advice is not None:
            lines.append(f"advice: {self.advice.message}")
        if self.horizon.auto_rollback:
            lines.append(f"auto-rollback {self.horizon.auto_rollback}")
        moved = self.rolled_back
        if moved is not None:
            if moved.refused:
                lines.append(f"auto-rollback refused: {moved.refused}")
            else:
                lines.append(f"rolled back: v{moved.from_version} -> v{moved.to_version}")
        if self.run_id:
            lines.append(f"logged as run {self.run_id} in {self.model}-monitoring")
        return "\n".join(lines)
