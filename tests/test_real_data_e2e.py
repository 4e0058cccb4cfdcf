"""The real telecom churn table end to end: train with `--model auto`, promote, serve its own
fields over HTTP, and batch-score the held-out file, all as a user would run it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from tests.conftest import TELECOM_HELD_OUT, run_churnops, start_api, stop_api


def _telecom_customer(row: pd.Series) -> dict[str, object]:
    """One held-out customer as a JSON body: every column but the target."""
    return {str(k): (v.item() if hasattr(v, "item") else v) for k, v in row.drop("Churn").items()}


def test_a_model_trained_on_the_telecom_table_is_served_with_its_fields_and_scores_a_file(
    env: dict[str, str], telecom_csv: Path, tmp_path: Path
) -> None:
    trained = run_churnops(
        "train", "--data", str(telecom_csv), "--target", "Churn", "--json", env=env, timeout=300
    )
    assert trained.returncode == 0, trained.stderr
    report = json.loads(trained.stdout)
    assert report["model_type"] == "hgb" and set(report["cv_f1"]) == {"logreg", "hgb"}
    assert report["metrics"]["f1"] >= 0.80 and report["metrics"]["roc_auc"] >= 0.92
    assert report["gate_passed"] is True

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    evidence = {a.path for a in client.list_artifacts(report["run_id"], "evidence")}
    for name in ("confusion_matrix", "roc_curve", "precision_recall_curve"):
        assert {f"evidence/{name}.png", f"evidence/{name}.json"} <= evidence
    assert {"evidence/permutation_importance.png", "evidence/data_report.png"} <= evidence
    params = client.get_run(report["run_id"]).data.params
    assert float(params["threshold"]) == report["threshold"]

    promoted = run_churnops("promote", "--version", str(report["version"]), "--json", env=env)
    assert promoted.returncode == 0, promoted.stderr

    held_out = pd.read_csv(TELECOM_HELD_OUT)
    api = start_api(env, tmp_path / "serve.log")
    try:
        api.wait_until_every_worker_serves()
        schema = api.client.get("/openapi.json").json()["components"]["schemas"]["Customer"]
        assert "Account length" in schema["properties"] and "Churn" not in schema["properties"]
        assert schema["properties"]["International plan"]["type"] == "string"
        customer = _telecom_customer(held_out.iloc[0])
        answered = api.client.post("/predict", json=customer)
        assert answered.status_code == 200, answered.text
        body = answered.json()
        assert body["model_version"] == report["version"] and 0 <= body["probability"] <= 1
        assert body["prediction"] == int(body["probability"] >= report["threshold"])
        wrong = api.client.post("/predict", json={**customer, "Account length": "long"})
        assert wrong.status_code == 422
        [error] = wrong.json()["detail"]
        assert error["loc"] == ["body", "Account length"] and error["type"] == "int_type"
    finally:
        stop_api(api)

    out = tmp_path / "scores.csv"
    scored = run_churnops("score", str(TELECOM_HELD_OUT), str(out), "--json", env=env)
    assert scored.returncode == 0, scored.stderr
    summary = json.loads(scored.stdout)
    assert summary["rows_read"] == len(held_out) == 667
    scores = pd.read_csv(out)
    rejects = pd.read_csv(out.with_name("scores.rejects.csv"))
    assert len(scores) + len(rejects) == len(held_out)
    assert summary["rows_scored"] == len(scores) and summary["rows_rejected"] == len(rejects)
    assert set(rejects.columns) >= {"row", "reason"}
    assert (scores["model_version"] == report["version"]).all()
    assert scores["probability"].iloc[0] == body["probability"]
    # The held-out file's labels are spelled True/False; the scores still find its churners.
    truth = held_out["Churn"].astype(str).str.lower().eq("true").to_numpy()[: len(scores)]
    assert len(rejects) == 0 and (scores["prediction"].to_numpy() == 1)[truth].mean() > 0.6
