"""The JSON log format, without servers."""

from __future__ import annotations

import json
import logging
import os

import pytest

from churnops.observability import JsonFormatter


def test_json_log_lines_carry_level_logger_message_and_extra_fields() -> None:
    record = logging.LogRecord(
        "churnops.watcher", logging.INFO, "", 0, "now serving %s", (2,), None
    )
    record.load_seconds = 0.25
    document = json.loads(JsonFormatter().format(record))
    assert document["level"] == "INFO" and document["logger"] == "churnops.watcher"
    assert document["message"] == "now serving 2" and document["load_seconds"] == 0.25


def test_mlflow_draws_no_download_progress_bar_unless_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from churnops.config import Settings, apply_mlflow_client_limits

    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    apply_mlflow_client_limits(Settings())
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")
    apply_mlflow_client_limits(Settings())
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "true"
