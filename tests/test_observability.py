"""The prediction log and the JSON log format, without servers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from churnops.observability import JsonFormatter, PredictionLog

ROW = {
    "tenure_months": 1,
    "num_complaints": 0,
    "avg_session_minutes": 3.0,
    "plan_type": "basic",
    "region": "EU",
}


def test_the_prediction_log_rotates_by_size_and_keeps_every_line_whole(tmp_path: Path) -> None:
    log = PredictionLog(
        tmp_path / "predictions.jsonl", max_bytes=2000, backups=50, per_process=False
    )
    for i in range(40):
        log.write(f"r{i}", 3, [ROW], [0.25], [0])
    log.close()
    files = sorted(tmp_path.iterdir())
    assert len(files) > 2
    assert all(f.stat().st_size <= 2000 for f in files)
    lines = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert sorted(line["request_id"] for line in lines) == sorted(f"r{i}" for i in range(40))


def test_a_per_process_log_carries_the_process_id_in_its_name(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "predictions.jsonl", 10_000, 1, per_process=True)
    log.write("r", 1, [ROW], [0.5], [1])
    log.close()
    [path] = tmp_path.iterdir()
    assert path.name.startswith("predictions.") and path.name.endswith(".jsonl")
    assert path.name.split(".")[1].isdigit()


def test_json_log_lines_carry_level_logger_message_and_extra_fields() -> None:
    record = logging.LogRecord(
        "churnops.watcher", logging.INFO, "", 0, "now serving %s", (2,), None
    )
    record.load_seconds = 0.25
    document = json.loads(JsonFormatter().format(record))
    assert document["level"] == "INFO" and document["logger"] == "churnops.watcher"
    assert document["message"] == "now serving 2" and document["load_seconds"] == 0.25
