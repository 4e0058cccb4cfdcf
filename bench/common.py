"""What several benchmarks do the same way: a tracking server of their own on a free port with
one version trained on the built-in data and promoted, and their figures written as JSON."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.serve import free_port
from churnops import lifecycle, tracking_server
from churnops.config import Settings, apply_mlflow_client_limits


def write_results(path: Path, figures: dict[str, Any]) -> None:
    """A benchmark's figures as JSON at ``path``, with the date and the machine they ran on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    path.write_text(json.dumps(stamp | figures, indent=2))


@contextmanager
def promoted_model(prefix: str) -> Iterator[tuple[Settings, dict[str, str], Path]]:
    """A fresh folder and tracking server with v1 in production: (settings, the environment
    that reproduces them in a child process, the folder)."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    port = free_port()
    settings = Settings(tracking_uri=f"http://127.0.0.1:{port}", data_dir=work)
    apply_mlflow_client_limits(settings)
    env = {**os.environ, **settings.as_environment()}
    server = tracking_server.start(settings, port=port, quiet=True)
    try:
        trained = lifecycle.train(settings, data_file=None, version_label="v1", seed=1, gate_f1=0.6)
        lifecycle.promote(settings, trained.version)
        yield settings, env, work
    finally:
        server.stop()
