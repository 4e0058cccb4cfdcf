"""Safe model loading: no unpickling, and churnops's own skops allow-list, not the model's."""

from __future__ import annotations

import operator
import uuid
import zipfile
from pathlib import Path

import mlflow
import mlflow.sklearn
import numpy as np
import pytest
import skops.io
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from churnops import data, lifecycle, safety, training
from churnops.config import Settings
from churnops.errors import UnsafeModelError
from churnops.registry import loading, versions
from tests.conftest import start_api, stop_api, wait_for

# NB: named, so MLflow does not infer them by loading the model in a subprocess (3.8 s a save).
REQUIREMENTS = ["scikit-learn"]


def _with_gaps() -> data.Dataset:
    frame = data.generate(rows=1200, seed=3)
    frame.loc[::5, "avg_session_minutes"] = np.nan
    frame.loc[::7, "plan_type"] = None
    return data.from_frame(frame)


@pytest.mark.parametrize("kind", ["logreg", "hgb"])
@pytest.mark.parametrize("gaps", [False, True])
def test_every_model_churnops_trains_loads_within_the_pinned_allow_list(
    kind: training.ModelKind, gaps: bool, tmp_path: Path
) -> None:
    dataset = _with_gaps() if gaps else data.from_frame(data.generate(rows=1200, seed=3))
    result = training.train(dataset, seed=3, kind=kind)
    needed = skops.io.get_untrusted_types(data=skops.io.dumps(result.model))
    assert set(needed) <= safety.ALLOWED_SKOPS_TYPES
    mlflow.sklearn.save_model(
        result.model,
        tmp_path / "model",
        serialization_format="skops",
        skops_trusted_types=needed,
        pip_requirements=REQUIREMENTS,
    )
    loaded = safety.load_sklearn(tmp_path / "model", version=1)
    rows = result.holdout_features
    np.testing.assert_array_equal(loaded.predict_proba(rows), result.model.predict_proba(rows))


def test_a_pickled_model_is_refused_before_it_is_read(tmp_path: Path) -> None:
    model = LogisticRegression().fit(np.arange(20.0).reshape(-1, 1), np.arange(20) % 2)
    mlflow.sklearn.save_model(
        model,
        tmp_path / "model",
        serialization_format="cloudpickle",
        pip_requirements=REQUIREMENTS,
    )
    with pytest.raises(UnsafeModelError, match=r"saved as cloudpickle.*unpickling"):
        safety.load_sklearn(tmp_path / "model", version=4)


def test_a_model_approving_its_own_extra_types_is_refused_by_name(tmp_path: Path) -> None:
    # NB: any function outside skops's defaults will do; a crafted model would name os.system.
    model = make_pipeline(FunctionTransformer(operator.neg), LogisticRegression())
    model.fit(np.arange(1.0, 21.0).reshape(-1, 1), np.arange(20) % 2)
    own_list = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    mlflow.sklearn.save_model(
        model,
        tmp_path / "model",
        serialization_format="skops",
        skops_trusted_types=own_list,
        pip_requirements=REQUIREMENTS,
    )
    # MLflow would load it: the model's MLmodel file approves its own types.
    assert mlflow.sklearn.load_model(str(tmp_path / "model")) is not None
    with pytest.raises(UnsafeModelError, match=r"outside churnops's allow-list: _operator\.neg"):
        safety.load_sklearn(tmp_path / "model", version=5)


def test_the_api_never_swaps_in_a_pickled_version_and_says_why(
    tracking_url: str, tmp_path: Path
) -> None:
    name = f"churn_safety_{uuid.uuid4().hex[:8]}"
    settings = Settings(tracking_uri=tracking_url, model_name=name)
    good = lifecycle.train(settings, data_file=None, version_label="v1", seed=1, gate_f1=0.5)
    lifecycle.promote(settings, good.version)
    features = data.from_frame(data.generate(rows=200, seed=2)).features
    pickled = training.build_pipeline(
        "logreg", data.NUMERIC_FEATURES, data.CATEGORICAL_FEATURES, seed=2
    ).fit(features, np.arange(200) % 2)
    mlflow.set_tracking_uri(tracking_url)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            pickled,
            name="model",
            serialization_format="cloudpickle",
            input_example=features.head(3),
            pip_requirements=REQUIREMENTS,
        )
    bad = int(mlflow.register_model(info.model_uri, name).version)
    with pytest.raises(UnsafeModelError, match="unpickling"):
        loading.load_version(settings, bad)

    env = {"MLFLOW_TRACKING_URI": tracking_url, "CHURNOPS_MODEL_NAME": name}
    api = start_api(env, tmp_path / "serve.log")
    try:
        api.wait_until_every_worker_serves()
        versions.set_alias(settings, bad)  # an outside move, past churnops's gate

        def refused() -> dict:
            model = api.client.get("/model").json()
            return model if model["alias_version"] == bad and model["last_error"] else {}

        model = wait_for(refused, timeout=30)
        assert model["version"] == good.version
        assert f"version {bad} is saved as cloudpickle" in model["last_error"]
        assert api.client.get("/ready").json()["model_version"] == good.version
    finally:
        stop_api(api)
    assert "is saved as cloudpickle" in (tmp_path / "serve.log").read_text()


def test_a_small_archive_that_unpacks_past_the_limit_is_refused_unread(tmp_path: Path) -> None:
    model = StandardScaler().fit(np.arange(20.0).reshape(-1, 2))
    model.mean_ = np.zeros(5_000_000)  # 40 MB of zeros, a few kB compressed
    mlflow.sklearn.save_model(
        model,
        tmp_path / "model",
        serialization_format="skops",
        skops_trusted_types=[],
        pip_requirements=REQUIREMENTS,
    )
    skops_file = safety.skops_file(tmp_path / "model", version=6)
    # As a crafted upload would be: the same archive, deflated.
    with zipfile.ZipFile(skops_file) as stored:
        members = [(info.filename, stored.read(info)) for info in stored.infolist()]
    with zipfile.ZipFile(skops_file, "w", compression=zipfile.ZIP_DEFLATED) as packed:
        for name, content in members:
            packed.writestr(name, content)
    assert skops_file.stat().st_size < 1_000_000
    with pytest.raises(UnsafeModelError, match=r"unpacks to 40,0\d\d,\d\d\d bytes, over the limit"):
        safety.load_sklearn(tmp_path / "model", version=6, max_unpacked_bytes=10_000_000)
