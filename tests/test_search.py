"""Models on tables shaped like real churn exports: high-cardinality text columns, a row number
beside the customer id, and `train --search BUDGET` (against a real tracking server)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io
from click.testing import Result
from mlflow.tracking import MlflowClient

from churnops import data, safety, search, training
from churnops.config import Settings
from churnops.predict import predict
from tests.conftest import ok

BUDGET = 10.0


def bank_export(rows: int, seed: int, branch_signal: bool = False) -> pd.DataFrame:
    """A bank-churn export: RowNumber, a shuffled CustomerId, a Surname of ~1,000 values that
    carries no signal, a few features that do; with ``branch_signal``, a 600-value Branch
    column whose branches differ in churn."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, size=rows)
    active = rng.integers(0, 2, size=rows)
    products = rng.integers(1, 5, size=rows)
    geography = rng.choice(["France", "Germany", "Spain"], size=rows)
    logit = -1.5 + 0.05 * (age - 40) - 1.0 * active + 0.8 * (geography == "Germany")
    logit += np.where(products >= 3, 1.5, 0.0)
    frame = pd.DataFrame(
        {
            "RowNumber": np.arange(1, rows + 1),
            "CustomerId": rng.permutation(np.arange(15_600_000, 15_600_000 + rows)),
            "Surname": [f"Name{i}" for i in rng.integers(0, 1_000, size=rows)],
            "Age": age,
            "IsActiveMember": active,
            "NumOfProducts": products,
            "Geography": geography,
        }
    )
    if branch_signal:
        branch = rng.integers(0, 600, size=rows)
        logit = logit + rng.normal(0.0, 1.5, size=600)[branch]
        frame["Branch"] = [f"BR{b:03d}" for b in branch]
    frame["Exited"] = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    return frame


def test_a_search_budget_reads_as_seconds_and_anything_else_is_refused_with_the_forms() -> None:
    assert search.parse_budget("60s") == 60.0
    assert search.parse_budget("5m") == 300.0
    assert search.parse_budget("90") == 90.0
    assert search.parse_budget("1h") == 3600.0
    assert search.parse_budget("auto") is None
    with pytest.raises(ValueError, match="such as 60s, 5m or 1h"):
        search.parse_budget("fast")
    with pytest.raises(ValueError, match="between 5s and 24h"):
        search.parse_budget("1s")


def test_a_table_with_a_row_number_and_a_customer_id_is_keyed_by_the_customer_id() -> None:
    dataset = data.from_frame(bank_export(800, seed=1), target="Exited")
    assert dataset.id_column == "CustomerId"
    assert dataset.report.dropped_columns["RowNumber"] == data.ROW_NUMBER
    assert dataset.report.dropped_columns["CustomerId"] == data.IDENTIFIER
    assert not {"RowNumber", "CustomerId"} & set(dataset.features.columns)


def test_a_high_cardinality_column_without_signal_is_dropped_and_the_report_says_why() -> None:
    dataset = data.from_frame(bank_export(3000, seed=2), target="Exited")
    assert "Surname" not in dataset.features.columns and dataset.encoded == ()
    why = dataset.report.dropped_columns["Surname"]
    assert why.startswith("high-cardinality text without signal (")
    assert "cross-fitted encoding AUC" in why
    assert "Surname (high-cardinality text without signal" in dataset.report.render()
    # NB: the telecom table's 51 states stay one-hot categories: not high-cardinality.
    assert data.HIGH_CARDINALITY >= 51


def test_a_high_cardinality_column_with_signal_is_target_encoded_and_served_for_new_values(
    tmp_path: Path,
) -> None:
    dataset = data.from_frame(bank_export(3000, seed=3, branch_signal=True), target="Exited")
    assert dataset.encoded == ("Branch",) and "Branch" not in dataset.categorical
    assert dataset.report.columns["Branch"].startswith(data.TARGET_ENCODED + " (")
    assert "Branch (categorical, target-encoded" in dataset.report.render()
    result = training.train(dataset, seed=3, kind="logreg")
    plain = training.train(
        data.from_frame(
            bank_export(3000, seed=3, branch_signal=True).drop(columns=["Branch"]),
            target="Exited",
        ),
        seed=3,
        kind="logreg",
    )
    assert result.metrics["roc_auc"] > plain.metrics["roc_auc"] + 0.02
    # NB: the encoder converts to ONNX, so the fast engine still serves such a version.
    assert result.export.onnx is not None, result.export.reason
    row = result.holdout_features.head(1).assign(Branch="a branch never seen")
    scored = predict(result.model, row)
    assert 0.0 < scored.probability[0] < 1.0
    needed = skops.io.get_untrusted_types(data=skops.io.dumps(result.model))
    assert set(needed) <= safety.ALLOWED_SKOPS_TYPES


def test_a_random_forest_from_a_search_loads_within_the_pinned_allow_list() -> None:
    dataset = data.from_frame(bank_export(1200, seed=4, branch_signal=True), target="Exited")
    result = training.train(dataset, seed=4, kind="auto", config=("rf", {"n_estimators": 20}))
    assert result.kind == "rf"
    needed = skops.io.get_untrusted_types(data=skops.io.dumps(result.model))
    assert "sklearn.tree._tree.Tree" in needed
    assert set(needed) <= safety.ALLOWED_SKOPS_TYPES


def test_train_search_honours_its_budget_never_loses_to_the_default_on_cv_and_is_recorded(
    cli: Callable[..., Result], settings: Settings, tmp_path: Path
) -> None:
    table = tmp_path / "bank.csv"
    bank_export(2000, seed=5).to_csv(table, index=False)
    trained = ok(
        cli("train", "--json", "--data", str(table), "--target", "Exited", "--search", "10s")
    )
    found = trained["search"]
    assert found["budget_seconds"] == BUDGET
    assert found["seconds"] <= 1.1 * BUDGET, found
    # NB: the defaults are `--model auto`'s candidates, scored on the same split and folds.
    auto = training.train(data.load_table(table, target="Exited"), seed=42, kind="auto")
    assert {k: v for k, v in trained["cv_f1"].items() if k != "search"} == auto.cv_f1
    assert found["default_cv_f1"] == max(auto.cv_f1.values())
    assert found["best"]["cv_f1"] >= found["default_cv_f1"]
    assert trained["cv_f1"]["search"] == found["best"]["cv_f1"]
    assert found["completed_trials"] >= len(auto.cv_f1)
    assert trained["model_type"] == found["best"]["family"]
    assert "Surname" in trained["data_report"]["dropped_columns"]

    client = MlflowClient(settings.tracking_uri, registry_uri=settings.tracking_uri)
    version = client.get_model_version(settings.model_name, str(trained["version"]))
    assert version.tags["id_column"] == "CustomerId"
    run = client.get_run(trained["run_id"])
    params = run.data.params
    assert float(params["search_budget_seconds"]) == BUDGET
    assert int(params["search_trials"]) == found["completed_trials"]
    assert params["search_best_family"] == found["best"]["family"]
    assert json.loads(params["search_best_params"]) == found["best"]["params"]
    history = client.get_metric_history(trained["run_id"], "search_cv_f1")
    assert len(history) == found["completed_trials"]
    assert max(m.value for m in history) == found["best"]["cv_f1"]
    folder = Path(client.download_artifacts(trained["run_id"], "search", str(tmp_path)))
    trials = json.loads((folder / "trials.json").read_text())["trials"]
    assert [t["default"] for t in trials[:2]] == [True, True]
    assert all({"family", "params", "cv_f1", "seconds"} <= set(t) for t in trials)
    # NB: it ends past 90% of the budget unless even the cheapest trial would not have fitted
    # in what was left (the suite's machine is shared, and its fits slow down under load).
    left = BUDGET - found["seconds"]
    cheapest = min(t["seconds"] for t in trials)
    assert left <= 0.1 * BUDGET or left < search.COST_MARGIN * cheapest, found
    # NB: reproducing refits the configuration the search chose, not the search.
    assert ok(cli("reproduce", trained["run_id"], "--json"))["identical"] is True
