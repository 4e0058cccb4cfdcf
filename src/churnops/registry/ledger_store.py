"""The MLflow calls the ledger of alias moves is built on: runs in one experiment, their tags, and
write-once parameters (the compare-and-set the ledger relies on).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from mlflow.exceptions import MlflowException

from churnops.config import Settings
from churnops.errors import ChurnopsError
from churnops.registry.connection import client


@dataclass(frozen=True)
class LedgerRun:
    """One run of the ledger experiment, as the ledger reads it."""

    run_id: str
    experiment_id: str
    start_time: int
    tags: dict[str, str]
    params: dict[str, str]


class LedgerStore:
    """The MLflow calls the ledger makes: runs in one experiment, their tags, and write-once
    parameters (the compare-and-set the ledger is built on). Callers wrap them in
    :func:`mlflow_errors`."""

    def __init__(self, settings: Settings) -> None:
        self._client = client(settings)

    def experiment(self, name: str) -> tuple[str, bool] | None:
        """(id, whether it is active) of the experiment called ``name``, or None."""
        found = self._client.get_experiment_by_name(name)
        if found is None:
            return None
        return str(found.experiment_id), found.lifecycle_stage == "active"

    def create_experiment(self, name: str) -> str:
        """A new experiment's id."""
        return str(self._client.create_experiment(name))

    def rename_experiment(self, experiment_id: str, name: str) -> bool:
        """Rename; False when ``name`` is taken (the database refuses a duplicate name)."""
        try:
            self._client.rename_experiment(experiment_id, name)
        except MlflowException as exc:
            # NB: the database's unique-name refusal reaches the client as BAD_REQUEST; any
            # other failure (a refused connection, a permission) is not "taken".
            if exc.error_code not in ("BAD_REQUEST", "RESOURCE_ALREADY_EXISTS"):
                raise
            return False
        return True

    def delete_experiment(self, experiment_id: str) -> None:
        """Delete an experiment, best effort."""
        with contextlib.suppress(MlflowException):
            self._client.delete_experiment(experiment_id)

    def runs(self, experiment_id: str) -> list[LedgerRun]:
        """Every active run of the experiment."""
        return [
            LedgerRun(
                run.info.run_id,
                run.info.experiment_id,
                run.info.start_time or 0,
                dict(run.data.tags),
                dict(run.data.params),
            )
            for run in self._client.search_runs([experiment_id], max_results=50_000)
        ]

    def create_run(self, experiment_id: str, tags: dict[str, str], name: str) -> str:
        """A new run's id."""
        return str(self._client.create_run(experiment_id, tags=tags, run_name=name).info.run_id)

    def finish_run(self, run_id: str, status: str) -> None:
        """Set a run's status (FINISHED, KILLED)."""
        # NB: update_run, not set_terminated, which prints "View run" lines to stdout.
        self._client.update_run(run_id, status=status)

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        """Set (or overwrite) a run's tag."""
        self._client.set_tag(run_id, key, value)

    def write_once(self, run_id: str, key: str, value: str) -> str:
        """Log a parameter that may already hold a value; return the value it holds now."""
        try:
            self._client.log_param(run_id, key, value)
            return value
        except MlflowException as exc:
            if exc.error_code != "INVALID_PARAMETER_VALUE":
                raise
        held = self._client.get_run(run_id).data.params.get(key)
        if held is None:
            raise ChurnopsError(f"the tracking server refused parameter {key!r} on run {run_id}")
        return str(held)
