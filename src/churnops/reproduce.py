"""Reproduce a training run from what it recorded: its table (kept with the run, or re-made from
the seed for the built-in data), seed, gate, model kind and target; then say whether the metrics
and the held-out probabilities come out identical, and what differs when they do not.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from churnops import data, training
from churnops.config import Settings
from churnops.errors import ChurnopsError
from churnops.registry import connection, runs

REQUIRED_PARAMS = ("seed", "gate_f1", "data", "model_requested")


@dataclass(frozen=True)
class MetricCheck:
    """One held-out metric as the run logged it and as the re-training gives it."""

    name: str
    recorded: float
    reproduced: float

    @property
    def identical(self) -> bool:
        return self.recorded == self.reproduced


@dataclass(frozen=True)
class Reproduction:
    """What re-training a run gave, beside what the run recorded."""

    run_id: str
    data_source: str
    data_recorded: str | None
    data_now: str
    metrics: list[MetricCheck]
    rows_compared: int
    probabilities_identical: bool | None
    largest_probability_difference: float | None
    warnings: list[str] = field(default_factory=list)

    @property
    def data_identical(self) -> bool:
        return self.data_recorded is None or self.data_recorded == self.data_now

    @property
    def identical(self) -> bool:
        return (
            self.data_identical
            and all(m.identical for m in self.metrics)
            and self.probabilities_identical is not False
        )

    def to_dict(self) -> dict[str, Any]:
        found = asdict(self)
        found["identical"] = self.identical
        found["data_identical"] = self.data_identical
        for check, row in zip(self.metrics, found["metrics"], strict=True):
            row["identical"] = check.identical
        return found

    def render(self) -> str:
        """The verdict, then what was compared: the data digest, each metric, the probabilities."""
        verdict = "identical" if self.identical else "NOT identical"
        lines = [f"run {self.run_id}: re-trained from what it recorded: {verdict}"]
        if self.data_recorded is None:
            lines.append(f"  data      {self.data_source}: digest {self.data_now} (none recorded)")
        else:
            same = "same" if self.data_identical else "DIFFERENT"
            lines.append(f"  data      {same}: recorded {self.data_recorded}, now {self.data_now}")
        for m in self.metrics:
            mark = "same" if m.identical else "DIFFERENT"
            lines.append(f"  {m.name:<12}{mark}: recorded {m.recorded:.6f}, now {m.reproduced:.6f}")
        if self.probabilities_identical is not None:
            mark = "same" if self.probabilities_identical else "DIFFERENT"
            largest = self.largest_probability_difference
            tail = "" if largest is None else f" (largest difference {largest:.3g})"
            lines.append(f"  held-out probabilities {mark} on {self.rows_compared} rows{tail}")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _params(
    settings: Settings, run_id: str
) -> tuple[dict[str, str], dict[str, float], dict[str, str]]:
    params, metrics, tags = runs.run_record(settings, run_id)
    missing = [name for name in REQUIRED_PARAMS if name not in params]
    if missing:
        raise ChurnopsError(
            f"run {run_id} was not logged by `churnops train` (it has no {', '.join(missing)} "
            "parameter), so there is nothing to reproduce it from"
        )
    return params, metrics, tags


def _dataset(
    settings: Settings, run_id: str, params: dict[str, str], tmp: Path, warnings: list[str]
) -> data.Dataset:
    """The table the run was trained on: the copy kept with the run, else the built-in data
    re-made from the seed, else the original path if it is still there (with a warning)."""
    source = params["data"]
    path = None if source == data.BUILTIN_SOURCE else _table_path(settings, run_id, source, tmp)
    if path == Path(source):
        warnings.append(
            f"the run kept no copy of its table; re-training from {source} as it is now"
        )
    return data.load(
        path,
        int(params["seed"]),
        target=params.get("target", data.TARGET),
        positive_label=params.get("positive_label"),
    )


def _table_path(settings: Settings, run_id: str, source: str, tmp: Path) -> Path:
    """Where the run's training file is: its kept copy, else the original path."""
    kept = runs.download_run_folder(settings, run_id, runs.TRAINING_DATA_DIR, tmp)
    if kept is not None and (kept / Path(source).name).is_file():
        return kept / Path(source).name
    if Path(source).is_file():
        return Path(source)
    raise ChurnopsError(
        f"run {run_id} kept no copy of its table (over "
        f"{runs.TRAINING_DATA_MAX_BYTES // (1024 * 1024)} MB, or logged before churnops kept "
        f"one) and {source} is not here; copy the table back to that path and run again"
    )


def _searched(params: dict[str, str]) -> tuple[str, dict[str, Any]] | None:
    """The configuration a `--search` run chose, which re-training refits: a search itself
    is bounded by wall-clock time, so it would not try the same trials twice."""
    if "search_best_params" not in params:
        return None
    return params["search_best_family"], json.loads(params["search_best_params"])


def _library_warnings(tags: dict[str, str]) -> list[str]:
    found = []
    for name, now in runs.library_versions().items():
        then = tags.get(runs.LIBRARY_TAG_PREFIX + name)
        if then is None:
            found.append(f"the run did not record its {name} version (now {now})")
        elif then != now:
            found.append(f"{name} was {then} at training and is {now} here")
    return found


def reproduce(settings: Settings, run_id: str) -> Reproduction:
    """Re-train ``run_id`` from what it recorded and compare."""
    connection.ping(settings)
    params, logged, tags = _params(settings, run_id)
    warnings = _library_warnings(tags)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        dataset = _dataset(settings, run_id, params, tmp, warnings)
        kind = params["model_requested"]
        if kind not in training.CANDIDATES and kind != "auto":
            raise ChurnopsError(f"run {run_id} names an unknown model kind {kind!r}")
        result = training.train(
            dataset,
            seed=int(params["seed"]),
            gate_f1=float(params["gate_f1"]),
            kind=kind,  # type: ignore[arg-type]
            config=_searched(params),
        )
        recorded = _recorded_probabilities(settings, run_id, tmp)
    metrics = [
        MetricCheck(name, logged[name], value)
        for name, value in sorted(result.metrics.items())
        if name in logged
    ]
    probability = result.model.predict_proba(result.holdout_features)[:, 1]
    same: bool | None = None
    largest: float | None = None
    if recorded is None:
        warnings.append("the run kept no held-out probabilities; only its metrics are compared")
    elif len(recorded) != len(probability):
        same = False
    else:
        same = bool(np.array_equal(recorded, probability))
        largest = float(np.max(np.abs(recorded - probability))) if len(recorded) else 0.0
    return Reproduction(
        run_id=run_id,
        data_source=params["data"],
        data_recorded=params.get(runs.DATA_DIGEST_PARAM),
        data_now=runs.table_digest(dataset.table),
        metrics=metrics,
        rows_compared=len(probability),
        probabilities_identical=same,
        largest_probability_difference=largest,
        warnings=warnings,
    )


def _recorded_probabilities(settings: Settings, run_id: str, tmp: Path) -> np.ndarray | None:
    """The logged model's probabilities on its held-out rows, as its monitoring reference kept
    them at training."""
    folder = runs.download_run_folder(settings, run_id, runs.REFERENCE_DIR, tmp / "ref")
    path = None if folder is None else folder / runs.REFERENCE_SCORES
    if path is None or not path.is_file():
        return None
    return pd.read_parquet(path)["probability"].to_numpy()
