"""The lean tracking-server launcher: MLflow's own FastAPI app, served by uvicorn in this process,
with only what a model registry needs.

Plain `mlflow server` is a CLI process that initialises the stores and then execs uvicorn with 4
workers, plus a job runner and 7 job consumers for GenAI jobs: 15 processes, ~2.9 GiB, 12-16 s
until it answers here. This module does the same initialisation (the schema upgrade runs once,
here, before any worker starts, because concurrent first starts race on migrations) and then runs
the same app with uvicorn directly: one process by default, no job execution, no second
interpreter. MLflow's security middleware (allowed hosts, CORS) is part of that app and stays on.

What it adds to MLflow's app: without --jobs, the requests that would submit a job (the UI's
"Run evaluation", scorer, issue-detection and prompt-optimization buttons, the job API) get a
501 that says how to enable them, before MLflow creates a run the job would never finish; with
--jobs, MLflow's job runner starts beside the server, as `mlflow server` starts it.

    python -m churnops.registry_app --backend-store-uri URI --artifacts-destination DEST
        [--host 127.0.0.1] [--port 5000] [--workers 1] [--app-name basic-auth] [--jobs]
        [--allowed-hosts H1,H2] [--cors-allowed-origins O1,O2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import uuid
from typing import Any

# NB: MLflow's server reads its configuration from these variables, as `mlflow server` sets them.
_MLFLOW_ENV = {
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "MLFLOW_ENABLE_WORKSPACES": "false",
    "_MLFLOW_SGI_NAME": "uvicorn",
    "_MLFLOW_IN_JOB_EXECUTOR": "false",
}
ARTIFACT_ROOT = "mlflow-artifacts:/"
LOOPBACK = ("localhost", "localhost:*", "127.0.0.1", "127.0.0.1:*", "[::1]", "[[]::1]:*")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The launcher's arguments (a subset of `mlflow server`'s, same names)."""
    parser = argparse.ArgumentParser(prog="python -m churnops.registry_app")
    # NB: read from the environment by default, so a database password stays off `ps`.
    parser.add_argument(
        "--backend-store-uri",
        default=os.environ.get("CHURNOPS_BACKEND_STORE_URI"),
        help="database URI (default: $CHURNOPS_BACKEND_STORE_URI)",
    )
    parser.add_argument("--artifacts-destination", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--app-name", default=None, choices=[None, "basic-auth"])
    parser.add_argument("--jobs", action="store_true", help="run MLflow's job runner")
    parser.add_argument("--allowed-hosts", default=None)
    parser.add_argument("--cors-allowed-origins", default=None)
    args = parser.parse_args(argv)
    if not args.backend_store_uri:
        parser.error("--backend-store-uri or CHURNOPS_BACKEND_STORE_URI is required")
    return args


def configure(args: argparse.Namespace) -> str:
    """Set MLflow's server variables, initialise the stores once; return the app to serve."""
    # NB: before MLflow's server module is imported: it builds its Flask app, security
    # middleware included, from these variables at import time.
    os.environ.update(_MLFLOW_ENV)
    # NB: the same variables `mlflow server --allowed-hosts/--cors-allowed-origins` sets.
    if args.allowed_hosts:
        # NB: MLflow's list replaces its defaults; the loopback names stay allowed (this
        # launcher's own readiness check and local clients use them, and a rebinding attack
        # arrives under the attacker's name, never these).
        os.environ["MLFLOW_SERVER_ALLOWED_HOSTS"] = ",".join([args.allowed_hosts, *LOOPBACK])
    if args.cors_allowed_origins:
        os.environ["MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"] = args.cors_allowed_origins
    from mlflow.server import (
        ARTIFACT_ROOT_ENV_VAR,
        ARTIFACTS_DESTINATION_ENV_VAR,
        BACKEND_STORE_URI_ENV_VAR,
        REGISTRY_STORE_URI_ENV_VAR,
        SERVE_ARTIFACTS_ENV_VAR,
    )

    os.environ.update(
        {
            BACKEND_STORE_URI_ENV_VAR: args.backend_store_uri,
            REGISTRY_STORE_URI_ENV_VAR: args.backend_store_uri,
            ARTIFACT_ROOT_ENV_VAR: ARTIFACT_ROOT,
            SERVE_ARTIFACTS_ENV_VAR: "true",
            ARTIFACTS_DESTINATION_ENV_VAR: args.artifacts_destination,
            # NB: one id per boot, shared by the workers, as `mlflow server` does.
            "_MLFLOW_SERVER_BOOT_ID": uuid.uuid4().hex,
        }
    )
    from mlflow.server.handlers import initialize_backend_stores

    initialize_backend_stores(args.backend_store_uri, args.backend_store_uri, ARTIFACT_ROOT)
    if args.jobs:
        _enable_jobs(args)
    if args.app_name == "basic-auth":
        from mlflow.server import _bootstrap_basic_auth

        _bootstrap_basic_auth()
        os.environ["_MLFLOW_AUTH_ADMIN_BOOTSTRAPPED"] = "true"
        os.environ[INNER_APP_ENV] = "mlflow.server.auth:create_app"
    else:
        os.environ[INNER_APP_ENV] = "mlflow.server.fastapi_app:app"
    return "churnops.registry_app:create_app"


INNER_APP_ENV = "_CHURNOPS_INNER_APP"
JOBS_ENV = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"
# NB: every POST that submits a job in MLflow 3.17 (handlers.submit_job's callers and the job
# API); some create a run first, which a job that never starts would leave RUNNING or FAILED.
JOB_SUBMITTING_PATHS = frozenset(
    {
        "/ajax-api/3.0/jobs",
        "/ajax-api/3.0/mlflow/genai/evaluate/invoke",
        "/ajax-api/3.0/mlflow/scorer/invoke",
        "/ajax-api/3.0/mlflow/issues/invoke",
        "/api/3.0/mlflow/prompt-optimization/jobs",
        "/ajax-api/3.0/mlflow/prompt-optimization/jobs",
    }
)
JOBS_OFF = (
    "this churnops server runs no jobs (evaluations, scorers, issue detection, prompt "
    "optimization); start it with `churnops server --jobs` to run them. Nothing was created."
)


def _enable_jobs(args: argparse.Namespace) -> None:
    """Start MLflow's job runner beside this server, as `mlflow server` does."""
    from mlflow.server.constants import HUEY_STORAGE_PATH_ENV_VAR
    from mlflow.server.jobs.utils import _check_requirements, _launch_job_execution_runner

    _check_requirements(args.backend_store_uri)
    os.environ[JOBS_ENV] = "true"
    # NB: shared by the server's workers and the job consumers; in memory where possible.
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    os.environ[HUEY_STORAGE_PATH_ENV_VAR] = tempfile.mkdtemp(prefix="churnops-jobs-", dir=shm)
    if args.app_name == "basic-auth":
        import secrets

        from mlflow.environment_variables import _MLFLOW_INTERNAL_GATEWAY_AUTH_TOKEN

        os.environ[_MLFLOW_INTERNAL_GATEWAY_AUTH_TOKEN.name] = secrets.token_hex(32)
    server_uri = f"http://{args.host}:{args.port}"
    job_env = {
        **os.environ,
        "MLFLOW_BACKEND_STORE_URI": args.backend_store_uri,
        "MLFLOW_TRACKING_URI": server_uri,
        "MLFLOW_DEFAULT_ARTIFACT_ROOT": ARTIFACT_ROOT,
    }
    job_env.setdefault("MLFLOW_GATEWAY_URI", server_uri)
    # NB: the runner watches this process (uvicorn runs in it) and stops when it dies.
    _launch_job_execution_runner(job_env, os.getpid())


class _JobsOff:
    """ASGI wrapper: a job-submitting request gets a 501 before MLflow sees it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"].rstrip("/") in JOB_SUBMITTING_PATHS
        ):
            body = json.dumps({"error_code": "NOT_IMPLEMENTED", "message": JOBS_OFF}).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ]
            await send({"type": "http.response.start", "status": 501, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def create_app() -> Any:
    """The app each worker serves: MLflow's (or its basic-auth app), guarded when jobs are off."""
    import importlib

    module, _, name = os.environ[INNER_APP_ENV].partition(":")
    found = getattr(importlib.import_module(module), name)
    app = found() if name == "create_app" else found
    return app if os.environ.get(JOBS_ENV) == "true" else _JobsOff(app)


def main(argv: list[str] | None = None) -> None:
    """Run the registry server until SIGINT/SIGTERM."""
    import uvicorn

    args = parse(argv)
    app = configure(args)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        workers=args.workers,
        factory=True,
        # NB: info, so the log says where it listens; per-request access lines stay off.
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
