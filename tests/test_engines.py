"""The monitor's query engines agree: the same store read in memory (pandas), by DuckDB and by
Spark gives the same summaries and the same report (ROC AUC within its stated bound)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute
import pytest

from churnops.config import Settings
from churnops.monitoring import compare, compare_summaries, drift, labels, monitor, store
from churnops.monitoring import summary as summaries
from churnops.monitoring.estimate import Calibration
from churnops.registry.runs import Reference

START = datetime(2026, 11, 1, tzinfo=UTC)
NOW = datetime(2026, 12, 20, tzinfo=UTC)
CALIBRATION = Calibration(True, x=[0.05, 0.2, 0.5, 0.8], y=[0.02, 0.15, 0.6, 0.9])
COLUMNS = ["minutes", "calls", "plan", "flag", "charge"]


def _inputs(rng: np.random.Generator, rows: int, shift: float) -> dict[str, np.ndarray]:
    return {
        "minutes": rng.normal(180 + shift, 50, rows).round(1),
        "calls": rng.poisson(1.5 + shift / 50, rows).astype(np.int64),
        "plan": rng.choice(["basic", "plus", "max"], rows, p=[0.5, 0.3, 0.2]),
        "flag": rng.integers(0, 2, rows).astype(np.int64),
        # NB: continuous: more distinct values than the summaries keep one by one when told so.
        "charge": rng.gamma(2.0, 20.0 + shift, rows),
    }


def _store(root: Path, rows: int = 6_000, seed: int = 7) -> tuple[Settings, Reference]:
    rng = np.random.default_rng(seed)
    customers = np.array([f"c{i}" for i in rng.integers(0, rows // 3, rows)])
    seconds = START.timestamp() + np.sort(rng.uniform(0, 20 * 86_400, rows))
    version = np.where(seconds < START.timestamp() + 12 * 86_400, 1, 2)
    inputs = _inputs(rng, rows, shift=0.0)
    inputs["minutes"][version == 2] += 25
    probability = rng.beta(2, 5, rows)
    probability[:3] = [0.0, 1.0, 0.5]
    ids = [f"p{i}" for i in range(rows)]
    table = pa.table(
        {
            "prediction_id": ids,
            "time": pa.array((seconds * 1e6).astype(np.int64)).cast(store.TIMESTAMP),
            "served_at": pa.array((seconds * 1e6).astype(np.int64)).cast(store.TIMESTAMP),
            "source": ["api"] * rows,
            "model": ["churn_model"] * rows,
            "version": version.astype(np.int64),
            "alias": np.where(rng.uniform(size=rows) < 0.97, "production", "staging"),
            "role": ["production"] * rows,
            "threshold": [0.4] * rows,
            "probability": probability,
            "label": (probability >= 0.4).astype(np.int8),
            "customer_id": pa.array(
                [None if i % 50 == 0 else c for i, c in enumerate(customers)], pa.string()
            ),
            "request_id": ["r"] * rows,
            **{f"{store.INPUT_PREFIX}{k}": v for k, v in inputs.items()},
        }
    )
    settings = Settings(data_dir=root, prediction_store=str(root / "store"))
    target = store.settings_store(settings)
    shadowed = table.filter(pa.compute.equal(table["alias"], "production")).slice(0, rows // 3)
    noise = rng.normal(0, 0.05, shadowed.num_rows)
    shadow_probability = np.clip(shadowed["probability"].to_numpy() + noise, 0, 1)
    canary = table.slice(rows // 2, rows // 10)
    challenger = pa.concat_tables(
        [
            shadowed.set_column(
                shadowed.schema.get_field_index("probability"),
                "probability",
                pa.array(shadow_probability),
            )
            .set_column(
                shadowed.schema.get_field_index("label"),
                "label",
                pa.array((shadow_probability >= 0.4).astype(np.int8)),
            )
            .set_column(
                shadowed.schema.get_field_index("role"),
                "role",
                pa.array(["shadow"] * shadowed.num_rows),
            ),
            canary.set_column(
                canary.schema.get_field_index("role"),
                "role",
                pa.array(["canary"] * canary.num_rows),
            ).set_column(
                canary.schema.get_field_index("prediction_id"),
                "prediction_id",
                pa.array([f"k{i}" for i in range(canary.num_rows)]),
            ),
        ]
    )
    challenger = challenger.set_column(
        challenger.schema.get_field_index("version"),
        "version",
        pa.array(np.full(challenger.num_rows, 3, dtype=np.int64)),
    ).set_column(
        challenger.schema.get_field_index("alias"),
        "alias",
        pa.array(["challenger"] * challenger.num_rows),
    )
    store.write_predictions(target, challenger)
    # NB: several files a day, as the API writes them.
    for part in range(0, rows, 700):
        store.write_predictions(target, table.slice(part, 700))
    churn_time = pd.to_datetime(seconds + rng.uniform(0, 40, rows) * 86_400, unit="s", utc=True)
    by_customer = pd.DataFrame(
        {
            "key_kind": labels.CUSTOMER_ID,
            "key": customers,
            "outcome": (rng.uniform(size=rows) < probability).astype(np.int8),
            "time": churn_time.astype("datetime64[us, UTC]"),
        }
    ).iloc[::2]
    by_id = pd.DataFrame(
        {
            "key_kind": labels.PREDICTION_ID,
            "key": ids[1::7],
            "outcome": (rng.uniform(size=len(ids[1::7])) < 0.3).astype(np.int8),
            "time": pd.NaT,
        }
    )
    for name, frame in (("a", by_customer), ("b", by_id), ("c", by_customer.head(40))):
        flipped = frame.assign(outcome=1 - frame["outcome"]) if name == "c" else frame
        outcomes = labels.Outcomes(frame["key_kind"].iloc[0], flipped.reset_index(drop=True), 0)
        labels.keep(target, outcomes)
    # NB: an outcome file as an earlier churnops wrote it: a time without a zone, in ms.
    legacy = by_customer.iloc[1::40].assign(
        time=lambda f: f["time"].dt.tz_localize(None).astype("datetime64[ms]"),
        added_at=pd.Timestamp("2026-11-01", tz="UTC"),
        row=lambda f: np.arange(len(f)),
        outcome=lambda f: 1 - f["outcome"],
    )
    legacy.to_parquet(Path(target.path(store.LABELS, "legacy.parquet")), index=False)
    reference_rows = pd.DataFrame(_inputs(np.random.default_rng(1), 900, shift=0.0))
    scores = pd.DataFrame(
        {
            "probability": np.random.default_rng(2).beta(2, 5, 900),
            "outcome": np.random.default_rng(3).integers(0, 2, 900),
        }
    )
    scores["label"] = (scores["probability"] >= 0.4).astype(int)
    kinds = {c: "categorical" if c == "plan" else "numeric" for c in COLUMNS}
    reference = Reference(reference_rows, scores, CALIBRATION.to_dict(), kinds)
    return settings, reference


def _scope(since: datetime | None = None) -> summaries.Scope:
    return summaries.Scope("churn_model", "production", since, NOW, NOW, timedelta(days=30))


def _summaries(settings: Settings, engine: str) -> tuple[dict, int, list[int]]:
    with summaries.open_source(settings, engine, _scope()) as source:
        versions = source.versions()
        found = source.summaries(
            timedelta(days=1),
            {v: CALIBRATION for v in versions},
            {v: COLUMNS for v in versions},
        )
        return found, source.conflicts(), versions


def _report(found: summaries.VersionSummary, reference: Reference) -> dict:
    known = monitor._Version(None, reference)
    options = monitor.Options(window=timedelta(days=1))
    matured = pd.Timestamp(NOW) - pd.Timedelta(days=30)
    return monitor._version_report(found, known, options, matured, 0).to_dict()


def _same_summaries(a: summaries.VersionSummary, b: summaries.VersionSummary) -> None:
    assert (a.rows, a.first_us, a.last_us) == (b.rows, b.first_us, b.last_us)
    pd.testing.assert_frame_equal(
        a.cells.reset_index(drop=True), b.cells.reset_index(drop=True), rtol=1e-9
    )
    pd.testing.assert_frame_equal(
        a.fine.reset_index(drop=True), b.fine.reset_index(drop=True), rtol=1e-9
    )
    for name in COLUMNS:
        left = a.columns[name].as_kind(None)
        right = b.columns[name].as_kind(None)
        assert dict(zip(left.values, left.counts, strict=True)) == dict(
            zip(right.values, right.counts, strict=True)
        ), name


def _without_auc(report: dict) -> dict:
    out = dict(report)
    out["realised"] = {k: v for k, v in report["realised"].items() if k != "roc_auc"}
    out["estimated"] = {k: v for k, v in (report["estimated"] or {}).items() if k != "roc_auc"}
    out.pop("roc_auc_within")
    return out


def _approx(value: object) -> object:
    """The value with every float compared to 1e-9 (sums in another order differ in the last
    bits)."""
    if isinstance(value, dict):
        return {k: _approx(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_approx(v) for v in value]
    if isinstance(value, float) and not isinstance(value, bool):
        return pytest.approx(value, rel=1e-9, abs=1e-12)
    return value


def _agree(settings: Settings, reference: Reference, engine: str) -> None:
    expected, conflicts, versions = _summaries(settings, "pandas")
    found, found_conflicts, found_versions = _summaries(settings, engine)
    assert versions == found_versions == [1, 2]
    assert found_conflicts == conflicts > 0
    for version in versions:
        _same_summaries(expected[version], found[version])
        exact, summarised = (
            _report(expected[version], reference),
            _report(found[version], reference),
        )
        assert _without_auc(summarised) == _approx(_without_auc(exact))
        within = summarised["roc_auc_within"]
        assert set(within) == {"realised", "estimated"} and exact["roc_auc_within"] == {}
        realised_gap = (
            summarised["realised"]["roc_auc"]["value"] - exact["realised"]["roc_auc"]["value"]
        )
        assert abs(realised_gap) <= within["realised"]
        estimated_gap = summarised["estimated"]["roc_auc"] - exact["estimated"]["roc_auc"]
        assert abs(estimated_gap) <= within["estimated"] + 5e-5  # NB: both rounded to 4 places


def test_duckdb_gives_the_in_memory_report_from_the_store(tmp_path: Path) -> None:
    settings, reference = _store(tmp_path)
    _agree(settings, reference, "duckdb")


def test_a_continuous_column_beyond_the_distinct_limit_is_summarised_within_its_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, reference = _store(tmp_path)
    monkeypatch.setattr(summaries, "MAX_DISTINCT", 1_000)
    monkeypatch.setattr(summaries, "GRID_CELLS", 256)
    exact, _, _ = _summaries(settings, "pandas")
    found, _, _ = _summaries(settings, "duckdb")
    ref = reference.rows["charge"].to_numpy(dtype=float)
    for version in (1, 2):
        histogram = found[version].columns["charge"]
        assert histogram.spread is not None and len(histogram.counts) <= 256
        assert histogram.rows == exact[version].columns["charge"].rows
        bound = drift._approximation(histogram.as_kind("numeric"), ref)
        _, d_exact = drift.ks_p_value(ref, exact[version].columns["charge"].as_kind("numeric"))
        _, d_histogram = drift.ks_p_value(ref, histogram.as_kind("numeric"))
        assert bound is not None and abs(d_histogram - d_exact) <= bound
        charge = next(
            c
            for c in _report(found[version], reference)["drift"]["columns"]
            if c["column"] == "charge"
        )
        assert "histogram" in charge["note"]


@pytest.mark.slow
def test_spark_gives_the_in_memory_report_from_the_store(tmp_path: Path) -> None:
    settings, reference = _store(tmp_path, rows=3_000)
    _agree(settings, reference, "spark")


def _comparison(settings: Settings, engine: str) -> dict:
    scope = summaries.Scope("churn_model", "production", None, None, NOW, timedelta(days=30))
    with compare_summaries.open_found(settings, engine, 3, None, NOW, scope) as found:
        assert found.pairs is not None and found.canary is not None
        assert found.production is not None
        return {
            "versions": found.production_versions,
            "shadow": compare._shadow(found.pairs, 0).to_dict(),
            "canary": compare._canary(found.production, found.canary, 0).to_dict(),
        }


def _binned_away(document: dict) -> dict:
    """The figures binning may move (rank correlation, ROC AUC) out of a comparison."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in document.items()}
    out["shadow"].pop("rank_correlation")
    for section in ("shadow", "canary"):
        out[section].pop("roc_auc")
    return out


@pytest.mark.parametrize("engine", ["duckdb", pytest.param("spark", marks=pytest.mark.slow)])
def test_compare_reads_the_same_pairs_and_counts_through_every_engine(
    tmp_path: Path, engine: str
) -> None:
    settings, _ = _store(tmp_path, rows=3_000)
    exact, found = _comparison(settings, "pandas"), _comparison(settings, engine)
    assert found["shadow"]["labelled"] > 0 and found["canary"]["labelled"]["challenger"] > 0
    assert _binned_away(found) == _approx(_binned_away(exact))
    assert found["shadow"]["rank_correlation"] == pytest.approx(
        exact["shadow"]["rank_correlation"], abs=1e-2
    )
    for section in ("shadow", "canary"):
        test = found[section]["roc_auc"]["test"]
        bound = float(test.rsplit("within ", 1)[1].rstrip(")"))
        for side in ("a", "b"):
            gap = found[section]["roc_auc"][side] - exact[section]["roc_auc"][side]
            assert abs(gap) <= bound


def test_labels_add_counts_the_same_unknown_keys_through_every_engine(tmp_path: Path) -> None:
    settings, _ = _store(tmp_path, rows=1_000)
    outcomes = tmp_path / "outcomes.csv"
    pd.DataFrame(
        {
            "customer_id": ["c1", "c2", "nobody", "nobody", "c3", "ghost"],
            "churn": ["yes", "no", "yes", "yes", "no", "no"],
            "time": "2026-11-20",
        }
    ).to_csv(outcomes, index=False)
    target = store.settings_store(settings)
    counted = {
        engine: labels.add(
            target,
            "churn_model",
            outcomes,
            "churn",
            settings=settings.model_copy(update={"engine": engine}),
        ).unknown
        for engine in ("pandas", "duckdb")
    }
    assert counted == {"pandas": 2, "duckdb": 2}
