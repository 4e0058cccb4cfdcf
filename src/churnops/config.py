"""Typed settings, read once from the environment by an entry point and passed down.

Every environment variable churnops reads is named here, with its type and default. Importing this
module has no side effects: nothing is created and no MLflow state is touched until an entry point
calls :func:`apply_mlflow_client_limits` or a library function uses the paths.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_TRACKING_URI = "http://127.0.0.1:5000"


# NB: here rather than in training/scoring, so the CLI can offer them without importing
# scikit-learn and MLflow (~3 s) for every command.
ModelKind = Literal["logreg", "hgb", "auto"]
MODEL_KINDS: tuple[ModelKind, ...] = ("logreg", "hgb", "auto")
DEFAULT_CHUNK_ROWS = 100_000
TARGET = "churn"
DEFAULT_MAX_UNPACKED_BYTES = 2 * 1024 * 1024 * 1024
# NB: the fewest labelled rows a table must have to be trained on (monitoring's own floor is
# churnops.monitoring.bootstrap.MIN_LABELLED).
MIN_TRAINING_ROWS = 50

# NB: binding anything else exposes a server beyond this machine; the CLI warns when it does.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class Settings(BaseSettings):
    """churnops settings; each field's environment variable is given in its alias."""

    model_config = SettingsConfigDict(env_prefix="CHURNOPS_", extra="ignore", populate_by_name=True)

    tracking_uri: str = Field(
        default=DEFAULT_TRACKING_URI,
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "tracking_uri"),
        description="Where the MLflow tracking server answers (MLFLOW_TRACKING_URI).",
    )
    data_dir: Path = Field(
        default=Path("."),
        description="Project data folder holding mlflow.db, mlflow/artifacts and data/ "
        "(CHURNOPS_DATA_DIR).",
    )
    model_name: str = Field(default="churn_model", description="Registered model name.")
    alias: str = Field(default="production", description="The alias the API serves.")
    challenger_alias: str = Field(
        default="challenger",
        description="The alias of the version tried on live traffic beside production "
        "(CHURNOPS_CHALLENGER_ALIAS): `churnops challenger set` moves it.",
    )
    shadow_queue_rows: int = Field(
        default=20_000,
        ge=0,
        description="Rows waiting for the shadow challenger per worker "
        "(CHURNOPS_SHADOW_QUEUE_ROWS); beyond this, shadow rows are dropped and counted, never "
        "production's.",
    )
    challenger_better_days: float = Field(
        default=7.0,
        gt=0,
        description='`monitor` says "consider promoting" once the challenger has been '
        "significantly better than production for this many days "
        "(CHURNOPS_CHALLENGER_BETTER_DAYS).",
    )
    experiment: str | None = Field(
        default=None,
        description="MLflow experiment for training runs (CHURNOPS_EXPERIMENT); default: the "
        "model's name, so each model's runs are listed apart.",
    )
    tracking_username: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MLFLOW_TRACKING_USERNAME", "tracking_username"),
        description="The user an authenticating tracking server knows churnops by "
        "(MLFLOW_TRACKING_USERNAME; MLflow's client sends it with MLFLOW_TRACKING_PASSWORD).",
    )
    s3_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices("AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "s3_endpoint"),
        description="The S3 endpoint of an s3:// prediction store (AWS_ENDPOINT_URL, else "
        "MLFLOW_S3_ENDPOINT_URL); default: AWS's.",
    )
    s3_region: str = Field(
        default="us-east-1",
        validation_alias=AliasChoices("AWS_DEFAULT_REGION", "s3_region"),
        description="The region of an s3:// prediction store (AWS_DEFAULT_REGION).",
    )
    log_format: Literal["auto", "text", "json"] = Field(
        default="auto",
        description="Log lines on stderr: text in a terminal and JSON otherwise (auto), or "
        "always one of them (CHURNOPS_LOG_FORMAT, or `churnops --log-format`).",
    )
    actor: str | None = Field(
        default=None,
        description="Who moves aliases, for the ledger (CHURNOPS_ACTOR; default: OS user).",
    )
    poll_interval: float = Field(
        default=1.0,
        gt=0,
        description="Seconds between alias polls in the API (CHURNOPS_POLL_INTERVAL).",
    )
    http_timeout: float = Field(
        default=10.0, gt=0, description="Seconds before one MLflow HTTP request gives up."
    )
    http_retries: int = Field(
        default=1, ge=0, description="Retries of a failed MLflow HTTP request (MLflow's own is 7)."
    )
    max_batch_rows: int = Field(
        default=10_000,
        gt=0,
        description="Largest batch /predict/batch accepts (CHURNOPS_MAX_BATCH_ROWS).",
    )
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024, gt=0, description="Largest request body the API reads (413 above)."
    )
    workers: int = Field(
        default_factory=lambda: max(1, min(os.cpu_count() or 1, 4)),
        gt=0,
        description="API worker processes (CHURNOPS_WORKERS); default: one per core, at most 4.",
    )
    store_predictions: bool = Field(
        default=True,
        description="Keep every scored row in the prediction store (CHURNOPS_STORE_PREDICTIONS).",
    )
    prediction_store: str | None = Field(
        default=None,
        description="Where predictions and churn outcomes are kept (CHURNOPS_PREDICTION_STORE): "
        "a folder, or s3://bucket/prefix for replicas on several machines; "
        "default: <data dir>/store.",
    )
    store_flush_seconds: float = Field(
        default=10.0,
        gt=0,
        description="The API writes its buffered rows this often (CHURNOPS_STORE_FLUSH_SECONDS): "
        "rows reach `monitor` within this delay, and a worker writes at most 86400 / this many "
        "files a day.",
    )
    store_buffer_rows: int = Field(
        default=100_000,
        gt=0,
        description="Rows a worker buffers before writing early (CHURNOPS_STORE_BUFFER_ROWS).",
    )
    store_max_buffer_rows: int = Field(
        default=1_000_000,
        gt=0,
        description="Most rows a worker holds while the store cannot be written "
        "(CHURNOPS_STORE_MAX_BUFFER_ROWS, ~0.5 KB each): beyond this, answered rows are dropped "
        "and counted in /model and /metrics instead of growing memory.",
    )
    store_spool: bool = Field(
        default=True,
        description="Keep rows not yet written in a local spool under <data dir>/store-spool "
        "(CHURNOPS_STORE_SPOOL), so a killed worker loses at most its last quarter-second and "
        "the next start writes the rest.",
    )
    store_retention_days: int = Field(
        default=400,
        gt=0,
        description="Day partitions older than this are deleted (CHURNOPS_STORE_RETENTION_DAYS).",
    )
    store_compact_grace_seconds: float = Field(
        default=900.0,
        ge=0,
        description="`churnops store compact` deletes the files it merged only once the merged "
        "file has been visible this long (CHURNOPS_STORE_COMPACT_GRACE_SECONDS), so a reader "
        "that listed them before can still read them; a later run deletes what still waits.",
    )
    churn_horizon_days: float = Field(
        default=30.0,
        gt=0,
        description="An outcome keyed by customer applies to that customer's predictions made "
        "this many days before it, and 'retained' counts only once this long has passed since "
        "the prediction (CHURNOPS_CHURN_HORIZON_DAYS).",
    )
    engine: Literal["duckdb", "spark", "pandas"] = Field(
        default="duckdb",
        description="The query engine `monitor`, `compare` and `labels add` read the prediction "
        "store with (CHURNOPS_ENGINE): duckdb (embedded; memory bounded by the summaries), "
        "spark (a cluster: see CHURNOPS_SPARK_MASTER) or pandas (every row in memory).",
    )
    duckdb_memory: str = Field(
        default="512MB",
        pattern=r"^[0-9]+(\.[0-9]+)?\s*(KB|MB|GB|KiB|MiB|GiB)$",
        description="The most memory the duckdb engine's buffers take (CHURNOPS_DUCKDB_MEMORY, "
        "e.g. 768MB, 4GB); a larger sort or join spills to a temporary folder instead.",
    )
    spark_master: str = Field(
        default="local[2]",
        description="The Spark master the spark engine connects to (CHURNOPS_SPARK_MASTER), "
        "e.g. local[4], spark://host:7077, yarn, k8s://https://host:443.",
    )
    spark_conf: str = Field(
        default="",
        description="Extra Spark settings as comma-separated key=value pairs "
        "(CHURNOPS_SPARK_CONF), e.g. spark.executor.memory=4g,spark.sql.shuffle.partitions=64.",
    )
    backend_store_uri: str | None = Field(
        default=None,
        description="Database of `churnops server` (CHURNOPS_BACKEND_STORE_URI), e.g. "
        "postgresql+psycopg://user:pw@host/db; default: SQLite <data dir>/mlflow.db.",
    )
    artifacts_destination: str | None = Field(
        default=None,
        description="Where `churnops server` keeps artifacts (CHURNOPS_ARTIFACTS_DESTINATION), "
        "e.g. s3://bucket/path; default: <data dir>/mlflow/artifacts.",
    )
    api_url: str = Field(
        default="http://127.0.0.1:8000",
        description="Where the churnops API answers, for the commands that call it "
        "(CHURNOPS_API_URL; `churnops simulate`); `churnops up` prints the line to export.",
    )
    api_token: SecretStr | None = Field(
        default=None,
        description="When set (CHURNOPS_API_TOKEN), every API route but /health and /ready "
        "needs the header `Authorization: Bearer <token>`.",
    )
    gate_f1_min: float = Field(
        default=0.60,
        ge=0,
        le=1,
        description="Policy floor on held-out F1 that promote enforces whatever gate_f1 the "
        "trainer wrote (CHURNOPS_GATE_F1_MIN).",
    )
    lease_seconds: float = Field(
        default=15.0,
        gt=0,
        description="A move's lease (CHURNOPS_LEASE_SECONDS): a mover whose heartbeat stands "
        "still this long is taken for crashed and its ledger entry finished by the next one.",
    )
    move_timeout: float = Field(
        default=60.0,
        gt=0,
        description="How long promote/rollback wait for another live move (CHURNOPS_MOVE_TIMEOUT).",
    )
    failpoint: str | None = Field(
        default=None,
        description="Test hook (CHURNOPS_FAILPOINT): kill the process with SIGKILL at this step "
        "of a move (before-intent, after-intent, after-alias) or of train (before-logging, after "
        "the fit); `<step>:pause` waits there "
        "instead while <data dir>/failpoint-<step>.paused exists; slow-load: every API worker but "
        "the first loads its model 8 s late.",
    )
    max_model_bytes: int = Field(
        default=512 * 1024 * 1024,
        gt=0,
        description="Largest download of one version's model files (CHURNOPS_MAX_MODEL_BYTES); "
        "a bigger version is refused before it is downloaded.",
    )
    max_unpacked_bytes: int = Field(
        default=DEFAULT_MAX_UNPACKED_BYTES,
        gt=0,
        description="Largest a version's skops archive may unpack to "
        "(CHURNOPS_MAX_UNPACKED_BYTES): a small archive of a huge array is refused unread.",
    )
    serve_cache: bool = Field(
        default=True,
        description="Keep a digest-checked copy of the served version under <data dir>/cache "
        "and serve it, marked stale, when the registry is unreachable at start "
        "(CHURNOPS_SERVE_CACHE).",
    )
    api_allowed_hosts: str = Field(
        default="127.0.0.1,localhost,::1",
        description="Host header values the API answers (CHURNOPS_API_ALLOWED_HOSTS, "
        "comma-separated names without ports; * for any): others get 400, so a web page cannot "
        "reach a loopback API through a rebound DNS name.",
    )

    @field_validator("api_token")
    @classmethod
    def _token_is_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        # NB: a token read from a file (a Kubernetes secret) often ends in a newline, which no
        # client sends back; kept, it would lock everyone out.
        value = SecretStr(value.get_secret_value().strip())
        if any(c.isspace() for c in value.get_secret_value()):
            raise ValueError("CHURNOPS_API_TOKEN must not contain spaces or line breaks")
        if len(value.get_secret_value()) < 16:
            raise ValueError(
                "CHURNOPS_API_TOKEN must be at least 16 characters; generate one with "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        return value

    @model_validator(mode="after")
    def _a_crash_costs_one_wait(self) -> Settings:
        if self.move_timeout <= self.lease_seconds:
            raise ValueError(
                f"CHURNOPS_MOVE_TIMEOUT ({self.move_timeout:g} s) must exceed "
                f"CHURNOPS_LEASE_SECONDS ({self.lease_seconds:g} s), so the first move after a "
                "crash waits out the lease instead of failing"
            )
        return self

    @field_validator("tracking_uri")
    @classmethod
    def _tracking_uri_is_not_empty(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value:
            raise ValueError(
                "MLFLOW_TRACKING_URI is empty; unset it or set e.g. http://127.0.0.1:5000"
            )
        if "://" not in value and value != "databricks":
            shown = "" if "@" in value else f" ({value!r})"
            raise ValueError(
                f"MLFLOW_TRACKING_URI{shown} is not an address; set the tracking server's, "
                "e.g. http://127.0.0.1:5000"
            )
        return value

    @property
    def allowed_hosts(self) -> frozenset[str] | None:
        """The Host names the API answers; None when any is allowed."""
        names = {h.strip().lower() for h in self.api_allowed_hosts.split(",") if h.strip()}
        return None if "*" in names else frozenset(names)

    @property
    def backend_db(self) -> Path:
        """SQLite file of the embedded tracking server."""
        return self.data_dir / "mlflow.db"

    @property
    def artifacts_dir(self) -> Path:
        """Artifact store the embedded tracking server proxies."""
        return self.data_dir / "mlflow" / "artifacts"

    @property
    def server_backend_store_uri(self) -> str:
        """The database the tracking server uses."""
        return self.backend_store_uri or f"sqlite:///{self.backend_db.resolve()}"

    @property
    def server_artifacts_destination(self) -> str:
        """The artifact store the tracking server proxies."""
        return self.artifacts_destination or str(self.artifacts_dir.resolve())

    @property
    def default_data_file(self) -> Path:
        """Where `churnops up` keeps the generated training data."""
        return self.data_dir / "data" / "churn.csv"

    @property
    def store_uri(self) -> str:
        """Where the prediction store lives."""
        return self.prediction_store or str((self.data_dir / "store").resolve())

    @property
    def spool_dir(self) -> Path | None:
        """Where API workers spool rows not yet in the store (None: no spool): one folder per
        store, so rows a dead worker spooled are only ever written to the store they were for."""
        if not self.store_spool:
            return None
        store = hashlib.sha256(self.store_uri.encode()).hexdigest()[:12]
        return (self.data_dir / "store-spool" / store).resolve()

    @property
    def training_experiment(self) -> str:
        """The MLflow experiment training runs are logged to: one per model."""
        return self.experiment or self.model_name

    @property
    def monitoring_experiment(self) -> str:
        """The MLflow experiment monitor runs are logged to."""
        return f"{self.model_name}-monitoring"

    @property
    def ledger_experiment(self) -> str:
        """The MLflow experiment holding the ledger of this model's alias moves."""
        return f"{self.model_name}-ledger"

    def as_environment(self) -> dict[str, str]:
        """These settings as the environment variables that reproduce them in a child process."""
        env = {"MLFLOW_TRACKING_URI": self.tracking_uri}
        # NB: MLflow's and AWS's own variables, which a child inherits as they are.
        inherited = {"tracking_uri", "tracking_username", "s3_endpoint", "s3_region"}
        for name, value in self.model_dump(exclude=inherited).items():
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if value is not None:
                env[f"CHURNOPS_{name.upper()}"] = str(value)
        return env

    @property
    def model_uri(self) -> str:
        """The alias URI the API serves."""
        return f"models:/{self.model_name}@{self.alias}"


LOG_FORMAT_ENV = "CHURNOPS_LOG_FORMAT"


def log_format_setting() -> str:
    """CHURNOPS_LOG_FORMAT (Settings.log_format) read alone: the CLI configures logging before
    it reads the other settings, whose refusal it must report in the chosen format."""
    return os.environ.get(LOG_FORMAT_ENV, "auto")


def apply_mlflow_client_limits(settings: Settings) -> None:
    """Bound MLflow's HTTP retries and timeouts so a dead server fails fast instead of hanging.

    NB: MLflow reads these variables at request time, so an entry point sets them once here.
    """
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(settings.http_retries)
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(settings.http_timeout))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    # NB: MLflow draws a tqdm progress bar for every artifact download once tqdm is installed
    # (Optuna brings it): on stderr that breaks the API's JSON log lines and every command's
    # one-line errors. A user who wants the bars sets the variable to true.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
