"""The lean tracking-server launcher: MLflow's own FastAPI app, served by uvicorn in this process,
with only what a model registry needs.

Plain `mlflow server` is a CLI process that initialises the stores and then execs uvicorn with 4
workers, plus a job runner and 7 job consumers for GenAI jobs: 15 processes, ~2.9 GiB, 12-16 s
until it answers here. This module does the same initialisation (the schema upgrade runs once,
here, before any worker starts, because concurrent first starts race on migrations) and then runs
the same app with uvicorn directly: one process by default, no job execution, no second
interpreter. MLflow's security middleware (allowed hosts, CORS) is part of that app and stays on.

    python -m churnops.registry_app --backend-store-uri URI --artifacts-destination DEST
        [--host 127.0.0.1] [--port 5000] [--workers 1] [--app-name basic-auth]
"""

from __future__ import annotations

import argparse
import os
import uuid

# NB: MLflow's server reads its configuration from these variables, as `mlflow server` sets them.
_MLFLOW_ENV = {
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "MLFLOW_ENABLE_WORKSPACES": "false",
    "_MLFLOW_SGI_NAME": "uvicorn",
    "_MLFLOW_IN_JOB_EXECUTOR": "false",
}
ARTIFACT_ROOT = "mlflow-artifacts:/"


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
    args = parser.parse_args(argv)
    if not args.backend_store_uri:
        parser.error("--backend-store-uri or CHURNOPS_BACKEND_STORE_URI is required")
    return args


def configure(args: argparse.Namespace) -> str:
    """Set MLflow's server variables, initialise the stores once; return the app to serve."""
    from mlflow.server import (
        ARTIFACT_ROOT_ENV_VAR,
        ARTIFACTS_DESTINATION_ENV_VAR,
        BACKEND_STORE_URI_ENV_VAR,
        REGISTRY_STORE_URI_ENV_VAR,
        SERVE_ARTIFACTS_ENV_VAR,
    )

    os.environ.update(_MLFLOW_ENV)
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
    if args.app_name == "basic-auth":
        from mlflow.server import _bootstrap_basic_auth

        _bootstrap_basic_auth()
        os.environ["_MLFLOW_AUTH_ADMIN_BOOTSTRAPPED"] = "true"
        return "mlflow.server.auth:create_app"
    return "mlflow.server.fastapi_app:app"


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
        factory=app.endswith("create_app"),
        # NB: info, so the log says where it listens; per-request access lines stay off.
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
