"""The churnops exception tree: every expected failure is one of these, with a message that says
what to do next. The CLI prints the message on one line and exits with ``exit_code``; the API maps
``http_status`` onto its responses.

    ChurnopsError                 exit 1
    ├── DataError                 exit 1  bad or unusable input data
    ├── VersionNotFoundError      exit 1  a model version that does not exist     (HTTP 404)
    ├── GateRefusedError          exit 1  promotion refused by the quality gate   (HTTP 409)
    ├── GateUnavailableError      exit 2  a gate criterion could not be checked; retry
    ├── StaleMoveError            exit 1  production moved while deciding; re-run (HTTP 409)
    ├── LockTimeoutError          exit 1  another live move held the ledger too long
    ├── NoRollbackTargetError     exit 1  nothing earlier to roll back to          (HTTP 409)
    ├── UnsafeModelError          exit 1  a version that would unpickle, or is too big
    ├── ModelFilesMissingError    exit 1  a version whose files are gone from the store
    ├── NoProductionModelError    exit 1  the alias is not set yet                 (HTTP 503)
    ├── WorkersNotReadyError              an API worker has no model loaded yet    (HTTP 503)
    ├── BatchTooLargeError        exit 1  a batch over the row limit               (HTTP 413)
    ├── UnsupportedMediaTypeError         a request body that is not JSON          (HTTP 415)
    ├── EventTimeError                    a bad X-Event-Time header                (HTTP 422)
    ├── ConfigurationError        exit 1  a setting (environment variable) is invalid
    ├── StoreBusyError            exit 1  another compaction runs on the prediction store
    ├── PortInUseError            exit 1  a server cannot bind its port
    ├── ServerStartError          exit 1  a server process died or did not answer in time
    ├── ApiUnavailableError       exit 2  the prediction API does not answer (simulate)
    └── TrackingUnavailableError  exit 2  the tracking server does not answer      (HTTP 503)
        └── TrackingServerError   exit 2  it answers, but with server errors (its database or
                                          artifact store is down)
"""

from __future__ import annotations


class ChurnopsError(Exception):
    """Base of every expected churnops failure."""

    exit_code = 1
    http_status = 400


class ConfigurationError(ChurnopsError):
    """A setting read from the environment is invalid (named, without its value)."""


class DataError(ChurnopsError):
    """Input data cannot be used for training or scoring."""


class StoreBusyError(ChurnopsError):
    """Another `churnops store compact` holds the prediction store's compaction lock."""


class EngineError(ChurnopsError):
    """A query engine cannot run here (Spark not installed, no Java, a bad master); the message
    names the fix."""


class VersionNotFoundError(ChurnopsError):
    """The requested model version does not exist in the registry."""

    http_status = 404


class GateRefusedError(ChurnopsError):
    """The quality gate refuses to let a version into production; ``report`` says why."""

    http_status = 409

    def __init__(self, message: str, report: object = None) -> None:
        super().__init__(message)
        self.report = report


class GateUnavailableError(ChurnopsError):
    """A gate criterion could not be checked (the champion did not load or score for a reason
    a retry may cure); the gate fails closed and nothing is changed."""

    exit_code = 2
    http_status = 503


class StaleMoveError(ChurnopsError):
    """Production moved while a command was deciding; nothing was changed."""

    http_status = 409


class LockTimeoutError(ChurnopsError):
    """Another churnops command held the alias lock for too long."""


class NoRollbackTargetError(ChurnopsError):
    """There is no eligible version to roll back to."""

    http_status = 409


class UnsafeModelError(ChurnopsError):
    """A version would need unpickling or types outside churnops's allow-list to load."""


class ModelFilesMissingError(ChurnopsError):
    """A version's model files are gone from the artifact store (deleted, or never uploaded)."""


class NoProductionModelError(ChurnopsError):
    """The serving alias points at no version yet."""

    http_status = 503


class WorkersNotReadyError(ChurnopsError):
    """Some of the API's worker processes have no model loaded yet (/ready answers 503)."""

    http_status = 503


class BatchTooLargeError(ChurnopsError):
    """A batch has more rows than the server accepts."""

    http_status = 413


class UnsupportedMediaTypeError(ChurnopsError):
    """A request body sent as anything but application/json."""

    http_status = 415


class EventTimeError(ChurnopsError):
    """The X-Event-Time header is not an ISO 8601 time with a zone, or is in the future."""

    http_status = 422


class PortInUseError(ChurnopsError):
    """A server cannot bind its address because something else holds it."""


class ServerStartError(ChurnopsError):
    """A server process exited early or did not answer within its start-up deadline."""


class AuthenticationError(ChurnopsError):
    """The tracking server did not accept the credentials (HTTP 401)."""


class PermissionDeniedError(ChurnopsError):
    """The tracking server refused this user the operation (HTTP 403)."""


class ApiUnavailableError(ChurnopsError):
    """The prediction API `churnops simulate` sends traffic to does not answer."""

    exit_code = 2


class TrackingUnavailableError(ChurnopsError):
    """The MLflow tracking server does not answer."""

    exit_code = 2
    http_status = 503

    def __init__(self, tracking_uri: str, detail: str = "") -> None:
        self.tracking_uri = tracking_uri
        hint = (
            f"MLflow tracking server at {tracking_uri} does not answer"
            + (f" ({detail})" if detail else "")
            + "; start it with `churnops server` (or `make up`), or point MLFLOW_TRACKING_URI at a "
            "running one"
        )
        super().__init__(hint)


class TrackingServerError(TrackingUnavailableError):
    """The tracking server answers, but fails requests (5xx): its database or artifact store is
    down or overloaded."""

    def __init__(self, tracking_uri: str, detail: str = "") -> None:
        super().__init__(tracking_uri, detail)
        self.args = (
            f"the MLflow tracking server at {tracking_uri} failed the request"
            + (f" ({detail})" if detail else "")
            + ": its database or artifact store may be down; check its log, then retry "
            "(nothing half-done is kept: an interrupted move is finished by the next promote or "
            "rollback)",
        )

    def __str__(self) -> str:
        return str(self.args[0])
