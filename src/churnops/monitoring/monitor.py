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

from churnops import ledger
from churnops.config import Settings
from churnops.errors import StaleMoveError, VersionNotFoundError
from churnops.monitoring import (
    bootstrap,
    drift,
    estimate,
    paired,
    realised,
    report,
)
from churnops.monitoring import summary as summaries
from churnops.monitoring.estimate import Calibration
from churnops.monitoring.findings import (
    Advice,
    Alert,
    Band,
    Diagnosis,
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
from churnops.monitoring.summary import VersionSummary
from churnops.registry import loading, monitoring_log, runs, versions
from churnops.times import parse_time

log = logging.getLogger(__name__)

# NB: below this many labelled rows a window's realised metrics are not reported (too noisy).
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
    # NB: None: the setting's (CHURNOPS_ENGINE).
    engine: str | None = None


def _realised(
    cells: pd.DataFrame,
    seed: int,
    fine: pd.DataFrame | None = None,
    exact: dict[str, float] | None = None,
) -> tuple[dict[str, Interval], float | None]:
    """Realised quality with intervals from a summary's cells (and, for ROC AUC, its fine bins
    or the rows' exact figures), and the most ROC AUC can be off (None: exact)."""
    labelled = cells[cells["outcome"] >= 0]
    if labelled["n"].sum() < bootstrap.MIN_LABELLED:
        return {}, None
    counts, squared = realised.vectors(labelled)
    found, bound = realised.point_from_cells(
        counts, squared, None if fine is None else fine[fine["outcome"] >= 0]
    )
    if exact is not None:
        found, bound = exact, None
    return dict(realised.intervals(found, counts, squared, seed=seed)), bound


def _estimated(
    cells: pd.DataFrame,
    calibration: Calibration | None,
    fine: pd.DataFrame | None = None,
    exact_auc: float | None = None,
) -> tuple[dict[str, float] | None, float | None]:
    """CBPE's estimate from a summary's calibrated sums (ROC AUC from the fine bins, or exact),
    and the most its ROC AUC can be off."""
    if calibration is None or cells.empty:
        return None, None
    flagged = cells[cells["label"] == 1]
    values = estimate.from_sums(
        float(flagged["c"].sum()),
        float(flagged["n"].sum()),
        float(cells.loc[cells["label"] == 0, "c"].sum()),
    )
    bound = None
    if exact_auc is not None:
        values["roc_auc"] = exact_auc
    elif fine is not None and len(fine):
        by_bin = fine.groupby("fine", sort=True)[["n", "c"]].sum()
        positives = by_bin["c"].to_numpy(dtype=float)
        auc, bound = realised.ranked(positives, by_bin["n"].to_numpy(dtype=float) - positives)
        if auc is not None:
            values["roc_auc"] = auc
    return {k: round(v, 4) for k, v in values.items()}, bound


@dataclass
class _Version:
    info: versions.VersionInfo | None
    reference: runs.Reference | None

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


def _drift(known: _Version, summary: VersionSummary) -> Drift:
    if known.reference is None:
        return Drift((), None, None, note="no reference")
    reference = known.reference.rows
    columns = [c for c in reference.columns if c in summary.columns]
    results, dataset = drift.table_drift(reference, summary.columns, columns, known.reference.kinds)
    prediction = None
    if known.scores is not None and summary.probability is not None:
        prediction = drift.column_drift(
            "probability", known.scores["probability"], summary.probability, "numeric"
        )
    return Drift(tuple(results), dataset, prediction)


def _windows(
    summary: VersionSummary, known: _Version, window: timedelta, matured: pd.Timestamp, seed: int
) -> tuple[Window, ...]:
    """Per window: rows, outcomes, realised and estimated F1. A window is *mature* once the churn
    horizon has passed since its end: every outcome about it has had time to arrive, so its
    realised quality no longer leans towards the churners, whose outcomes come first."""
    out = []
    cells = summary.cells
    for start_us in sorted(int(w) for w in cells["window_us"].unique()):
        group = cells[cells["window_us"] == start_us]
        start = pd.Timestamp(start_us, unit="us", tz="UTC")
        end = start + pd.Timedelta(window)
        rows = int(group["n"].sum())
        few = rows < MIN_WINDOW_ROWS
        f1 = None if few else _realised(group, seed)[0].get("f1")
        estimated = None if few else _estimated(group, known.calibration)[0]
        out.append(
            Window(
                start=start.isoformat(),
                end=end.isoformat(),
                rows=rows,
                labelled=int(group.loc[group["outcome"] >= 0, "n"].sum()),
                immature=int(group.loc[group["immature"], "n"].sum()),
                mature=bool(end <= matured),
                realised_f1=None if f1 is None else bootstrap.rounded(f1.value),
                realised_f1_low=None if f1 is None else bootstrap.rounded(f1.low),
                realised_f1_high=None if f1 is None else bootstrap.rounded(f1.high),
                estimated_f1=None if estimated is None else estimated["f1"],
                band=None if few else _band(known, rows),
                note=TOO_FEW_ROWS if few else "",
            )
        )
    return tuple(out)


def _estimate_error(summary: VersionSummary, known: _Version) -> float | None:
    """Estimated minus realised F1 on the rows that have outcomes."""
    labelled = summary.cells[summary.cells["outcome"] >= 0]
    if labelled["n"].sum() < bootstrap.MIN_LABELLED:
        return None
    estimated, _ = _estimated(labelled, known.calibration)
    if estimated is None:
        return None
    actual, _ = realised.point_from_cells(*realised.vectors(labelled))
    return round(estimated["f1"] - actual["f1"], 4)


def _version_report(
    summary: VersionSummary,
    known: _Version,
    options: Options,
    matured: pd.Timestamp,
    seed: int,
) -> VersionReport:
    info = known.info
    realised_now, auc_realised = _realised(
        summary.cells, seed, summary.fine, summary.exact_realised
    )
    estimated, auc_estimated = _estimated(
        summary.cells, known.calibration, summary.fine, summary.exact_estimated_auc
    )
    within = {
        name: round(bound, 6)
        for name, bound in (("realised", auc_realised), ("estimated", auc_estimated))
        if bound is not None
    }
    labelled = summary.labelled
    return VersionReport(
        version=summary.version,
        rows=summary.rows,
        labelled=labelled,
        immature=summary.immature,
        coverage=labelled / summary.rows if summary.rows else 0.0,
        first=pd.Timestamp(summary.first_us, unit="us", tz="UTC").isoformat(),
        last=pd.Timestamp(summary.last_us, unit="us", tz="UTC").isoformat(),
        gate_f1=None if info is None else info.metrics.get("f1"),
        gate_f1_sd=round(known.gate_sd, 4),
        realised=realised_now,
        estimated=estimated,
        estimate_error=_estimate_error(summary, known),
        band=_band(known, summary.rows),
        calibrated=None if known.calibration is None else known.calibration.used,
        drift=_drift(known, summary),
        windows=_windows(summary, known, options.window, matured, seed),
        roc_auc_within=within,
    )


def assess(
    version: int,
    rows: pd.DataFrame,
    info: versions.VersionInfo | None,
    reference: runs.Reference | None,
    matured: pd.Timestamp,
    window: timedelta = timedelta(days=1),
) -> tuple[VersionReport, list[Alert]]:
    """One serving version's report over its joined rows, and the alerts it raises: the pure
    core of :func:`run` (no store, no registry), which bench/monitor_quality.py measures."""
    known = _Version(info, reference)
    found = summaries.from_frame(
        rows.assign(version=version),
        window,
        {version: known.calibration},
        {version: [] if reference is None else list(reference.rows.columns)},
    )
    document = _version_report(found[version], known, Options(window=window), matured, 0)
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


def _period_advice(serving: VersionReport | None, previous: VersionReport | None) -> Advice | None:
    """The serving version worse than the one before it, each over its own period, beyond both
    ranges: a reason to look, not yet to roll back (the periods' customers differ)."""
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


def diagnose(
    serving: VersionReport | None, alerts: Sequence[Alert], advice: Advice | None = None
) -> Diagnosis | None:
    """Concept drift or covariate shift, when the serving version's realised F1 fell below the
    gate's: told apart by whether its inputs drifted over the same rows. None when the previous
    version replayed on the same rows does better (then the version is the problem: roll back)."""
    fell = serving is not None and any(
        a.kind == "realised_f1_below_gate" and a.version == serving.version for a in alerts
    )
    if serving is None or not fell or advice is not None:
        return None
    drift = serving.drift
    judged = [c for c in drift.columns if c.drifted is not None]
    since = serving.first[:10]
    command = f"churnops train --from-store --since {since}"
    if drift.dataset_drift or drift.drifted:
        names = ", ".join(drift.drifted)
        return Diagnosis(
            kind="covariate shift",
            evidence=f"{len(drift.drifted)} of {len(judged)} input columns drifted ({names})",
            command=command,
            message=f"v{serving.version}'s realised F1 fell while its inputs drifted ({names}): "
            "the customers changed; an older version may or may not do better on them, a "
            f"version trained on them will see them: {command}",
        )
    if not judged:
        return None
    return Diagnosis(
        kind="concept drift",
        evidence=f"no input column of {len(judged)} drifted",
        command=command,
        message=f"v{serving.version}'s realised F1 fell while none of its {len(judged)} input "
        "columns drifted: the churn concept changed (what predicts churn), so rolling back to "
        "an older version is unlikely to help; train one on the customers production served "
        f"and their outcomes: {command}",
    )


REPLAY_ROWS = 20_000


def _replay(
    settings: Settings,
    source: summaries.Source,
    serving: VersionReport,
    previous: int,
    known: dict[int, _Version],
) -> tuple[paired.Difference, int] | None:
    """The previous version replayed on (up to REPLAY_ROWS of) the serving version's labelled
    rows, the inputs as the store kept them: F1 of the previous (b) minus the serving (a) on the
    same rows, with a paired bootstrap interval."""
    reference = known[serving.version].reference
    if reference is None or reference.rows.empty:
        return None
    inputs = [str(c) for c in reference.rows.columns]
    rows = source.labelled_rows(serving.version, inputs, REPLAY_ROWS)
    # NB: rows stored without the inputs (written by hand, or before inputs were kept) cannot
    # be replayed: no evidence, no advice.
    if len(rows) < bootstrap.MIN_LABELLED or any(c not in rows.columns for c in inputs):
        return None
    try:
        engine = loading.load_version(settings, previous).engine
    except VersionNotFoundError:
        return None
    replayed = engine.predict_frame(rows[inputs])
    truth = rows["outcome"].to_numpy(dtype=int)
    difference = paired.paired_f1(truth, rows["label"].to_numpy(dtype=int), replayed.label)
    return difference, len(rows)


def _advice(
    serving: VersionReport | None,
    previous: int | None,
    replay: tuple[paired.Difference, int] | None,
) -> Advice | None:
    """Roll back only where the previous version is measurably better on the same customers:
    replayed on the serving version's labelled rows, its F1 interval above the serving one's."""
    if serving is None or previous is None or replay is None:
        return None
    found, rows = replay
    if found.a is None or found.b is None or found.low is None or not found.low > 0:
        return None
    a, b = found.a, found.b
    reason = (
        f"monitor: v{previous} replayed on {rows} of v{serving.version}'s labelled rows: F1 "
        f"{b:.4f} vs {a:.4f} (difference {found.difference:+.4f}, 95% interval "
        f"{found.low:+.4f} to {found.high:+.4f})"
    )
    return Advice(
        rollback_to=previous,
        basis="replayed on the same rows",
        serving=Quality(serving.version, a, a, a),
        previous=Quality(previous, b, b, b),
        reason=reason,
        command=f'churnops rollback --reason "{reason}"',
        message=f"roll back to v{previous}: {reason[len('monitor: ') :]}; run "
        f'churnops rollback --reason "{reason}"',
    )


def _challenger_better(settings: Settings, now: datetime) -> Alert | None:
    """An alert when the challenger has been significantly better than production for
    CHURNOPS_CHALLENGER_BETTER_DAYS: better on every row so far, and already better on the rows
    served before that many days ago."""
    from churnops.monitoring import compare
    from churnops.serving import routing

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
        "realised_f1": bootstrap.rounded(None if f1 is None else f1.value),
        "estimated_f1": None if estimated is None else bootstrap.rounded(estimated["f1"]),
        "label_coverage": bootstrap.rounded(version.coverage),
        "rows": float(version.rows),
        "labelled": float(version.labelled),
    }


def _metrics(versions: Sequence[VersionReport], until: str) -> list[tuple[str, float, int, int]]:
    """The period's figures as ``v3.realised_f1`` etc. (one value each, what the run page shows),
    and per-window series as ``v3.window.realised_f1`` etc., stamped with each window's end and
    stepped by it (Unix seconds), so the MLflow UI charts them over time on either axis. Windows
    with too few rows are left out."""
    out = []
    end = parse_time(until)
    for v in versions:
        prefix = f"v{v.version}"
        for key, value in period_figures(v).items():
            if value is not None:
                out.append((f"{prefix}.{key}", float(value), int(end.timestamp() * 1000), 0))
        for w in v.windows:
            moment = parse_time(w.end)
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
    versions.require_model(settings)
    now = now or datetime.now(UTC)
    until = options.until or now
    scope = summaries.Scope(
        settings.model_name,
        settings.alias,
        options.since,
        until,
        now,
        timedelta(days=settings.churn_horizon_days),
    )
    serving_version = versions.alias_version(settings)
    matured = pd.Timestamp(now) - pd.Timedelta(days=settings.churn_horizon_days)
    moves, stack = _moves(settings)
    recorded: dict[int, float] = {}
    known: dict[int, _Version] = {}
    with summaries.open_source(settings, options.engine or settings.engine, scope) as source:
        for version in source.versions():
            try:
                info: versions.VersionInfo | None = versions.get_version(settings, version)
            except VersionNotFoundError:
                info = None
            if info is not None and HORIZON_TAG in info.tags:
                recorded[version] = float(info.tags[HORIZON_TAG])
            reference = None if info is None else loading.load_reference(settings, info)
            known[version] = _Version(info, reference)
        found = source.summaries(
            options.window,
            {v: k.calibration for v, k in known.items()},
            {
                v: [] if k.reference is None else [str(c) for c in k.reference.rows.columns]
                for v, k in known.items()
            },
        )
        conflicts = source.conflicts()
        reports = [_version_report(found[v], known[v], options, matured, 0) for v in sorted(found)]
        by_version = {v.version: v for v in reports}
        serving = by_version.get(serving_version) if serving_version else None
        previous_version = stack[-2] if len(stack) >= 2 and stack[-1] == serving_version else None
        previous = by_version.get(previous_version) if previous_version else None
        alerts = _alerts(serving)
        replay = None
        if serving is not None and previous_version is not None:
            suspect = _period_advice(serving, previous) is not None or any(
                a.kind == "realised_f1_below_gate" for a in alerts
            )
            if suspect:
                replay = _replay(settings, source, serving, previous_version, known)
    challenger_alert = _challenger_better(settings, now)
    if challenger_alert is not None:
        alerts.append(challenger_alert)
    advice = _advice(serving, previous_version, replay)
    diagnosis = diagnose(serving, alerts, advice)
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
        rows=sum(v.rows for v in reports),
        label_conflicts=conflicts,
        immature=sum(v.immature for v in reports),
        versions=tuple(reports),
        alerts=tuple(alerts),
        advice=advice,
        moves=moves,
        diagnosis=diagnosis,
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
    run_id = monitoring_log.log_monitoring(
        settings, monitoring_log.MonitorLog(metrics, tags, found.to_dict(), files)
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
        versions.set_version_tags(settings, v.version, figures)
    return run_id
