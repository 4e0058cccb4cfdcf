"""The CLI against a real tracking server: every door, good input and bad."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from mlflow.tracking import MlflowClient

from churnops import data, registry
from churnops.config import Settings
from tests.conftest import free_port, moved, run_churnops


def _json(result: Result) -> dict:
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout)


def test_train_prints_only_json_and_registers_a_version_carrying_its_gate_verdict(
    env: dict[str, str], settings: Settings
) -> None:
    done = run_churnops("train", "--json", "--version", "v7", "--seed", "3", env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)  # NB: the whole of stdout must be one JSON document
    assert report["version"] == 1
    assert report["gate_passed"] is True
    assert {"accuracy", "precision", "recall", "f1", "roc_auc", "baseline_f1"} <= set(
        report["metrics"]
    )
    assert "View run" not in done.stdout + done.stderr  # MLflow's emoji line is suppressed

    client = MlflowClient(settings.tracking_uri)
    version = client.get_model_version(settings.model_name, "1")
    assert version.tags["gate_passed"] == "true"
    # Rounded for reading on the version's page; the run keeps full precision.
    assert version.tags["f1"] == f"{report['metrics']['f1']:.4f}"
    run = client.get_run(report["run_id"])
    assert run.data.params["version"] == "v7"
    assert run.data.params["seed"] == "3"
    assert run.data.params["gate_f1"] == "0.6"
    assert run.data.metrics["f1"] == report["metrics"]["f1"]
    assert report["data_report"]["rows_kept"] == 5000
    assert run.inputs is not None
    [dataset] = run.inputs.dataset_inputs
    assert dataset.dataset.digest and "tenure_months" in str(dataset.dataset.schema)
    assert {a.path for a in client.list_artifacts(report["run_id"])} >= {"data_report.json"}
    artifacts = {a.path for a in client.list_artifacts(report["run_id"], "export")}
    assert artifacts == {f"export/{settings.model_name}.skops"}
    assert version.run_id == report["run_id"]
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "churn"
    # Artifacts go through the server's proxy, so clients need no shared disk.
    assert experiment.artifact_location.startswith("mlflow-artifacts:")


def test_train_with_a_csv_without_the_target_fails_and_registers_nothing(
    cli: Callable[..., Result], settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "no_target.csv"
    data.generate(100).drop(columns=["churn"]).to_csv(path, index=False)
    result = cli("train", "--data", str(path))
    assert result.exit_code == 1
    assert "target column 'churn' not found; the columns are: customer_id, tenure" in result.stderr
    assert registry.list_versions(settings) == []


def test_train_on_a_csv_uses_it_and_a_failing_gate_still_registers_the_version(
    cli: Callable[..., Result], settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "churn.csv"
    data.write_generated(path, rows=800, seed=5)
    report = _json(cli("train", "--data", str(path), "--gate-f1", "0.99", "--json"))
    assert report["gate_passed"] is False
    assert registry.get_version(settings, report["version"]).gate_passed is False


def test_promote_refuses_a_gate_failing_version_and_leaves_the_alias(
    cli: Callable[..., Result], settings: Settings
) -> None:
    _json(cli("train", "--json"))
    assert moved(_json(cli("promote", "--json"))) == (None, 1)
    _json(cli("train", "--gate-f1", "0.99", "--json"))
    refused = cli("promote")
    assert refused.exit_code == 1
    assert "version 2 failed the gate (held-out f1)" in refused.stderr
    assert "--force" in refused.stderr
    assert registry.alias_version(settings) == 1
    forced = cli("promote", "--version", "2", "--force", "--reason", "demo of an override")
    assert forced.exit_code == 0
    assert forced.stdout.strip().splitlines()[-1] == (
        f"{settings.model_name}@production: v1 -> v2  (gate overridden: demo of an override)"
    )
    assert registry.alias_version(settings) == 2


def test_promote_of_an_unknown_version_names_the_existing_ones_and_changes_nothing(
    cli: Callable[..., Result], settings: Settings
) -> None:
    _json(cli("train", "--json"))
    _json(cli("promote", "--json"))
    result = cli("promote", "--version", "9")
    assert result.exit_code == 1
    assert f"{settings.model_name} has no version 9; existing versions: 1" in result.stderr
    assert registry.alias_version(settings) == 1
    assert [v.version for v in registry.list_versions(settings)] == [1]


def test_promote_with_no_versions_tells_the_user_to_train_first(
    cli: Callable[..., Result],
) -> None:
    result = cli("promote")
    assert result.exit_code == 1
    assert "run `churnops train` first" in result.stderr


def test_rollback_without_an_earlier_eligible_version_exits_with_a_clear_error(
    cli: Callable[..., Result], settings: Settings
) -> None:
    _json(cli("train", "--gate-f1", "0.99", "--json"))
    _json(cli("train", "--json"))
    _json(cli("promote", "--json"))
    result = cli("rollback", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["exit_code"] == 1
    assert "nothing earlier to roll back to" in result.stderr
    assert registry.alias_version(settings) == 2


def test_rollback_to_a_named_version_and_status_show_the_alias(
    cli: Callable[..., Result], settings: Settings
) -> None:
    for _ in range(3):
        _json(cli("train", "--json"))
    _json(cli("promote", "--json"))
    assert moved(_json(cli("rollback", "1", "--json"))) == (3, 1)
    status = _json(cli("status", "--json"))
    assert status["tracking_uri"] == settings.tracking_uri
    assert [(v["version"], v["gate_passed"], v["aliases"]) for v in status["versions"]] == [
        (1, True, ["production"]),
        (2, True, []),
        (3, True, []),
    ]
    assert all(isinstance(v["f1"], float) for v in status["versions"])
    text = cli("status")
    assert text.exit_code == 0
    assert f"{settings.model_name}@production: v1" in text.stdout
    assert "pass  production" in text.stdout


def test_rollback_of_an_unknown_version_exits_1_and_leaves_the_alias(
    cli: Callable[..., Result], settings: Settings
) -> None:
    _json(cli("train", "--json"))
    _json(cli("promote", "--json"))
    result = cli("rollback", "5")
    assert result.exit_code == 1
    assert "has no version 5" in result.stderr
    assert registry.alias_version(settings) == 1


def test_a_version_number_that_is_not_a_positive_integer_is_a_usage_error(
    cli: Callable[..., Result],
) -> None:
    result = cli("promote", "--version", "abc")
    assert result.exit_code == 64  # not 2, which says the tracking server does not answer
    assert "'abc' is not a valid integer" in result.stderr


def test_status_against_an_unreachable_server_names_the_uri_and_exits_2(
    env: dict[str, str],
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    done = run_churnops("status", env={**env, "MLFLOW_TRACKING_URI": dead}, timeout=60)
    assert done.returncode == 2
    error_lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert f"MLflow tracking server at {dead} does not answer" in error_lines[0]
    assert "churnops server" in error_lines[0]
    assert "Traceback" not in done.stderr


def test_data_generate_writes_the_requested_rows(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    out = tmp_path / "gen.csv"
    report = _json(
        cli("data", "generate", "--rows", "300", "--seed", "9", "--out", str(out), "--json")
    )
    assert report["rows"] == 300 and report["path"] == str(out)
    assert len(out.read_text().splitlines()) == 301


def test_server_refuses_a_port_that_is_already_in_use(cli: Callable[..., Result]) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = cli("server", "--port", str(port))
    assert result.exit_code == 1
    assert f"127.0.0.1:{port} is already in use" in result.stderr
    assert "--port" in result.stderr


def test_monitor_with_a_misspelt_model_name_fails_like_an_unknown_version_and_logs_nothing(
    cli: Callable[..., Result], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    _json(cli("train", "--json"))
    typo = settings.model_name + "x"
    monkeypatch.setenv("CHURNOPS_MODEL_NAME", typo)
    result = cli("monitor")
    assert result.exit_code == 1
    assert f"no registered model {typo!r}; registered models: " in result.stderr
    assert settings.model_name in result.stderr and "serving vNone" not in result.output
    client = MlflowClient(settings.tracking_uri)
    assert client.get_experiment_by_name(f"{typo}-monitoring") is None


def test_simulate_with_no_api_answering_is_one_error_line_and_exit_2(
    env: dict[str, str], tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    done = run_churnops(
        "simulate", "--api", dead, "--days", "1", "--no-add-labels", env=env, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"error: the API at {dead} does not answer (ConnectError)")


def test_simulate_reaches_the_api_named_by_churnops_api_url_when_no_api_option_is_given(
    env: dict[str, str],
) -> None:
    elsewhere = f"http://127.0.0.1:{free_port()}"
    done = run_churnops(
        "simulate",
        "--days",
        "1",
        "--no-add-labels",
        env={**env, "CHURNOPS_API_URL": elsewhere},
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert f"error: the API at {elsewhere} does not answer" in done.stderr
