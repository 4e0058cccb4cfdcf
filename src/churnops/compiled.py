"""The compiled inference path: an ONNX export of the fitted pipeline, made at training time and
trusted only when it reproduces the scikit-learn probabilities on the held-out split.

Why: a fitted ColumnTransformer + LogisticRegression spends ~4-9 ms of Python overhead per
predict_proba call whatever the row count, while onnxruntime scores one row in ~50 us. The profile
behind this choice is recorded in BENCHMARKS.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from churnops.predict import DEFAULT_THRESHOLD, Predictions, label

log = logging.getLogger(__name__)

# NB: the API serves ONNX only when it agrees with scikit-learn this closely on held-out rows.
TOLERANCE = 1e-6
TARGET_OPSET = 17


@dataclass(frozen=True)
class Export:
    """An ONNX export and how well it matched scikit-learn; ``onnx`` is None when unusable."""

    onnx: bytes | None
    max_abs_diff: float | None
    reason: str


def _initial_types(numeric: tuple[str, ...], categorical: tuple[str, ...]) -> list[Any]:
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    # NB: float32, because onnxruntime implements the Imputer operator for float only; the
    # held-out check below rejects exports whose float32 rounding moves a probability by > 1e-6.
    return [(c, FloatTensorType([None, 1])) for c in numeric] + [
        (c, StringTensorType([None, 1])) for c in categorical
    ]


def export(
    model: Any, numeric: tuple[str, ...], categorical: tuple[str, ...], holdout: pd.DataFrame
) -> Export:
    """Convert ``model`` to ONNX and check it on ``holdout``; never raises on unsupported models."""
    try:
        from skl2onnx import to_onnx

        options = {id(model.steps[-1][1]): {"zipmap": False}}
        proto = to_onnx(
            model,
            initial_types=_initial_types(numeric, categorical),
            options=options,
            target_opset=TARGET_OPSET,
        )
        onnx = proto.SerializeToString()
        got = OnnxEngine(onnx).predict_frame(holdout).probability
    except Exception as exc:  # noqa: BLE001 - any converter failure means "serve scikit-learn"
        return Export(None, None, f"conversion failed: {type(exc).__name__}: {exc}"[:300])
    expected = np.asarray(model.predict_proba(holdout))[:, 1]
    diff = float(np.max(np.abs(got - expected))) if len(expected) else 0.0
    if not diff <= TOLERANCE:
        return Export(None, diff, f"max |p_onnx - p_sklearn| = {diff:.2e} > {TOLERANCE:.0e}")
    return Export(onnx, diff, f"verified on {len(holdout)} held-out rows, max diff {diff:.2e}")


class OnnxEngine:
    """Scores rows with onnxruntime at a decision threshold; one session, safe to call from many
    threads."""

    kind = "onnx"

    def __init__(self, onnx: bytes, threshold: float = DEFAULT_THRESHOLD, threads: int = 1) -> None:
        import onnxruntime as ort

        self.threshold = threshold
        # NB: kept, so batch scoring on Spark can ship the graph to its workers.
        self.onnx = onnx
        options = ort.SessionOptions()
        # NB: one thread per call by default: API requests already run in parallel across
        # threads and workers. Batch scoring asks for more.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            onnx, sess_options=options, providers=["CPUExecutionProvider"]
        )
        inputs = self._session.get_inputs()
        self.categorical = tuple(i.name for i in inputs if i.type == "tensor(string)")
        self.numeric = tuple(i.name for i in inputs if i.type != "tensor(string)")
        self._probabilities = self._session.get_outputs()[1].name

    def predict_columns(self, columns: dict[str, list[Any]]) -> Predictions:
        """Score column lists keyed by feature name (the API's request rows)."""
        feed: dict[str, np.ndarray] = {}
        for name in self.numeric:
            values = [np.nan if v is None else v for v in columns[name]]
            feed[name] = np.asarray(values, dtype=np.float32).reshape(-1, 1)
        for name in self.categorical:
            values = ["" if v is None else str(v) for v in columns[name]]
            feed[name] = np.asarray(values, dtype=object).reshape(-1, 1)
        return self._run(feed)

    def predict_frame(self, frame: pd.DataFrame) -> Predictions:
        """Score a DataFrame holding (at least) the model's columns, without per-value Python
        (batch scoring sends 100,000-row frames)."""
        feed: dict[str, np.ndarray] = {}
        for name in self.numeric:
            column = frame[name].to_numpy(dtype=np.float32, na_value=np.nan)
            feed[name] = column.reshape(-1, 1)
        for name in self.categorical:
            text = frame[name].fillna("").astype(str).to_numpy(dtype=object)
            feed[name] = text.reshape(-1, 1)
        return self._run(feed)

    def _run(self, feed: dict[str, np.ndarray]) -> Predictions:
        probability = self._session.run([self._probabilities], feed)[0][:, 1].astype(float)
        return Predictions(label=label(probability, self.threshold), probability=probability)
