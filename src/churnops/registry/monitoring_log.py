"""Monitor and compare runs as MLflow gets them: per-window metrics, tags, a JSON report and
files, logged to the experiment ``<model>-monitoring``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from churnops.config import Settings
from churnops.registry.connection import client, experiment_id, mlflow_errors


@dataclass(frozen=True)
class MonitorLog:
    """One monitor run as MLflow gets it: per-window metrics stamped with the window's end,
    tags, a JSON report and files (figures, the HTML page)."""

    metrics: list[tuple[str, float, int, int]]
    tags: dict[str, str]
    report: dict[str, Any]
    files: dict[str, bytes]


def log_monitoring(settings: Settings, entry: MonitorLog, run_name: str = "monitor") -> str:
    """Log a monitor (or compare) run to the experiment ``<model>-monitoring``; its run id."""
    from mlflow.entities import Metric

    tracking = client(settings)
    with mlflow_errors(settings):
        experiment = experiment_id(tracking, settings.monitoring_experiment)
        run = tracking.create_run(experiment, tags=entry.tags, run_name=run_name)
        run_id = run.info.run_id
        metrics = [Metric(key, value, stamp, step) for key, value, stamp, step in entry.metrics]
        for start in range(0, len(metrics), 1000):
            tracking.log_batch(run_id, metrics=metrics[start : start + 1000])
        tracking.log_dict(run_id, entry.report, "report.json")
        with tempfile.TemporaryDirectory() as tmp:
            for name, content in entry.files.items():
                path = Path(tmp) / name
                path.write_bytes(content)
                tracking.log_artifact(run_id, str(path))
        tracking.set_terminated(run_id)
    return run_id
