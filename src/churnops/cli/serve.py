"""The long-running commands: the tracking server, the API, and `up` (everything at once)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import click

from churnops.cli.command import announce, command, read_settings, stop_on_sigterm
from churnops.config import LOOPBACK_HOSTS
from churnops.errors import ServerStartError, TrackingUnavailableError
from churnops.gate import DEFAULT_GATE_F1

if TYPE_CHECKING:
    from churnops import tracking_server


def _redacted(uri: str) -> str:
    """A database URI without its password, for printing."""
    parsed = urlparse(uri)
    if parsed.password:
        return uri.replace(f":{parsed.password}@", ":***@")
    return uri


def _split_tracking_uri(uri: str) -> tuple[str, int] | None:
    parsed = urlparse(uri)
    if parsed.scheme != "http" or parsed.hostname not in ("127.0.0.1", "localhost"):
        return None
    return "127.0.0.1", parsed.port or 80


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--workers",
    default=None,
    type=click.IntRange(min=1),
    help="uvicorn worker processes.  [default: 1 on up to 2 cores, else cores / 2, at most 4]",
)
@click.option(
    "--backend-store-uri",
    default=None,
    help="Database for runs and the registry, e.g. postgresql+psycopg://user:pw@host/db "
    "(CHURNOPS_BACKEND_STORE_URI).  [default: SQLite DATA_DIR/mlflow.db]",
)
@click.option(
    "--artifacts-destination",
    default=None,
    help="Where the server stores artifacts, e.g. s3://bucket/path, with the endpoint and "
    "keys from MLFLOW_S3_ENDPOINT_URL / AWS_* in the server's environment only "
    "(CHURNOPS_ARTIFACTS_DESTINATION).  [default: DATA_DIR/mlflow/artifacts]",
)
@click.option(
    "--auth",
    is_flag=True,
    help="Require users (MLflow's basic-auth app). Needs MLFLOW_AUTH_ADMIN_PASSWORD and "
    "MLFLOW_FLASK_SERVER_SECRET_KEY in the environment; users live in DATA_DIR/auth.",
)
@click.option(
    "--jobs",
    is_flag=True,
    help="Also run MLflow's job runner, for the UI's evaluation, scorer, issue-detection and "
    "prompt-optimization buttons (more processes and memory). Without it those requests get a "
    "501 that says so, and leave nothing behind.",
)
@click.option(
    "--allowed-hosts",
    default=None,
    help="Host names the server answers, comma-separated, `*` patterns allowed (as `mlflow "
    "server`; the loopback names always stay allowed).  [default: loopback names and private "
    "addresses]",
)
@click.option(
    "--cors-allowed-origins",
    default=None,
    help="Origins browsers may call it from, comma-separated (as `mlflow server`; default: "
    "localhost origins).",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Project data folder (default: CHURNOPS_DATA_DIR or the current directory).",
)
@command
def server(
    host: str,
    port: int,
    workers: int | None,
    backend_store_uri: str | None,
    artifacts_destination: str | None,
    auth: bool,
    jobs: bool,
    allowed_hosts: str | None,
    cors_allowed_origins: str | None,
    data_dir: Path | None,
) -> None:
    """Run the tracking server (MLflow's app, launched lean: one process by default, no job
    runner unless --jobs) until Ctrl-C. Artifacts go through the server, so clients need no
    storage access. Webhook secrets are encrypted with a key kept in DATA_DIR (unless
    MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY is set), so they survive restarts."""
    from churnops import tracking_server

    settings = read_settings(data_dir)
    if backend_store_uri:
        settings = settings.model_copy(update={"backend_store_uri": backend_store_uri})
    if artifacts_destination:
        settings = settings.model_copy(update={"artifacts_destination": artifacts_destination})
    if host not in LOOPBACK_HOSTS and not auth:
        click.echo(
            f"warning: binding {host} without --auth: anyone who can reach it can read, "
            "register and promote models; bind 127.0.0.1 unless the network is trusted",
            err=True,
        )
    stop_on_sigterm()
    proc: tracking_server.ServerProcess | None = None
    try:
        proc = tracking_server.start(
            settings,
            host=host,
            port=port,
            workers=workers or tracking_server.default_workers(),
            auth=auth,
            options=tracking_server.ServerOptions(jobs, allowed_hosts, cors_allowed_origins),
        )
        ui = f"http://{host}:{port}"
        announce(
            {"tracking_uri": ui, "ui": ui},
            f"MLflow UI and tracking server: {ui}\n"
            f"backend: {_redacted(settings.server_backend_store_uri)}\n"
            f"artifacts: {settings.server_artifacts_destination}\nCtrl-C to stop.",
        )
        code = proc.process.wait()
        if code != 0:
            raise ServerStartError(f"the tracking server exited with code {code}")
    except KeyboardInterrupt:
        click.echo("stopping the tracking server", err=True)
    finally:
        if proc is not None:
            proc.stop()


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Worker processes (default: CHURNOPS_WORKERS, or one per core up to 4).",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.05),
    help="Seconds between alias polls (default: CHURNOPS_POLL_INTERVAL or 1).",
)
@click.option(
    "--store/--no-store",
    "store_predictions",
    default=None,
    help="Keep every prediction in the prediction store, CHURNOPS_PREDICTION_STORE "
    "(default: on, under <data dir>/store).",
)
@command
def serve(
    host: str,
    port: int,
    workers: int | None,
    poll_interval: float | None,
    store_predictions: bool | None,
) -> None:
    """Serve models:/MODEL@ALIAS over HTTP, following every alias move live.

    MODEL is CHURNOPS_MODEL_NAME and ALIAS is CHURNOPS_ALIAS (default: churn_model and
    production); the first line printed names the model URI served. Loads each newly aliased
    version in the background, smoke-tests it, then swaps it in; requests never wait for a
    load. Routes: /predict, /predict/batch, /model, /ready, /health, /metrics, /docs.
    """
    from churnops.serving import run_api

    overrides = {
        "workers": workers,
        "poll_interval": poll_interval,
        "store_predictions": store_predictions,
    }
    settings = read_settings().model_copy(
        update={k: v for k, v in overrides.items() if v is not None}
    )
    from churnops.tracking_server import ensure_port_free

    # NB: checked before the banner, so a taken port never prints an address that is not ours.
    ensure_port_free(host, port)
    api = f"http://{host}:{port}"
    announce(
        {"api": api, "docs": f"{api}/docs"},
        f"churnops API: {api}  (docs: {api}/docs), serving {settings.model_uri} "
        f"with {settings.workers} worker(s)",
    )
    run_api(settings, host, port)


@click.command()
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="Port of the prediction API.",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Project data folder (default: CHURNOPS_DATA_DIR or the current directory).",
)
@command
def up(port: int, data_dir: Path | None) -> None:
    """The main job: tracking server, data, a first production model, then the API.

    Starts the tracking server if none answers at the tracking URI (its port is the URI's:
    MLFLOW_TRACKING_URI=http://127.0.0.1:5001 for another), generates the default data if
    missing, trains and promotes a first version if none is in production, then serves the API
    on --port. Both ports are checked before anything starts. Ctrl-C stops everything it started.
    With make: `make up MLFLOW_PORT=5001 API_PORT=8001`.
    """
    from churnops import data, lifecycle, registry, tracking_server
    from churnops.serving import run_api

    settings = read_settings(data_dir)
    # NB: before anything is started, trained or promoted: a taken port fails at once.
    tracking_server.ensure_port_free("127.0.0.1", port)
    stop_on_sigterm()
    started: tracking_server.ServerProcess | None = None
    try:
        try:
            registry.ping(settings)
        except TrackingUnavailableError:
            address = _split_tracking_uri(settings.tracking_uri)
            if address is None:
                raise
            tracking_server.ensure_port_free(*address)
            server_log = settings.data_dir / "logs" / "mlflow-server.log"
            click.echo(
                f"starting the tracking server at {settings.tracking_uri} (log: {server_log})",
                err=True,
            )
            started = tracking_server.start(
                settings, host=address[0], port=address[1], log_file=server_log
            )
        data_file = settings.default_data_file
        if not data_file.exists():
            data.write_generated(data_file)
            click.echo(f"generated {data_file}", err=True)
        if registry.alias_version(settings) is None:
            report = lifecycle.train(
                settings,
                data_file=data_file,
                version_label=None,
                seed=42,
                gate_f1=DEFAULT_GATE_F1,
                kind="logreg",
            )
            click.echo(f"trained version {report.version}: f1={report.metrics['f1']:.4f}", err=True)
            moved = lifecycle.promote(settings, report.version, reason="first version (up)")
            click.echo(moved.move.describe(), err=True)
        api = f"http://127.0.0.1:{port}"
        addresses = {"ui": settings.tracking_uri, "api": api, "docs": f"{api}/docs"}
        # NB: a second shell knows neither port: printed as one line to paste, so the
        # commands of the README reach these servers and not the defaults.
        announce(
            addresses,
            f"MLflow UI: {settings.tracking_uri}\nAPI docs:  {api}/docs\n"
            "In another shell, paste this line first:\n"
            f"  export MLFLOW_TRACKING_URI={settings.tracking_uri} CHURNOPS_API_URL={api}\n"
            "Ctrl-C to stop.",
        )
        run_api(settings, "127.0.0.1", port)
    except KeyboardInterrupt:
        pass
    finally:
        if started is not None:
            click.echo("stopping the tracking server", err=True)
            started.stop()
