"""`churnops compare`: the challenger against production on the same live customers.

Reads the prediction store. Shadow rows carry the prediction id of the production row they
shadow, so each is paired with the answer production gave that customer at that moment; canary
rows are compared with the production rows served over the same period (different customers, a
stable hash split). Before outcomes: agreement of labels, rank correlation of probabilities,
predicted-churn shares. Once outcomes join (as `monitor` joins them): paired statistics on
shadowed rows, unpaired ones on canary rows (churnops.monitoring.paired), and a verdict with the
number of labelled rows that would make the observed difference decisive.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import numpy as np
import pandas as pd

from churnops.config import Settings
from churnops.errors import ChurnopsError
from churnops.monitoring import bootstrap, compare_summaries, paired
from churnops.monitoring.summary import Scope
from churnops.registry import loading, monitoring_log, versions
from churnops.serving import routing

# NB: below this many labelled rows per side no verdict is given (the intervals mean little).
# NB: beyond this many times the labelled rows so far, "rows needed" is no practical advice.
PRACTICAL = 100


T = TypeVar("T")


@dataclass(frozen=True)
class Sides(Generic[T]):
    """One figure for production and for the challenger."""

    production: T
    challenger: T

    def to_dict(self) -> dict[str, T]:
        """JSON-ready."""
        return asdict(self)


@dataclass(frozen=True)
class Shadow:
    """Shadowed rows, paired with the production answer each shadows; the tests only once
    outcomes have joined (``f1``, ``mcnemar`` and ``roc_auc`` are all set, or none)."""

    rows: int
    agreement: float | None
    rank_correlation: float | None
    predicted_churn: Sides[float | None]
    labelled: int
    f1: paired.Difference | None = None
    mcnemar: dict[str, float | int] | None = None
    roc_auc: paired.Difference | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the tests' keys appear only once there are outcomes."""
        found: dict[str, Any] = {
            "rows": self.rows,
            "agreement": self.agreement,
            "rank_correlation": self.rank_correlation,
            "predicted_churn": self.predicted_churn.to_dict(),
            "labelled": self.labelled,
        }
        if self.f1 is not None and self.roc_auc is not None:
            found |= {
                "f1": self.f1.to_dict(),
                "mcnemar": self.mcnemar,
                "roc_auc": self.roc_auc.to_dict(),
            }
        return found


@dataclass(frozen=True)
class Canary:
    """Canary rows against the production rows served over the same period (other customers);
    the tests only once both sides have outcomes."""

    rows: Sides[int]
    predicted_churn: Sides[float | None]
    labelled: Sides[int]
    f1: paired.Difference | None = None
    fisher: dict[str, float | int] | None = None
    roc_auc: paired.Difference | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the tests' keys appear only once there are outcomes."""
        found: dict[str, Any] = {
            "rows": self.rows.to_dict(),
            "predicted_churn": self.predicted_churn.to_dict(),
            "labelled": self.labelled.to_dict(),
        }
        if self.f1 is not None and self.roc_auc is not None:
            found |= {
                "f1": self.f1.to_dict(),
                "fisher": self.fisher,
                "roc_auc": self.roc_auc.to_dict(),
            }
        return found


@dataclass(frozen=True)
class Verdict:
    """better / worse / no evidence yet, on what basis, and why. ``measured`` says an F1
    difference was measured: then its figures (``f1_difference``, ``low``, ``high``) are in
    the JSON, even when undefined on these rows."""

    result: str
    basis: str
    labelled: int
    message: str
    rows_needed: int | None
    measured: bool = False
    f1_difference: float | None = None
    low: float | None = None
    high: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        head = {"result": self.result, "basis": self.basis, "labelled": self.labelled}
        if not self.measured:
            return head | {"message": self.message, "rows_needed": self.rows_needed}
        return head | {
            "f1_difference": self.f1_difference,
            "low": self.low,
            "high": self.high,
            "rows_needed": self.rows_needed,
            "message": self.message,
        }


@dataclass(frozen=True)
class Timing:
    """One version's engine time per single-row call."""

    engine: str
    p50_ms: float | None
    p99_ms: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


@dataclass(frozen=True)
class Latency:
    """Each version's engine time (keyed ``v3``), measured here on the same rows."""

    rows: int
    versions: dict[str, Timing]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"rows": self.rows, "versions": {k: t.to_dict() for k, t in self.versions.items()}}


@dataclass(frozen=True)
class Comparison:
    """One comparison of a challenger with production: the shadow and canary sections (None
    when the challenger served no such rows), the verdict, and the run it was logged as."""

    model: str
    challenger: int
    until: str
    production_versions: list[int]
    shadow: Shadow | None
    canary: Canary | None
    verdict: Verdict
    latency: Latency | None = None
    run_id: str | None = None

    @property
    def found_rows(self) -> bool:
        """True when the challenger scored any rows (as a shadow or a canary)."""
        return self.shadow is not None or self.canary is not None

    def to_dict(self) -> dict[str, Any]:
        """The report as `churnops compare --json` prints it and the MLflow run keeps it."""
        found: dict[str, Any] = {
            "model": self.model,
            "challenger": self.challenger,
            "until": self.until,
            "production_versions": list(self.production_versions),
            "shadow": None if self.shadow is None else self.shadow.to_dict(),
            "canary": None if self.canary is None else self.canary.to_dict(),
            "verdict": self.verdict.to_dict(),
            "latency": None if self.latency is None else self.latency.to_dict(),
        }
        if self.run_id is not None:
            found["run_id"] = self.run_id
        return found

    def render(self) -> str:
        """The comparison as `churnops compare` prints it."""
        lines = [
            f"{self.model}: challenger v{self.challenger} vs production "
            + ", ".join(f"v{v}" for v in self.production_versions)
        ]
        shadow = self.shadow
        if shadow:
            churn = shadow.predicted_churn
            lines.append(
                f"shadow: {shadow.rows} paired rows; labels agree on {shadow.agreement:.2%}; "
                f"rank correlation {shadow.rank_correlation}; predicted churn "
                f"{churn.production:.2%} (production) vs {churn.challenger:.2%}; "
                f"{shadow.labelled} labelled"
            )
            if shadow.mcnemar and shadow.roc_auc is not None:
                m, auc = shadow.mcnemar, shadow.roc_auc
                lines.append(
                    f"  McNemar: right only by production {m['a_only']}, only by the "
                    f"challenger {m['b_only']}, p={m['p_value']:.4g}"
                )
                if auc.difference is not None:
                    lines.append(
                        f"  ROC AUC challenger v{self.challenger} {auc.b:.4f} vs production "
                        f"{auc.a:.4f}: challenger minus production {auc.difference:+.4f} "
                        f"({auc.low:+.4f} to {auc.high:+.4f}), DeLong p={auc.p_value:.4g}"
                    )
        canary = self.canary
        if canary:
            rows, share = canary.rows, canary.predicted_churn
            lines.append(
                f"canary: {rows.challenger} rows answered by the challenger, {rows.production} "
                f"by production over the same period; predicted churn "
                f"{_share(share.challenger)} vs {_share(share.production)}; labelled "
                f"{canary.labelled.challenger} / {canary.labelled.production}"
            )
            if canary.fisher:
                lines.append(
                    f"  Fisher's exact test on right/wrong: p={canary.fisher['p_value']:.4g}"
                )
        if self.latency:
            timed = self.latency
            lines.append(
                f"latency per single-row call, measured here on {timed.rows} rows: "
                + "; ".join(
                    f"{name} ({t.engine}) p50 {t.p50_ms:.3f} ms, p99 {t.p99_ms:.3f} ms"
                    for name, t in timed.versions.items()
                )
            )
        lines.append(f"verdict: {self.verdict.result}: {self.verdict.message}")
        if self.run_id:
            lines.append(f"logged as run {self.run_id} in {self.model}-monitoring")
        return "\n".join(lines)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _churn_share(side: compare_summaries.Side) -> float | None:
    counts = side.counts
    rows = counts["n"].sum()
    return bootstrap.rounded((counts["label"] * counts["n"]).sum() / rows, 6) if rows else None


def _binned(test: str, truth: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> str:
    bound = max(paired.tie_bound(truth, row, weights) for row in np.atleast_2d(scores))
    return (
        f"{test}, on 1/{compare_summaries.SCORE_BINS} probability bins "
        f"(each ROC AUC within {bound:.2g})"
    )


def _shadow(pairs: compare_summaries.Pairs, seed: int) -> Shadow:
    """Paired: production (a) and challenger (b) on the same rows (the F1 difference and the
    tests only once there are outcomes)."""
    counts = pairs.counts
    n = counts["n"].to_numpy(dtype=np.int64)
    rows = int(n.sum())
    agree = float(n[(counts["label_a"] == counts["label_b"]).to_numpy()].sum() / rows)
    scored = counts.groupby(["score_a", "score_b"], as_index=False)["n"].sum()
    rho = paired.spearman_weighted(
        scored["score_a"].to_numpy(), scored["score_b"].to_numpy(), scored["n"].to_numpy()
    )
    section = Shadow(
        rows=rows,
        agreement=bootstrap.rounded(agree, 6),
        rank_correlation=bootstrap.rounded(rho, 6) if rows > 2 else None,
        predicted_churn=Sides(
            bootstrap.rounded(float((counts["label_a"] * n).sum() / rows), 6),
            bootstrap.rounded(float((counts["label_b"] * n).sum() / rows), 6),
        ),
        labelled=0,
    )
    known = counts[counts["outcome"] >= 0]
    if not len(known):
        return section
    truth = known["outcome"].to_numpy(int)
    a, b = known["label_a"].to_numpy(int), known["label_b"].to_numpy(int)
    weights = known["n"].to_numpy(np.int64)
    cells = np.bincount(truth * 4 + a * 2 + b, weights=weights, minlength=8)
    a_only = int(weights[(a == truth) & (b != truth)].sum())
    b_only = int(weights[(a != truth) & (b == truth)].sum())
    return replace(
        section,
        labelled=int(weights.sum()),
        f1=paired.paired_f1_counts(cells, seed),
        mcnemar=paired.mcnemar_counts(a_only, b_only),
        roc_auc=_paired_auc(truth, known, weights, pairs.binned),
    )


def _paired_auc(
    truth: np.ndarray, known: pd.DataFrame, weights: np.ndarray, binned: bool
) -> paired.Difference:
    if len(np.unique(truth)) < 2:
        return paired.Difference(None, None, None, None, None, None, None, "DeLong")
    scores = np.vstack([known["score_a"].to_numpy(float), known["score_b"].to_numpy(float)])
    aucs, cov = paired.delong_weighted(truth, scores, weights)
    variance = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    test = _binned("DeLong", truth, scores, weights) if binned else "DeLong"
    return paired._normal_test(float(aucs[0]), float(aucs[1]), float(variance), test)


def _right(known: pd.DataFrame) -> int:
    return int(known.loc[known["label"] == known["outcome"], "n"].sum())


def _canary(
    production: compare_summaries.Side, canary: compare_summaries.Side, seed: int
) -> Canary:
    """Unpaired: production's customers (a) and the canary's (b) over the same period (the F1
    difference and the tests only once both sides have outcomes)."""
    a = production.counts[production.counts["outcome"] >= 0]
    b = canary.counts[canary.counts["outcome"] >= 0]
    labelled_a, labelled_b = int(a["n"].sum()), int(b["n"].sum())
    section = Canary(
        rows=Sides(production.rows, canary.rows),
        predicted_churn=Sides(_churn_share(production), _churn_share(canary)),
        labelled=Sides(labelled_a, labelled_b),
    )
    if not (labelled_a and labelled_b):
        return section

    def cells(side: pd.DataFrame) -> np.ndarray:
        index = (side["outcome"] * 2 + side["label"]).to_numpy(np.int64)
        return np.bincount(index, weights=side["n"].to_numpy(float), minlength=4)

    return replace(
        section,
        f1=paired.unpaired_f1_counts(cells(a), cells(b), seed),
        fisher=paired.fisher_counts(_right(a), labelled_a, _right(b), labelled_b),
        roc_auc=_unpaired_auc(a, b, production.binned),
    )


def _unpaired_auc(a: pd.DataFrame, b: pd.DataFrame, binned: bool) -> paired.Difference:
    sides = [
        (side["outcome"].to_numpy(int), side["score"].to_numpy(float), side["n"].to_numpy())
        for side in (a, b)
    ]
    if not all(len(np.unique(truth)) == 2 for truth, _, _ in sides):
        return paired.Difference(None, None, None, None, None, None, None, "DeLong, unpaired")
    (auc_a, var_a), (auc_b, var_b) = (paired.delong_weighted(*side) for side in sides)
    test = "DeLong, unpaired"
    if binned:
        bound = max(paired.tie_bound(*side) for side in sides)
        test += (
            f", on 1/{compare_summaries.SCORE_BINS} probability bins "
            f"(each ROC AUC within {bound:.2g})"
        )
    return paired._normal_test(
        float(auc_a[0]), float(auc_b[0]), float(var_a[0, 0] + var_b[0, 0]), test
    )


def _verdict(f1: paired.Difference | None, labelled: int, basis: str) -> Verdict:
    if f1 is None or f1.difference is None:
        return Verdict(
            result="no evidence yet",
            basis=basis,
            labelled=labelled,
            message="no labelled rows yet: add churn outcomes (`churnops labels add`)",
            rows_needed=None,
        )
    result = None if labelled < bootstrap.MIN_LABELLED else paired.decided(f1)
    more = paired.rows_to_decide(f1, labelled)
    text = (
        f"challenger F1 {f1.b:.4f} vs production {f1.a:.4f}: difference {f1.difference:+.4f} "
        f"(95% interval {f1.low:+.4f} to {f1.high:+.4f}, {basis}, {labelled} labelled rows)"
    )
    if result is None:
        if more is not None and more > PRACTICAL * labelled:
            text += (
                f"; a difference this small would take over {PRACTICAL}x the labelled rows so "
                "far to become decisive: on F1 the two are equivalent for practical purposes"
            )
        elif more is not None and more > 0:
            text += (
                f"; about {more:,} more labelled rows would make a difference this size decisive"
            )
        elif labelled < bootstrap.MIN_LABELLED:
            text += f"; fewer than {bootstrap.MIN_LABELLED} labelled rows"
    return Verdict(
        result=result or "no evidence yet",
        basis=basis,
        labelled=labelled,
        message=text,
        rows_needed=more if result is None else 0,
        measured=True,
        f1_difference=bootstrap.rounded(f1.difference, 6),
        low=bootstrap.rounded(f1.low, 6),
        high=bootstrap.rounded(f1.high, 6),
    )


LATENCY_ROWS = 200


def latency(settings: Settings, compared: list[int]) -> Latency | None:
    """Each version's engine time per single-row call, in ms (p50, p99), measured here on the
    same rows: up to 200 of the last version's training reference. The store holds no timings
    (shadow rows are scored in batches off the request path); the API's Prometheus histogram
    churnops_scoring_duration_seconds has the challenger's live figures."""
    import time

    engines = {v: loading.load_version(settings, v).engine for v in compared}
    reference = loading.load_reference(settings, versions.get_version(settings, compared[-1]))
    if reference is None or reference.rows.empty:
        return None
    rows = reference.rows.head(LATENCY_ROWS)
    out = {}
    for version, engine in engines.items():
        times = []
        for i in range(len(rows)):
            one = rows.iloc[[i]]
            started = time.perf_counter()
            engine.predict_frame(one)
            times.append((time.perf_counter() - started) * 1000)
        out[f"v{version}"] = Timing(
            engine.kind,
            bootstrap.rounded(float(np.percentile(times, 50)), 6),
            bootstrap.rounded(float(np.percentile(times, 99)), 6),
        )
    return Latency(len(rows), out)


def compare(
    settings: Settings,
    version: int | None = None,
    until: datetime | None = None,
    now: datetime | None = None,
    log_to_mlflow: bool = True,
    seed: int = 0,
    measure_latency: bool = True,
    engine: str | None = None,
) -> Comparison:
    """Compare challenger ``version`` (default: the one in the slot) with production."""
    now = now or datetime.now(UTC)
    if version is None:
        found = routing.slot(settings)
        if found is None:
            raise ChurnopsError(
                "no challenger is set: `churnops challenger set N`, or name a past challenger "
                "with --version N"
            )
        version = found.version
    scope = Scope(
        settings.model_name,
        settings.alias,
        None,
        until,
        now,
        timedelta(days=settings.churn_horizon_days),
    )
    with compare_summaries.open_found(
        settings, engine or settings.engine, version, until, now, scope
    ) as rows:
        production_versions = rows.production_versions
        shadow = None if rows.pairs is None else _shadow(rows.pairs, seed)
        canary = (
            None
            if rows.canary is None or rows.production is None
            else _canary(rows.production, rows.canary, seed)
        )
    if shadow is not None and shadow.labelled:
        verdict = _verdict(shadow.f1, shadow.labelled, "paired, shadow rows")
    elif canary is not None and min(canary.labelled.production, canary.labelled.challenger):
        labelled = canary.labelled.production + canary.labelled.challenger
        verdict = _verdict(canary.f1, labelled, "unpaired, canary rows")
    else:
        verdict = _verdict(None, 0, "shadow" if shadow is not None else "canary")
        if shadow is None and canary is None:
            verdict = replace(
                verdict, message=f"no rows scored by v{version} as a challenger in the store yet"
            )
    result = Comparison(
        model=settings.model_name,
        challenger=version,
        until=(until or now).isoformat(),
        production_versions=production_versions,
        shadow=shadow,
        canary=canary,
        verdict=verdict,
    )
    if measure_latency and result.found_rows:
        result = replace(result, latency=latency(settings, [*production_versions[-1:], version]))
    if log_to_mlflow and result.found_rows:
        result = replace(result, run_id=_log(settings, result, now))
    return result


def _chart(report: Comparison) -> bytes:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4), layout="constrained")
    axes = figure.add_subplot()
    names: list[str] = []
    values: list[float] = []
    lows: list[float] = []
    highs: list[float] = []
    for mode, section in (("shadow", report.shadow), ("canary", report.canary)):
        f1 = None if section is None else section.f1
        if f1 is None:
            continue
        a, b, difference, low, high = f1.a, f1.b, f1.difference, f1.low, f1.high
        if a is None or b is None or difference is None or low is None or high is None:
            continue
        names += [f"production\n({mode})", f"v{report.challenger}\n({mode})"]
        values += [a, b]
        # NB: the interval is of the difference; drawn on the challenger's bar.
        lows += [0.0, b - (difference - low)]
        highs += [0.0, (high - difference) + b]
    if names:
        errors = np.array(
            [
                [v - lo if lo else 0 for v, lo in zip(values, lows, strict=True)],
                [hi - v if hi else 0 for v, hi in zip(values, highs, strict=True)],
            ]
        )
        axes.bar(
            names,
            values,
            yerr=np.abs(errors),
            capsize=6,
            color=["#999", "#3a7"] * (len(names) // 2),
        )
        axes.set_ylabel("realised F1 on labelled rows")
    else:
        axes.text(0.5, 0.5, "no labelled rows yet", ha="center", va="center")
    axes.set_title(f"{report.verdict.result}: {report.verdict.basis}")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _log(settings: Settings, report: Comparison, now: datetime) -> str:
    stamp = int(now.timestamp() * 1000)
    metrics = []
    sections: tuple[tuple[str, Shadow | Canary | None], ...] = (
        ("shadow", report.shadow),
        ("canary", report.canary),
    )
    for mode, section in sections:
        if section is None:
            continue
        for key, found in (("f1", section.f1), ("roc_auc", section.roc_auc)):
            if found is not None and found.difference is not None:
                metrics.append((f"{mode}.{key}_difference", float(found.difference), stamp, 0))
        if isinstance(section, Shadow) and section.agreement is not None:
            metrics.append((f"{mode}.agreement", float(section.agreement), stamp, 0))
    tags = {
        "churnops.compare": "true",
        "challenger": str(report.challenger),
        "verdict": report.verdict.result,
    }
    return monitoring_log.log_monitoring(
        settings,
        monitoring_log.MonitorLog(metrics, tags, report.to_dict(), {"compare.png": _chart(report)}),
        run_name=f"compare v{report.challenger}",
    )
