"""The MLflow client and the tracking server's health: every client is built with the settings'
URI (never MLflow's process-wide one), and MLflow's failures become churnops errors that say what
to do next.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx
from mlflow.exceptions import MlflowException, RestException
from mlflow.tracking import MlflowClient
from requests.exceptions import RequestException

from churnops.config import Settings
from churnops.errors import (
    AuthenticationError,
    ChurnopsError,
    PermissionDeniedError,
    TrackingServerError,
    TrackingUnavailableError,
)

# NB: what MLflow answers for a name, version or alias that does not exist (the REST store says
# the first, some paths the second).
MISSING = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})
# NB: what MLflow's REST layer reports for a failure inside the server (a 5xx).
_SERVER_FAILURES = frozenset({"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "BAD_GATEWAY"})


def client(settings: Settings) -> MlflowClient:
    """A client of the tracking server and model registry at ``settings.tracking_uri``."""
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def ping(settings: Settings, timeout: float = 3.0) -> None:
    """Raise TrackingUnavailableError unless the tracking server answers its health check."""
    uri = settings.tracking_uri
    if not uri.startswith(("http://", "https://")):
        return  # NB: a database or file URI is opened in-process; there is no server to ask.
    try:
        response = httpx.get(f"{uri}/health", timeout=timeout)
    except httpx.HTTPError as exc:
        raise TrackingUnavailableError(uri, type(exc).__name__) from None
    if response.status_code != 200:
        raise TrackingUnavailableError(uri, f"/health answered {response.status_code}")
    if response.headers.get("content-type", "").startswith("application/json"):
        # NB: MLflow's /health answers the text "OK"; churnops's API answers JSON.
        raise ChurnopsError(
            f"{uri} is the churnops prediction API, not an MLflow tracking server; set "
            "MLFLOW_TRACKING_URI to the tracking server's address (`churnops up` prints it as "
            "'MLflow UI', by default http://127.0.0.1:5000)"
        )


def _answers(settings: Settings) -> bool:
    """Whether the tracking server answers its health check right now."""
    try:
        ping(settings, timeout=2.0)
    except TrackingUnavailableError:
        return False
    return settings.tracking_uri.startswith(("http://", "https://"))


def access_error(settings: Settings, exc: MlflowException) -> ChurnopsError | None:
    """The churnops error for a refusal by an authenticating tracking server, else None."""
    user = settings.tracking_username
    if exc.error_code == "UNAUTHENTICATED":
        return AuthenticationError(
            f"authentication failed at {settings.tracking_uri}"
            + (f" for user {user!r}" if user else " (no user given)")
            + ": set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to valid credentials"
        )
    if exc.error_code == "PERMISSION_DENIED":
        return PermissionDeniedError(
            f"permission denied: the tracking server refused user {user!r} this operation on "
            f"{settings.model_name}; promote and rollback need EDIT on registered model "
            f"{settings.model_name!r} and on experiment {settings.ledger_experiment!r} "
            "(ask an admin to grant them)"
        )
    return None


@contextlib.contextmanager
def mlflow_errors(settings: Settings) -> Iterator[None]:
    """Turn MLflow's connection failures into TrackingUnavailableError, and an authenticating
    server's refusals into AuthenticationError / PermissionDeniedError."""
    try:
        yield
    except RequestException as exc:
        raise TrackingUnavailableError(settings.tracking_uri, type(exc).__name__) from None
    except MlflowException as exc:
        text = str(exc)
        first = text.strip().splitlines()[0][:200] if text.strip() else exc.error_code
        # NB: in this order: a RestException is the server's own answer (its text may quote
        # the artifact store's "connection refused"); the client's retry error says "Max
        # retries exceeded" for a server that kept answering 5xx too; and a connection failure
        # carries INTERNAL_ERROR, MlflowException's default code, so the code alone says little.
        answered = isinstance(exc, RestException) and exc.error_code in _SERVER_FAILURES
        if answered or "too many 5" in text:
            raise TrackingServerError(settings.tracking_uri, first) from None
        if "Max retries exceeded" in text or "Connection refused" in text or "timed out" in text:
            # NB: a server that is up but cut the request (its artifact store is down, say)
            # still answers its health check; one that is down does not.
            if _answers(settings):
                detail = "it cut the connection: " + text.rpartition("(Caused by ")[2][:160]
                raise TrackingServerError(settings.tracking_uri, detail.rstrip(")")) from None
            raise TrackingUnavailableError(settings.tracking_uri, "connection failed") from None
        refused = access_error(settings, exc)
        if refused is not None:
            raise refused from None
        raise


def experiment_id(tracking: MlflowClient, name: str) -> str:
    """The id of the active experiment called ``name``, created when it does not exist."""
    found = tracking.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage != "active":
            raise ChurnopsError(
                f"the MLflow experiment {name!r} is deleted; restore it in the MLflow UI "
                "(or `mlflow experiments restore`) and retry"
            )
        return str(found.experiment_id)
    try:
        return str(tracking.create_experiment(name))
    except MlflowException as exc:
        # NB: another command created it between the two calls.
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        again = tracking.get_experiment_by_name(name)
        if again is None:
            raise
        return str(again.experiment_id)
