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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.compute as pc
from scipy import stats

from churnops import registry
from churnops.config import Settings
from churnops.errors import ChurnopsError
from churnops.monitoring import labels, paired, store
from churnops.serving import routing

# NB: below this many labelled rows per side no verdict is given (the intervals mean little).
MIN_LABELLED = 30
# NB: beyond this many times the labelled rows so far, "rows needed" is no practical advice.
PRACTICAL = 100
COLUMNS = (
    "prediction_id",
    "time",
    "version",
    "alias",
    "role",
    "probability",
    "label",
    "customer_id",
)


@dataclass
class Comparison:
    """One comparison: the report, and the verdict it reached."""

    report: dict[str, Any]
    run_id: str | None = None

    @property
    def verdict(self) -> str:
        """better / worse / no evidence yet."""
        return str(self.report["verdict"]["result"])


def _r(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 6)


def _rows(settings: Settings, version: int, until: datetime | None) -> pd.DataFrame:
    table = store.read_predictions(
        store.open_store(settings.store_uri), settings.model_name, until=until, columns=COLUMNS
    )
    if "role" not in table.column_names:
        return pd.DataFrame(columns=list(COLUMNS))
    role = pc.fill_null(table["role"], "production")
    challenger = pc.and_(pc.equal(table["version"], version), pc.not_equal(role, "production"))
    production = pc.and_(pc.equal(table["alias"], settings.alias), pc.equal(role, "production"))
    frame = table.filter(pc.or_(challenger, production)).to_pandas()
    frame["role"] = frame["role"].fillna("production")
    return frame


def _shares(rows: pd.DataFrame) -> dict[str, Any]:
    return {"rows": len(rows), "predicted_churn": _r(rows["label"].mean()) if len(rows) else None}


def _shadow(pairs: pd.DataFrame, seed: int) -> tuple[dict[str, Any], paired.Difference | None]:
    """Paired: production (a) and challenger (b) on the same rows; the section and its F1
    difference (None before outcomes)."""
    agree = float((pairs["label_a"] == pairs["label_b"]).mean())
    rho = stats.spearmanr(pairs["probability_a"], pairs["probability_b"]).statistic
    section: dict[str, Any] = {
        "rows": len(pairs),
        "agreement": _r(agree),
        "rank_correlation": _r(float(rho)) if len(pairs) > 2 else None,
        "predicted_churn": {
            "production": _r(pairs["label_a"].mean()),
            "challenger": _r(pairs["label_b"].mean()),
        },
    }
    known = pairs[pairs["outcome"].notna()]
    section["labelled"] = len(known)
    f1 = None
    if len(known):
        truth = known["outcome"].to_numpy(int)
        a, b = known["label_a"].to_numpy(int), known["label_b"].to_numpy(int)
        f1 = paired.paired_f1(truth, a, b, seed)
        section["f1"] = f1.to_dict()
        section["mcnemar"] = paired.mcnemar(truth, a, b)
        section["roc_auc"] = paired.paired_auc(
            truth, known["probability_a"].to_numpy(), known["probability_b"].to_numpy()
        ).to_dict()
    return section, f1


def _canary(
    production: pd.DataFrame, canary: pd.DataFrame, seed: int
) -> tuple[dict[str, Any], paired.Difference | None]:
    """Unpaired: production's customers (a) and the canary's (b) over the same period; the
    section and its F1 difference (None before outcomes on both sides)."""
    section: dict[str, Any] = {
        "rows": {"production": len(production), "challenger": len(canary)},
        "predicted_churn": {
            "production": _shares(production)["predicted_churn"],
            "challenger": _shares(canary)["predicted_churn"],
        },
    }
    a, b = production[production["outcome"].notna()], canary[canary["outcome"].notna()]
    section["labelled"] = {"production": len(a), "challenger": len(b)}
    f1 = None
    if len(a) and len(b):
        ta, tb = a["outcome"].to_numpy(int), b["outcome"].to_numpy(int)
        la, lb = a["label"].to_numpy(int), b["label"].to_numpy(int)
        f1 = paired.unpaired_f1(ta, la, tb, lb, seed)
        section["f1"] = f1.to_dict()
        section["fisher"] = paired.fisher(ta, la, tb, lb)
        section["roc_auc"] = paired.unpaired_auc(
            ta, a["probability"].to_numpy(), tb, b["probability"].to_numpy()
        ).to_dict()
    return section, f1


def _verdict(f1: paired.Difference | None, labelled: int, basis: str) -> dict[str, Any]:
    if f1 is None or f1.difference is None:
        return {
            "result": "no evidence yet",
            "basis": basis,
            "labelled": labelled,
            "message": "no labelled rows yet: add churn outcomes (`churnops labels add`)",
            "rows_needed": None,
        }
    result = None if labelled < MIN_LABELLED else paired.decided(f1)
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
        elif labelled < MIN_LABELLED:
            text += f"; fewer than {MIN_LABELLED} labelled rows"
    return {
        "result": result or "no evidence yet",
        "basis": basis,
        "labelled": labelled,
        "f1_difference": _r(f1.difference),
        "low": _r(f1.low),
        "high": _r(f1.high),
        "rows_needed": more if result is None else 0,
        "message": text,
    }


LATENCY_ROWS = 200


def latency(settings: Settings, versions: list[int]) -> dict[str, Any] | None:
    """Each version's engine time per single-row call, in ms (p50, p99), measured here on the
    same rows: up to 200 of the last version's training reference. The store holds no timings
    (shadow rows are scored in batches off the request path); the API's Prometheus histogram
    churnops_scoring_duration_seconds has the challenger's live figures."""
    import time

    engines = {v: registry.load_version(settings, v).engine for v in versions}
    reference = registry.load_reference(settings, registry.get_version(settings, versions[-1]))
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
        out[f"v{version}"] = {
            "engine": engine.kind,
            "p50_ms": _r(float(np.percentile(times, 50))),
            "p99_ms": _r(float(np.percentile(times, 99))),
        }
    return {"rows": len(rows), "versions": out}


def compare(
    settings: Settings,
    version: int | None = None,
    until: datetime | None = None,
    now: datetime | None = None,
    log_to_mlflow: bool = True,
    seed: int = 0,
    measure_latency: bool = True,
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
    frame = _rows(settings, version, until)
    stored = store.read_labels(store.open_store(settings.store_uri))
    joined = labels.join(
        frame,
        None if stored is None else stored.to_pandas(),
        pd.Timedelta(days=settings.churn_horizon_days),
        pd.Timestamp(now),
    ).frame
    production = joined[joined["role"] == "production"]
    shadow_rows = joined[joined["role"] == "shadow"]
    canary_rows = joined[joined["role"] == "canary"]
    report: dict[str, Any] = {
        "model": settings.model_name,
        "challenger": version,
        "until": (until or now).isoformat(),
        "production_versions": sorted(int(v) for v in production["version"].unique()),
        "shadow": None,
        "canary": None,
    }
    shadow = canary = None
    shadow_f1 = canary_f1 = None
    if len(shadow_rows):
        pairs = production[["prediction_id", "probability", "label", "outcome"]].merge(
            shadow_rows[["prediction_id", "probability", "label"]],
            on="prediction_id",
            suffixes=("_a", "_b"),
        )
        shadow, shadow_f1 = _shadow(pairs, seed)
        report["production_versions"] = sorted(
            int(v)
            for v in production.loc[
                production["prediction_id"].isin(pairs["prediction_id"]), "version"
            ].unique()
        )
    if len(canary_rows):
        start, end = canary_rows["time"].min(), canary_rows["time"].max()
        period = production[(production["time"] >= start) & (production["time"] <= end)]
        canary, canary_f1 = _canary(period, canary_rows, seed)
    if shadow is not None and shadow["labelled"]:
        report["verdict"] = _verdict(shadow_f1, shadow["labelled"], "paired, shadow rows")
    elif canary is not None and min(canary["labelled"].values()):
        labelled = sum(canary["labelled"].values())
        report["verdict"] = _verdict(canary_f1, labelled, "unpaired, canary rows")
    else:
        report["verdict"] = _verdict(None, 0, "shadow" if shadow is not None else "canary")
        if shadow is None and canary is None:
            report["verdict"]["message"] = (
                f"no rows scored by v{version} as a challenger in the store yet"
            )
    report["shadow"], report["canary"] = shadow, canary
    report["latency"] = None
    if measure_latency and (shadow is not None or canary is not None):
        report["latency"] = latency(settings, [*report["production_versions"][-1:], version])
    result = Comparison(report)
    if log_to_mlflow and (shadow is not None or canary is not None):
        result.run_id = _log(settings, report, now)
        report["run_id"] = result.run_id
    return result


def _chart(report: dict[str, Any]) -> bytes:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4), layout="constrained")
    axes = figure.add_subplot()
    names, values, lows, highs = [], [], [], []
    for mode in ("shadow", "canary"):
        section = report.get(mode)
        if section and section.get("f1"):
            f1 = section["f1"]
            for who, key in (("production", "a"), (f"v{report['challenger']}", "b")):
                names.append(f"{who}\n({mode})")
                values.append(f1[key])
            # NB: the interval is of the difference; drawn on the challenger's bar.
            lows += [0.0, f1["b"] - (f1["difference"] - f1["low"])]
            highs += [0.0, (f1["high"] - f1["difference"]) + f1["b"]]
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
    axes.set_title(f"{report['verdict']['result']}: {report['verdict'].get('basis', '')}")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _log(settings: Settings, report: dict[str, Any], now: datetime) -> str:
    stamp = int(now.timestamp() * 1000)
    metrics = []
    for mode in ("shadow", "canary"):
        section = report.get(mode) or {}
        for key in ("f1", "roc_auc"):
            found = section.get(key) or {}
            if found.get("difference") is not None:
                metrics.append((f"{mode}.{key}_difference", float(found["difference"]), stamp, 0))
        if section.get("agreement") is not None:
            metrics.append((f"{mode}.agreement", float(section["agreement"]), stamp, 0))
    tags = {
        "churnops.compare": "true",
        "challenger": str(report["challenger"]),
        "verdict": report["verdict"]["result"],
    }
    return registry.log_monitoring(
        settings,
        registry.MonitorLog(metrics, tags, report, {"compare.png": _chart(report)}),
        run_name=f"compare v{report['challenger']}",
    )
