"""Running the API: uvicorn with its workers, each building the app from the environment, and
the httptools protocol with TCP_NODELAY that multi-worker mode needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import tempfile

from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from churnops.config import LOOPBACK_HOSTS, Settings, apply_mlflow_client_limits
from churnops.observability import MULTIPROC_ENV, configure_logging

log = logging.getLogger(__name__)


class NoDelayHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with TCP_NODELAY always on.

    NB: in multi-worker mode the workers inherit a listening socket whose ``proto`` is 0, so
    asyncio skips TCP_NODELAY on accepted connections and every response waits ~40 ms for a
    delayed ACK (Nagle). Measured here: 22 req/s at one connection instead of ~1,200.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


def app_from_environment() -> FastAPI:
    """Factory each uvicorn worker process calls: settings from the environment, JSON logs."""
    # NB: imported here, in the worker: the supervisor process that runs ``run_api`` never
    # needs the app, and importing it (MLflow, pandas, pyarrow) cost it ~140 MiB of RSS.
    from churnops.serving.app import create_app

    settings = Settings()
    apply_mlflow_client_limits(settings)
    configure_logging(settings.log_format)
    return create_app(settings)


def run_api(settings: Settings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the API with uvicorn until SIGINT/SIGTERM, finishing in-flight requests first.

    Workers are separate processes that read their settings from the environment, so the
    caller's settings are exported there first.
    """
    import uvicorn

    from churnops.tracking_server import ensure_port_free

    ensure_port_free(host, port)
    if host not in LOOPBACK_HOSTS and settings.api_token is None:
        log.warning(
            "serving on %s without CHURNOPS_API_TOKEN: anyone who can reach this address can "
            "use the API; set a token or bind 127.0.0.1",
            host,
        )
    os.environ.update(settings.as_environment())
    with tempfile.TemporaryDirectory(prefix="churnops-metrics-") as metrics_dir:
        if settings.workers > 1:
            # NB: every worker writes its metrics here and /metrics sums them.
            os.environ[MULTIPROC_ENV] = metrics_dir
        uvicorn.run(
            "churnops.serving.server:app_from_environment",
            factory=True,
            host=host,
            port=port,
            workers=settings.workers,
            # NB: the stdlib loop, because under uvloop 1% of requests waited ~1 s at 64
            # connections here (p99 1.1 s vs 0.07-0.15 s), at equal throughput.
            loop="asyncio",
            http="churnops.serving.server:NoDelayHttpToolsProtocol",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=10,
        )
