"""The registry package against a real tracking server: every MLflow call goes to the settings'
server through a client built with its URI, whatever MLflow's process-wide URI says.
"""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from churnops import lifecycle
from churnops.config import Settings
from churnops.registry import loading, versions
from tests.conftest import free_port


def test_train_promote_and_load_neither_read_nor_set_mlflow_s_process_wide_uri(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # NB: nothing listens at the decoy, so any call that followed the process-wide URI fails.
    decoy = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setattr("mlflow.tracking._tracking_service.utils._tracking_uri", decoy)
    monkeypatch.setattr("mlflow.tracking._model_registry.utils._registry_uri", decoy)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")

    trained = lifecycle.train(settings, data_file=None, version_label=None, seed=3, gate_f1=0.5)
    moved = lifecycle.promote(settings, trained.version)
    loaded = loading.load_version(settings, trained.version)
    inputs = loading.signature_inputs(settings, trained.version)
    info = versions.get_version(settings, trained.version)

    assert mlflow.get_tracking_uri() == decoy and mlflow.get_registry_uri() == decoy
    assert moved.changed and versions.alias_version(settings) == trained.version
    assert loaded.version == trained.version and loaded.input_example is not None
    assert {field["name"] for field in inputs} == {field.name for field in loaded.inputs}
    assert loading.load_data_report(settings, info) is not None
    assert loading.load_holdout(settings, info) is not None


def test_each_model_s_runs_go_to_an_experiment_named_after_the_model(
    settings: Settings,
) -> None:
    trained = lifecycle.train(settings, data_file=None, version_label=None, seed=4, gate_f1=0.5)
    client = MlflowClient(settings.tracking_uri)
    run = client.get_run(trained.run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == settings.model_name == settings.training_experiment
    assert run.info.run_name == f"v{trained.version}"
