"""The compiled (ONNX) inference path is used only when it reproduces scikit-learn."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import Pipeline

from churnops import compiled, data, training
from churnops.predict import SklearnEngine


def test_the_built_in_pipeline_exports_to_onnx_agreeing_with_sklearn_at_its_threshold() -> None:
    dataset = data.from_frame(data.generate(seed=5))
    result = training.train(dataset, seed=5)
    assert result.export.onnx is not None, result.export.reason
    assert result.export.max_abs_diff is not None
    assert result.export.max_abs_diff <= compiled.TOLERANCE
    engine = compiled.OnnxEngine(result.export.onnx, result.threshold)
    assert engine.numeric == data.NUMERIC_FEATURES
    assert engine.categorical == data.CATEGORICAL_FEATURES
    rows = dataset.features.head(300)
    onnx, sk = engine.predict_frame(rows), SklearnEngine(result.model).predict_frame(rows)
    np.testing.assert_allclose(onnx.probability, sk.probability, atol=compiled.TOLERANCE)
    assert (onnx.label == sk.label).all()
    assert (sk.label == result.model.predict(rows)).all()


def test_the_onnx_engine_scores_unknown_categories_like_scikit_learn() -> None:
    dataset = data.from_frame(data.generate(seed=6))
    result = training.train(dataset, seed=6)
    assert result.export.onnx is not None
    row: dict[str, list[Any]] = {
        "tenure_months": [5],
        "num_complaints": [2],
        "avg_session_minutes": [20.0],
        "plan_type": ["platinum"],
        "region": ["Mars"],
    }
    onnx = compiled.OnnxEngine(result.export.onnx).predict_columns(row)
    sk = SklearnEngine(result.model).predict_columns(row)
    assert abs(onnx.probability[0] - sk.probability[0]) <= compiled.TOLERANCE


def test_a_model_that_cannot_be_converted_is_reported_instead_of_exported() -> None:
    frame = pd.DataFrame({"a": np.arange(100.0), "b": np.arange(100.0) % 7})
    model = Pipeline([("forest", RandomForestClassifier(n_estimators=3, random_state=0))])
    model.fit(frame, np.arange(100) % 2)
    # NB: declared as categorical so the converter meets strings it cannot feed to the forest.
    export = compiled.export(model, ("a",), ("b",), frame)
    assert export.onnx is None
    assert export.reason.startswith("conversion failed")


def test_the_onnx_engine_scores_frames_and_request_columns_alike_with_gaps() -> None:
    dataset = data.from_frame(data.generate(seed=8))
    result = training.train(dataset, seed=8)
    assert result.export.onnx is not None
    engine = compiled.OnnxEngine(result.export.onnx, result.threshold)
    rows = dataset.features.head(50).copy()
    rows.loc[::5, "avg_session_minutes"] = np.nan
    rows.loc[::7, "plan_type"] = None
    columns = {c: [None if pd.isna(v) else v for v in rows[c]] for c in rows.columns}
    by_frame, by_columns = engine.predict_frame(rows), engine.predict_columns(columns)
    np.testing.assert_array_equal(by_frame.probability, by_columns.probability)
    np.testing.assert_array_equal(by_frame.label, by_columns.label)
