"""`churnops monitor`: how each version of the model is really doing.

Reads the stored predictions served under the alias (the version recorded with each row is the
one that answered it, so the cut by version is the ledger's cut by production period), joins the
late outcomes, and per version and per window reports realised quality with intervals, CBPE's
estimate, and drift against the version's reference. Alerts name their evidence; advice says when
the serving version is worse than the one before it, beyond the intervals, and which rollback to
run. The run is logged to MLflow (experiment ``<model>-monitoring``) and the latest figures go on
each version as tags.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import cached_property

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from churnops import ledger, registry
from churnops.config import Settings
from churnops.errors import StaleMoveError
from churnops.monitoring import drift, estimate, labels, realised, report, store
from churnops.monitoring.estimate import Calibration
from churnops.monitoring.findings import (
    Advice,
    Alert,
    Band,
    Drift,
    Horizon,
    MonitorReport,
    Move,
    Quality,
    RolledBack,
    VersionReport,
    Window,
)
from churnops.monitoring.realised import Interval

log = logging.getLogger(__name__)

# NB: below this many labelled rows a window's realised metrics are not reported (too noisy).
MIN_LABELLED = 30
# NB: below this many rows a window gets no estimate either ("too few rows"): one row's
# estimated F1 is 0 or 1, which a chart or a tag would show as a figure.
MIN_WINDOW_ROWS = drift.MIN_ROWS
TOO_FEW_ROWS = "too few rows"
MONITOR_ACTOR = "churnops-monitor"
HORIZON_TAG = "monitor.horizon_days"
Z95 = 1.96
# NB: a quality alert needs the gap to the gate's F1 to exceed this many standard deviations of
# the difference, both sides' sampling counted. One-sided 0.5% per test: a version-period runs
# three such tests plus two drift verdicts, and the share with any alert on healthy traffic is
# measured by bench/monitor_quality.py (BENCHMARKS.md).
Z_ALERT = 2.576
ALERT_P_VALUE = 0.01


@dataclass(frozen=True)
class Options:
    """What to monitor: the time range, the window length, and whether to act on advice."""

    since: datetime | None = None
    until: datetime | None = None
    window: timedelta = timedelta(days=1)
    auto_rollback: bool = False
    log_to_mlflow: bool = True


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), digits)


def _realised(rows: pd.DataFrame, seed: int) -> dict[str, Interval]:
    labelled = rows[rows["outcome"].notna()]
    if len(labelled) < MIN_LABELLED:
        return {}
    return dict(
        realised.with_intervals(
            labelled["outcome"].to_numpy(dtype=int),
            labelled["label"].to_numpy(dtype=int),
            labelled["probability"].to_numpy(dtype=float),
            seed=seed,
        )
    )


def _estimated(rows: pd.DataFrame, calibration: Calibration | None) -> dict[str, float] | None:
    if calibration is None or rows.empty:
        return None
    probability = rows["probability"].to_numpy(dtype=float)
    values = estimate.estimate(
        calibration.apply(probability), rows["label"].to_numpy(dtype=int), probability
    )
    return {k: round(v, 4) for k, v in values.items()}


@dataclass
class _Version:
    info: registry.VersionInfo | None
    reference: registry.Reference | None

    @cached_property
    def calibration(self) -> Calibration | None:
        if self.reference is None or not self.reference.calibration:
            return None
        return Calibration.from_dict(self.reference.calibration)

    @property
    def scores(self) -> pd.DataFrame | None:
        if self.reference is None or self.reference.scores.empty:
            return None
        return self.reference.scores

    @cached_property
    def gate_sd(self) -> float:
        """Standard deviation of the gate's F1 over its held-out rows (0 when unknown)."""
        scores = self.scores
        if scores is None:
            return 0.0
        return estimate.reference_f1_spread(
            scores["outcome"].to_numpy(), scores["label"].to_numpy()
        )


def _band(known: _Version, rows: int) -> Band | None:
    scores = known.scores
    if scores is None or rows == 0:
        return None
    reference, low, high = estimate.f1_band(
        scores["outcome"].to_numpy(), scores["label"].to_numpy(), rows
    )
    return Band(round(reference, 4), round(low, 4), round(high, 4))


def _drift(known: _Version, rows: pd.DataFrame) -> Drift:
    if known.reference is None:
        return Drift((), None, None, note="no reference")
    reference = known.reference.rows
    columns = [c for c in reference.columns if f"{store.INPUT_PREFIX}{c}" in rows.columns]
    current = rows[[f"{store.INPUT_PREFIX}{c}" for c in columns]]
    current.columns = columns
    results, dataset = drift.table_drift(reference, current, columns, known.reference.kinds)
    prediction = None
    if known.scores is not None:
        prediction = drift.column_drift(
            "probability", known.scores["probability"], rows["probability"], "numeric"
        )
    return Drift(tuple(results), dataset, prediction)


def _windows(
    rows: pd.DataFrame, known: _Version, window: timedelta, matured: pd.Timestamp, seed: int
) -> tuple[Window, ...]:
    """Per window: rows, outcomes, realised and estimated F1. A window is *mature* once the churn
    horizon has passed since its end: every outcome about it has had time to arrive, so its
    realised quality no longer leans towards the churners, whose outcomes come first."""
    out = []
    starts = rows["time"].dt.floor(pd.Timedelta(window))
    for start, group in rows.groupby(starts, sort=True):
        end = start + pd.Timedelta(window)
        few = len(group) < MIN_WINDOW_ROWS
        f1 = None if few else _realised(group, seed).get("f1")
        estimated = None if few else _estimated(group, known.calibration)
        labelled = int(group["outcome"].notna().sum())
        out.append(
            Window(
                start=start.isoformat(),
                end=end.isoformat(),
                rows=len(group),
                labelled=labelled,
                immature=int(group["immature"].sum()),
                mature=bool(end <= matured),
                realised_f1=None if f1 is None else _r(f1.value),
                realised_f1_low=None if f1 is None else _r(f1.low),
                realised_f1_high=None if f1 is None else _r(f1.high),
                estimated_f1=None if estimated is None else estimated["f1"],
                band=None if few else _band(known, len(group)),
                note=TOO_FEW_ROWS if few else "",
            )
        )
    return tuple(out)


def _estimate_error(rows: pd.DataFrame, known: _Version) -> float | None:
    """Estimated minus realised F1 on the rows that have outcomes."""
    labelled = rows[rows["outcome"].notna()]
    if len(labelled) < MIN_LABELLED:
        return None
    estimated = _estimated(labelled, known.calibration)
    if estimated is None:
        return None
    actual = realised.point(
        labelled["outcome"].to_numpy(dtype=int),
        labelled["label"].to_numpy(dtype=int),
        labelled["probability"].to_numpy(dtype=float),
    )
    return round(estimated["f1"] - actual["f1"], 4)


def _version_report(
    version: int,
    rows: pd.DataFrame,
    known: _Version,
    options: Options,
    matured: pd.Timestamp,
    seed: int,
) -> VersionReport:
    labelled = int(rows["outcome"].notna().sum())
    info = known.info
    return VersionReport(
        version=version,
        rows=len(rows),
        labelled=labelled,
        immature=int(rows["immature"].sum()),
        coverage=labelled / len(rows) if len(rows) else 0.0,
        first=rows["time"].min().isoformat(),
        last=rows["time"].max().isoformat(),
        gate_f1=None if info is None else info.metrics.get("f1"),
        gate_f1_sd=round(known.gate_sd, 4),
        realised=_realised(rows, seed),
        estimated=_estimated(rows, known.calibration),
        estimate_error=_estimate_error(rows, known),
        band=_band(known, len(rows)),
        calibrated=None if known.calibration is None else known.calibration.used,
        drift=_drift(known, rows),
        windows=_windows(rows, known, options.window, matured, seed),
    )


def assess(
    version: int,
    rows: pd.DataFrame,
    info: registry.VersionInfo | None,
    reference: registry.Reference | None,
    matured: pd.Timestamp,
    window: timedelta = timedelta(days=1),
) -> tuple[VersionReport, list[Alert]]:
    """One serving version's report over its joined rows, and the alerts it raises: the pure
    core of :func:`run` (no store, no registry), which bench/monitor_quality.py measures."""
    known = _Version(info, reference)
    document = _version_report(version, rows, known, Options(window=window), matured, 0)
    return document, _alerts(document)


def below_gate(
    value: float, low: float, high: float, gate_f1: float, gate_sd: float
) -> float | None:
    """How many standard deviations of the difference the realised F1 lies below the gate's,
    both sides' uncertainty counted (the realised one from its 95% interval, the gate's from
    its held-out rows); None when it is not below by more than Z_ALERT."""
    current_sd = (high - low) / (2 * Z95)
    spread = float(np.hypot(current_sd, gate_sd))
    if spread <= 0:
        return None
    z = (gate_f1 - value) / spread
    return z if z > Z_ALERT else None


def _alerts(serving: VersionReport | None) -> list[Alert]:
    if serving is None:
        return []
    found = []
    v = serving.version
    f1 = serving.realised_f1
    gate_f1, gate_sd = serving.gate_f1, serving.gate_f1_sd or 0.0
    gate_text = (
        "" if gate_f1 is None else f"the F1 the gate measured, {gate_f1:.4f} (+/- {gate_sd:.4f})"
    )
    z = (
        below_gate(f1.value, f1.low, f1.high, gate_f1, gate_sd)  # type: ignore[arg-type]
        if f1 and f1.high is not None and gate_f1 is not None
        else None
    )
    if f1 and z is not None:
        found.append(
            Alert(
                "realised_f1_below_gate",
                v,
                f"v{v}: realised F1 {f1.value:.4f} (95% interval "
                f"{f1.low:.4f}-{f1.high:.4f}, {serving.labelled} labelled rows) is "
                f"{z:.1f} standard deviations below {gate_text}",
                {"realised_f1": f1.to_dict(), "gate_f1": gate_f1, "gate_f1_sd": gate_sd, "z": z},
            )
        )
    recent = next(
        (w for w in reversed(serving.windows) if w.mature and w.realised_f1 is not None), None
    )
    z = (
        below_gate(
            recent.realised_f1,  # type: ignore[arg-type]
            recent.realised_f1_low,  # type: ignore[arg-type]
            recent.realised_f1_high,
            gate_f1,
            gate_sd,
        )
        if recent is not None and gate_f1 is not None and recent.realised_f1_high is not None
        else None
    )
    if recent is not None and z is not None:
        found.append(
            Alert(
                "realised_f1_below_gate",
                v,
                f"v{v}: realised F1 {recent.realised_f1:.4f} (95% interval "
                f"{recent.realised_f1_low:.4f}-{recent.realised_f1_high:.4f}, "
                f"{recent.labelled} labelled rows) in the latest mature window, from "
                f"{recent.start}, is {z:.1f} standard deviations below {gate_text}",
                {"window": recent.to_dict(), "gate_f1": gate_f1, "gate_f1_sd": gate_sd, "z": z},
            )
        )
    latest = next((w for w in reversed(serving.windows) if w.estimated_f1 is not None), None)
    if (
        latest is not None
        and latest.band
        and latest.estimated_f1 is not None
        and latest.estimated_f1 < latest.band.low
    ):
        found.append(
            Alert(
                "estimated_f1_below_band",
                v,
                f"v{v}: estimated F1 {latest.estimated_f1:.4f} in the window from "
                f"{latest.start} is below the reference band "
                f"{latest.band.low:.4f}-{latest.band.high:.4f} ({latest.rows} rows)",
                {"window": latest.to_dict()},
            )
        )
    prediction = serving.drift.prediction
    # NB: with a held-out split of at most 1,000 rows the verdict is a p-value at 0.05; as an
    # alert that alone fired on 1 in 20 healthy periods, so the alert asks for p < 0.01 there.
    strong = prediction is not None and (
        prediction.test not in ("ks", "chi2")
        or (prediction.statistic is not None and prediction.statistic < ALERT_P_VALUE)
    )
    if prediction and prediction.drifted and strong:
        threshold = ALERT_P_VALUE if prediction.test in ("ks", "chi2") else prediction.threshold
        found.append(
            Alert(
                "prediction_drift",
                v,
                f"v{v}: predicted probabilities drifted from the held-out split's "
                f"({prediction.test} {prediction.statistic:.4f}, threshold {threshold})",
                prediction.to_dict(),
            )
        )
    if serving.drift.dataset_drift:
        drifted = serving.drift.drifted
        found.append(
            Alert(
                "dataset_drift",
                v,
                f"v{v}: dataset drift: {len(drifted)} of "
                f"{len(serving.drift.columns)} columns drifted ({', '.join(drifted)})",
                {"drifted_columns": drifted},
            )
        )
    return found


def _quality(version: VersionReport, realised_first: bool = True) -> tuple[str, Quality] | None:
    """The basis (realised or estimated) and range of a version's F1 over its period: realised
    when there are outcomes (unless not ``realised_first``), else estimated with the reference
    spread for that many rows."""
    f1 = version.realised_f1
    if realised_first and f1 and f1.low is not None:
        return "realised", Quality(version.version, f1.value, f1.low, f1.high)  # type: ignore[arg-type]
    estimated, band = version.estimated, version.band
    if estimated is None or band is None:
        return None
    half = (band.high - band.low) / 6 * Z95
    value = estimated["f1"]
    return "estimated", Quality(version.version, value, value - half, value + half)


def _advice(serving: VersionReport | None, previous: VersionReport | None) -> Advice | None:
    if serving is None or previous is None:
        return None
    now, before = _quality(serving), _quality(previous)
    if now is None or before is None:
        return None
    if now[0] != before[0]:
        # NB: realised against estimated would compare two different things; use estimates.
        now = _quality(serving, realised_first=False)
        before = _quality(previous, realised_first=False)
        if now is None or before is None:
            return None
    (basis, a), b = now, before[1]
    if not a.high < b.low:
        return None
    reason = (
        f"monitor: v{a.version} {basis} F1 {a.f1:.4f} ({a.low:.4f}-{a.high:.4f}) below "
        f"v{b.version}'s {b.f1:.4f} ({b.low:.4f}-{b.high:.4f})"
    )
    return Advice(
        rollback_to=b.version,
        basis=basis,
        serving=a,
        previous=b,
        reason=reason,
        command=f'churnops rollback --reason "{reason}"',
        message=f"roll back to v{b.version}: {reason[len('monitor: ') :]}; run "
        f'churnops rollback --reason "{reason}"',
    )


def _challenger_better(settings: Settings, now: datetime) -> Alert | None:
    """An alert when the challenger has been significantly better than production for
    CHURNOPS_CHALLENGER_BETTER_DAYS: better on every row so far, and already better on the rows
    served before that many days ago."""
    from churnops import routing
    from churnops.monitoring import compare

    found = routing.slot(settings)
    if found is None:
        return None
    latest = compare.compare(
        settings, found.version, now=now, log_to_mlflow=False, measure_latency=False
    )
    if latest.verdict.result != "better":
        return None
    days = settings.challenger_better_days
    earlier = compare.compare(
        settings,
        found.version,
        until=now - timedelta(days=days),
        now=now,
        log_to_mlflow=False,
        measure_latency=False,
    )
    if earlier.verdict.result != "better":
        return None
    verdict = latest.verdict
    return Alert(
        "challenger_better",
        found.version,
        f"consider promoting v{found.version}: significantly better than production "
        f"for at least {days:g} days ({verdict.message}); run "
        f"churnops promote --version {found.version}",
        {"now": verdict.to_dict(), "before": earlier.verdict.to_dict()},
    )


def _moves(settings: Settings) -> tuple[tuple[Move, ...], list[int]]:
    entries = [e for e in ledger.entries(settings) if e.alias == settings.alias]
    moves = tuple(
        Move(e.time, e.action, e.from_version, e.to_version) for e in entries if e.state == "done"
    )
    return moves, ledger.production_stack(entries, settings.alias)


def period_figures(version: VersionReport) -> dict[str, float | None]:
    """The figures that answer "how is this version doing" over its whole period: the ones
    `monitor` prints, the version's tags, the run's metrics and `status` all show these."""
    f1 = version.realised_f1
    estimated = version.estimated
    return {
        "realised_f1": _r(None if f1 is None else f1.value),
        "estimated_f1": None if estimated is None else _r(estimated["f1"]),
        "label_coverage": _r(version.coverage),
        "rows": float(version.rows),
        "labelled": float(version.labelled),
    }


def _metrics(versions: Sequence[VersionReport], until: str) -> list[tuple[str, float, int, int]]:
    """The period's figures as ``v3.realised_f1`` etc. (one value each, what the run page shows),
    and per-window series as ``v3.window.realised_f1`` etc., stamped with each window's end and
    stepped by it (Unix seconds), so the MLflow UI charts them over time on either axis. Windows
    with too few rows are left out."""
    out = []
    end = datetime.fromisoformat(until)
    for v in versions:
        prefix = f"v{v.version}"
        for key, value in period_figures(v).items():
            if value is not None:
                out.append((f"{prefix}.{key}", float(value), int(end.timestamp() * 1000), 0))
        for w in v.windows:
            moment = datetime.fromisoformat(w.end)
            stamp, step = int(moment.timestamp() * 1000), int(moment.timestamp())
            out.append((f"{prefix}.window.rows", float(w.rows), stamp, step))
            if w.note == TOO_FEW_ROWS:
                continue
            coverage = w.labelled / max(1, w.rows)
            out.append((f"{prefix}.window.label_coverage", coverage, stamp, step))
            for key, value in (("realised_f1", w.realised_f1), ("estimated_f1", w.estimated_f1)):
                if value is not None:
                    out.append((f"{prefix}.window.{key}", float(value), stamp, step))
    return out


def run(settings: Settings, options: Options, now: datetime | None = None) -> MonitorReport:
    """Monitor the model's versions over the range; log the run unless told not to."""
    # NB: before anything is read or logged: a misspelt name would otherwise report an empty
    # store, exit 0 and create a "<typo>-monitoring" experiment.
    registry.require_model(settings)
    now = now or datetime.now(UTC)
    until = options.until or now
    target = store.open_store(settings.store_uri)
    table = store.read_predictions(
        target,
        settings.model_name,
        options.since,
        until,
        # NB: what monitoring never reads stays on disk (measured: 1,000,000 rows with every
        # column peaked at 1.2 GiB).
        skip=("served_at", "source", "model", "request_id", "threshold", "role"),
        ordered=False,
    )
    table = table.filter(pc.equal(table["alias"], settings.alias)).drop_columns(["alias"])
    frame = table.to_pandas()
    del table
    stored_labels = store.read_labels(target)
    joined = labels.join(
        frame,
        None if stored_labels is None else stored_labels.to_pandas(),
        pd.Timedelta(days=settings.churn_horizon_days),
        pd.Timestamp(now),
    )
    del stored_labels
    frame = joined.frame
    serving_version = registry.alias_version(settings)
    matured = pd.Timestamp(now) - pd.Timedelta(days=settings.churn_horizon_days)
    moves, stack = _moves(settings)
    versions = []
    recorded: dict[int, float] = {}
    for version in sorted(int(v) for v in frame["version"].unique()):
        try:
            info: registry.VersionInfo | None = registry.get_version(settings, version)
        except registry.VersionNotFoundError:
            info = None
        if info is not None and HORIZON_TAG in info.tags:
            recorded[version] = float(info.tags[HORIZON_TAG])
        reference = None if info is None else registry.load_reference(settings, info)
        rows = frame[frame["version"] == version]
        versions.append(
            _version_report(version, rows, _Version(info, reference), options, matured, 0)
        )
    by_version = {v.version: v for v in versions}
    serving = by_version.get(serving_version) if serving_version else None
    previous_version = stack[-2] if len(stack) >= 2 and stack[-1] == serving_version else None
    previous = by_version.get(previous_version) if previous_version else None
    alerts = _alerts(serving)
    challenger_alert = _challenger_better(settings, now)
    if challenger_alert is not None:
        alerts.append(challenger_alert)
    advice = _advice(serving, previous)
    horizon = _horizon(settings.churn_horizon_days, recorded)
    if horizon.changed and options.auto_rollback and advice is not None:
        # NB: figures under another horizon are other figures (a 7-day horizon turned 0.734
        # on 30,000 labelled rows into 0.891 on 1,650): a person decides, not the cron job.
        options = replace(options, auto_rollback=False)
        horizon = replace(
            horizon,
            auto_rollback="not done: "
            + horizon.note
            + "; run the advised rollback by hand if it holds",
        )
    result = MonitorReport(
        model=settings.model_name,
        alias=settings.alias,
        since=options.since.isoformat() if options.since else None,
        until=until.isoformat(),
        window=str(options.window),
        horizon_days=settings.churn_horizon_days,
        horizon=horizon,
        serving_version=serving_version,
        previous_version=previous_version,
        rows=len(frame),
        label_conflicts=joined.conflicts,
        immature=joined.immature,
        versions=tuple(versions),
        alerts=tuple(alerts),
        advice=advice,
        moves=moves,
    )
    if advice is not None and options.auto_rollback:
        result = replace(result, rolled_back=_roll_back(settings, advice))
    if options.log_to_mlflow:
        result = replace(result, run_id=_log(settings, result))
    return result


def _roll_back(settings: Settings, advice: Advice) -> RolledBack:
    """Act on the advice as churnops-monitor, through the gate and the ledger."""
    from churnops import lifecycle

    mover = settings.model_copy(update={"actor": MONITOR_ACTOR})
    # NB: an undo (so the ledger's production stack pops), only from the version the advice
    # was about and only to the one it names: a second monitor that decided before the first
    # acted must not roll back again, further.
    try:
        moved = lifecycle.rollback(
            mover,
            reason=advice.reason,
            expected=advice.serving.version,
            expected_target=advice.rollback_to,
        )
    except StaleMoveError as exc:
        return RolledBack(advice.serving.version, advice.rollback_to, False, refused=str(exc))
    return RolledBack(moved.move.from_version, moved.move.to_version, moved.changed)


def _horizon(in_force: float, recorded: dict[int, float]) -> Horizon:
    """The churn horizon in force against the one each version was first monitored with."""
    changed = sorted(v for v, days in recorded.items() if days != in_force)
    note = ""
    if changed:
        was = ", ".join(f"v{v} {recorded[v]:g}" for v in changed)
        note = (
            f"the churn horizon in force, {in_force:g} days, differs from the one these "
            f"versions were first monitored with ({was} days): labels, realised F1 and alerts "
            f"below use {in_force:g} days and do not compare with earlier runs"
        )
    return Horizon(in_force, {str(v): days for v, days in recorded.items()}, changed, note)


def _log(settings: Settings, found: MonitorReport) -> str:
    serving = found.serving
    images = {"f1_over_time.png": report.f1_over_time(found.versions, found.moves)}
    if serving is not None and serving.drift.columns:
        images["drift.png"] = report.drift_bars(serving.drift.columns, serving.version)
    files = dict(images) | {"report.html": report.page(found, images)}
    tags = {
        "version": str(found.serving_version),
        "alerts": str(len(found.alerts)),
        "churnops.monitor": "true",
    }
    metrics = _metrics(found.versions, found.until)
    run_id = registry.log_monitoring(
        settings, registry.MonitorLog(metrics, tags, found.to_dict(), files)
    )
    for v in found.versions:
        period = period_figures(v)
        figures = {
            f"monitor.{key}": "-" if value is None else f"{value:.4f}"
            for key, value in period.items()
            if key not in ("rows", "labelled")
        } | {
            "monitor.rows": str(v.rows),
            "monitor.labelled": str(v.labelled),
            "monitor.since": v.first,
            "monitor.at": found.until,
        }
        if str(v.version) not in found.horizon.recorded_days:
            # NB: recorded once, at the first monitoring: a later horizon is shown against it.
            figures[HORIZON_TAG] = f"{found.horizon_days:g}"
        registry.set_version_tags(settings, v.version, figures)
    return run_id
