"""What the API tells its operators: Prometheus metrics (aggregated across worker processes when
PROMETHEUS_MULTIPROC_DIR is set) and structured JSON logs. Scored rows go to the prediction store
(churnops.monitoring.store). Nothing here runs at import time; the app factory builds what it
needs.
"""

from __future__ import annotations

import glob
import json
import logging
import logging.handlers
import os
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

if TYPE_CHECKING:
    from churnops.serving.writer import WriterState

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServingMetrics:
    """The API's Prometheus collectors, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess_dir = os.environ.get(MULTIPROC_ENV) or None
        self.multiprocess = self.multiprocess_dir is not None
        self.requests = Counter(
            "churnops_http_requests",
            "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "churnops_http_request_duration_seconds",
            "Time to answer an HTTP request.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model_version = Gauge(
            "churnops_model_version",
            "Model version this worker serves (0: none yet).",
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        self.swaps = Counter(
            "churnops_model_swaps", "Model versions swapped in.", registry=self.registry
        )
        self.failed_swaps = Counter(
            "churnops_model_swap_failures",
            "Versions that failed to load or smoke-test and were not swapped in.",
            registry=self.registry,
        )
        self.registry_up = Gauge(
            "churnops_registry_reachable",
            "1 when the last alias poll reached the registry.",
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        self.predictions = Counter(
            "churnops_predictions",
            "Rows scored, by role (production, canary: answered; shadow: scored after the "
            "answer, never returned), version and predicted class.",
            ["role", "version", "predicted_class"],
            registry=self.registry,
        )
        self.scoring = Histogram(
            "churnops_scoring_duration_seconds",
            "Time of one engine call of the challenger, by role (shadow, canary) and version; "
            "production's is churnops_http_request_duration_seconds.",
            ["role", "version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.challenger_version = Gauge(
            "churnops_challenger_version",
            "Challenger version this worker follows (0: none).",
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        self.shadow_dropped = Counter(
            "churnops_shadow_dropped_rows",
            "Rows the shadow challenger did not score: its queue was full (production answered "
            "them all the same).",
            registry=self.registry,
        )
        self.store_unwritten = Gauge(
            "churnops_store_unwritten_rows",
            "Answered rows waiting in memory for the prediction store.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.store_rows = Counter(
            "churnops_store_rows",
            "Prediction-store rows by outcome: written; dropped (buffer full while the store "
            "failed); bad (a row the store cannot take); recovered (spooled by a stopped worker, "
            "written by this one).",
            ["outcome"],
            registry=self.registry,
        )
        self.store_failed_writes = Counter(
            "churnops_store_failed_writes",
            "Prediction-store writes that failed (retried with backoff).",
            registry=self.registry,
        )
        self._store_seen: dict[str, int] = {}
        self.model_version.set(0)
        self.challenger_version.set(0)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        labels = (route, method, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def observe_predictions(
        self, labels: Iterable[int], version: int, role: str = "production"
    ) -> None:
        """Count scored rows by role, version and predicted class."""
        positives = 0
        total = 0
        for label in labels:
            positives += int(label)
            total += 1
        tag = str(version)
        if positives:
            self.predictions.labels(role, tag, "1").inc(positives)
        if total - positives:
            self.predictions.labels(role, tag, "0").inc(total - positives)

    def observe_store(self, state: WriterState) -> None:
        """Publish the store writer's counts (the writer thread calls this every tick)."""
        self.store_unwritten.set(state.unwritten_rows)
        for outcome, total in (
            ("written", state.written_rows),
            ("dropped", state.dropped_rows),
            ("bad", state.bad_rows),
            ("recovered", state.recovered_rows),
            ("failed_writes", state.failed_writes),
        ):
            delta = total - self._store_seen.get(outcome, 0)
            if delta > 0:
                self._store_seen[outcome] = total
                if outcome == "failed_writes":
                    self.store_failed_writes.inc(delta)
                else:
                    self.store_rows.labels(outcome).inc(delta)

    def workers_serving(self) -> int | None:
        """How many live worker processes serve a model, from the version gauge every worker
        writes in multiprocess mode; None in a single process, whose own state says it."""
        if self.multiprocess_dir is None:
            return None
        # NB: only the liveall gauges' files: a probe every few seconds reads a few KB.
        files = glob.glob(os.path.join(self.multiprocess_dir, "gauge_liveall_*.db"))
        serving = set()
        for family in MultiProcessCollector.merge(files, accumulate=False):
            if family.name != "churnops_model_version":
                continue
            for sample in family.samples:
                pid = int(sample.labels.get("pid", "0"))
                if sample.value > 0 and _alive(pid):
                    serving.add(pid)
        return len(serving)

    def exposition(self) -> bytes:
        """The Prometheus text format, summed over every worker in multiprocess mode."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged)
        return generate_latest(merged)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs: a dead worker's gauge file stays behind."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class JsonFormatter(logging.Formatter):
    """One JSON object per log record: time, level, logger, message, and any extra fields."""

    _standard = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message"}

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as one JSON line."""
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key, value in record.__dict__.items():
            # NB: uvicorn adds color_message, the message again with ANSI colour codes.
            if key not in self._standard and not key.startswith("_") and key != "color_message":
                document[key] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


LOG_FORMATS = ("auto", "text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def json_logs(log_format: str) -> bool:
    """Whether logs go out as JSON lines: asked for, or ``auto`` and stderr is no terminal (a
    log collector reads it); a person at a terminal reads text lines."""
    return log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())


def configure_logging(log_format: str = "auto", level: int = logging.INFO) -> None:
    """Route every log record to stderr, as text lines or JSON lines (see json_logs), the same
    in every process of one command so a terminal never shows the two mixed."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if json_logs(log_format) else logging.Formatter(TEXT_FORMAT, "%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # NB: no line per request: /metrics counts them and the prediction store keeps the rows.
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = []
    access.propagate = False
    for noisy in ("mlflow", "httpx", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # NB: urllib3 warns "Retrying ..." on every retry while the registry is down; churnops
    # reports the outage itself (once, on /model and /metrics, or as the command's error).
    logging.getLogger("urllib3").setLevel(logging.ERROR)
