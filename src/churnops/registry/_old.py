"""The one module that talks to MLflow: logs training runs, registers versions with their gate
verdict, reads and moves the serving alias, and loads a version for serving.

The registry is the single source of truth: a version's metrics and gate verdict live in its tags,
and which version serves lives in the alias. This module caches nothing on local disk (the API's
fallback copy of the served version is churnops.cache's).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pandas as pd
from mlflow.exceptions import MlflowException, RestException
from mlflow.tracking import MlflowClient
from requests.exceptions import RequestException

from churnops.compiled import OnnxEngine
from churnops.config import Settings
from churnops.errors import (
    AuthenticationError,
    ChurnopsError,
    ModelFilesMissingError,
    PermissionDeniedError,
    TrackingServerError,
    TrackingUnavailableError,
    UnsafeModelError,
    VersionNotFoundError,
)
from churnops.inputs import InputField, from_signature
from churnops.predict import DEFAULT_THRESHOLD, Engine, SklearnEngine

if TYPE_CHECKING:
    # NB: type-only, so the API's workers never import scikit-learn's training modules (~80 MiB).
    from churnops.data import Dataset
    from churnops.evidence import Evidence
    from churnops.training import TrainingResult

log = logging.getLogger(__name__)

METRIC_TAGS = ("accuracy", "precision", "recall", "f1", "roc_auc", "baseline_f1")
GATE_PASSED_TAG = "gate_passed"
MODEL_ARTIFACT = "model"
EXPORT_DIR = "export"
ONNX_ARTIFACT = "onnx/model.onnx"
HOLDOUT_ARTIFACT = "eval/holdout.parquet"
INFERENCE_TAG = "inference"
THRESHOLD_TAG = "threshold"
ID_COLUMN_TAG = "id_column"
DATA_REPORT_ARTIFACT = "data_report.json"
REFERENCE_DIR = "monitoring"
REFERENCE_ROWS = "reference.parquet"
REFERENCE_SCORES = "reference_scores.parquet"
CALIBRATION = "calibration.json"
COLUMN_KINDS = "columns.json"
EVIDENCE_DIR = "evidence"
TRAINING_DATA_DIR = "data"
# NB: a table up to this size travels with its run, so `churnops reproduce` needs nothing else.
TRAINING_DATA_MAX_BYTES = 20 * 1024 * 1024
DATA_DIGEST_PARAM = "data_digest"
LIBRARIES = ("churnops", "mlflow", "scikit-learn", "pandas", "numpy", "scipy")
LIBRARY_TAG_PREFIX = "library."


@dataclass(frozen=True)
class VersionInfo:
    """What the registry knows of one version of the model."""

    version: int
    created: datetime
    run_id: str | None
    gate_passed: bool
    metrics: dict[str, float]
    aliases: tuple[str, ...]
    tags: dict[str, str]

    @property
    def f1(self) -> float | None:
        """Held-out F1, or None for a version registered outside churnops."""
        return self.metrics.get("f1")


@dataclass(frozen=True)
class RegisteredRun:
    """The run and model version one training produced."""

    run_id: str
    version: int


@dataclass(frozen=True)
class LoadedModel:
    """A version loaded for serving, with its input example for the smoke test."""

    version: int
    run_id: str | None
    engine: Engine
    input_example: pd.DataFrame | None
    metrics: dict[str, float]
    inputs: tuple[InputField, ...]
    digests: dict[str, str] = field(default_factory=dict)
    # NB: the table's identifier column training dropped: a request may carry it, never a feature.
    id_column: str | None = None


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
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
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
            f"{settings.model_name!r} and on experiment {settings.model_name + '-ledger'!r} "
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


# NB: what MLflow's REST layer reports for a failure inside the server (a 5xx).
_SERVER_FAILURES = frozenset({"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "BAD_GATEWAY"})


def _client(settings: Settings) -> MlflowClient:
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def _use_tracking_uri(settings: Settings) -> None:
    # NB: MLflow's fluent API (runs, log_model, model URIs) reads a process-wide URI.
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)


def version_info(
    version: int,
    run_id: str | None,
    tags: dict[str, str],
    created: datetime,
    aliases: tuple[str, ...] = (),
) -> VersionInfo:
    """A version as churnops reads it from its tags: metrics and gate verdict."""
    metrics = {}
    for name in METRIC_TAGS:
        with contextlib.suppress(KeyError, ValueError):
            metrics[name] = float(tags[name])
    return VersionInfo(
        version=version,
        created=created,
        run_id=run_id,
        gate_passed=tags.get(GATE_PASSED_TAG) == "true",
        metrics=metrics,
        aliases=aliases,
        tags=tags,
    )


def _version_info(mv: Any, aliases: tuple[str, ...] | None = None) -> VersionInfo:
    return version_info(
        int(mv.version),
        mv.run_id or None,
        dict(mv.tags or {}),
        datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=UTC),
        tuple(sorted(mv.aliases or ())) if aliases is None else aliases,
    )


def _pip_requirements() -> list[str]:
    """What the logged model needs at load time, pinned to this environment.

    NB: given explicitly, because MLflow's inference spawns a subprocess that costs ~7 s per run.
    """
    from importlib.metadata import version

    packages = ("mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy")
    return [f"{name}=={version(name)}" for name in packages]


def library_versions() -> dict[str, str]:
    """The versions of what decides a training's result, as recorded with every run."""
    import platform
    from importlib.metadata import version

    return {"python": platform.python_version()} | {name: version(name) for name in LIBRARIES}


def table_digest(frame: pd.DataFrame) -> str:
    """A digest of a table's values and column names (not of its file's bytes), so the same rows
    read from CSV or Parquet digest alike."""
    digest = hashlib.sha256(",".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def _description(
    result: TrainingResult, dataset: Dataset, seed: int, digest: str, run_id: str
) -> str:
    """A version's page in the registry, in Markdown: what it is, what it was trained on, how
    good it is and whether it may ship, and the one command that re-makes it."""
    from churnops.training import KIND_NAMES

    m, verdict = result.metrics, result.verdict
    gate = "passed" if verdict.passed else "failed"
    return (
        f"{KIND_NAMES.get(result.kind, result.kind)} trained by churnops on "
        f"`{Path(dataset.source).name}`: {dataset.report.rows_kept:,} rows "
        f"({result.train_rows:,} to train, {result.test_rows:,} held out), "
        f"churn rate {dataset.report.positive_rate:.1%}, data digest `{digest}`, seed {seed}.\n\n"
        f"Held out, at the tuned threshold {result.threshold:.3f}: "
        f"**F1 {m['f1']:.4f}**, ROC AUC {m['roc_auc']:.4f}, precision {m['precision']:.4f}, "
        f"recall {m['recall']:.4f}.\n\n"
        f"Gate: **{gate}**: {verdict.reason}.\n\n"
        f"Reproduce: `churnops reproduce {run_id}`"
    )


MODEL_DESCRIPTION = (
    "Customer-churn classifier managed by churnops. Every version is one `churnops train` run "
    "(see its description and run page); the alias `production` is the version the prediction "
    "API serves, moved only by `churnops promote` / `rollback`, each move recorded in the "
    "`{model}-ledger` experiment."
)


def _describe(settings: Settings, version: int, description: str) -> None:
    client = _client(settings)
    client.update_model_version(settings.model_name, str(version), description=description)
    model = client.get_registered_model(settings.model_name)
    if not model.description:
        client.update_registered_model(
            settings.model_name, description=MODEL_DESCRIPTION.format(model=settings.model_name)
        )


def _skops_trusted_types(model: Any) -> list[str]:
    """The non-default types a skops file of ``model`` needs, so logging and loading accept it."""
    import skops.io

    return list(skops.io.get_untrusted_types(data=skops.io.dumps(model)))


def log_training(
    settings: Settings,
    result: TrainingResult,
    *,
    version_label: str | None,
    seed: int,
    dataset: Dataset,
    evidence: Evidence | None = None,
    reference: Reference | None = None,
    positive_label: str | None = None,
) -> RegisteredRun:
    """Log one training as a run in the experiment and register it as a new version.

    The gate verdict and metrics go onto the version as tags at creation time, so no version is
    ever visible without its verdict. A failure inside the run marks the run FAILED.
    """
    import mlflow
    import mlflow.sklearn
    import skops.io
    from mlflow.data.pandas_dataset import from_pandas
    from mlflow.models import infer_signature

    _use_tracking_uri(settings)
    trusted = _skops_trusted_types(result.model)
    digest = table_digest(dataset.table)
    example = result.input_example
    with warnings.catch_warnings():
        # NB: MLflow warns that integer columns cannot hold missing values; the API validates them.
        warnings.simplefilter("ignore", UserWarning)
        # NB: inferred from the whole training split, so a column that had missing values there
        # is logged as not required, and the API lets it be omitted.
        features = result.train_features
        signature = infer_signature(features, result.model.predict(features))
    with mlflow_errors(settings):
        mlflow.set_experiment(settings.experiment)
        with mlflow.start_run(run_name=version_label) as run:
            mlflow.log_params(
                {
                    **({"version": version_label} if version_label else {}),
                    "seed": seed,
                    "gate_f1": result.verdict.gate_f1,
                    "data": dataset.source,
                    "target": dataset.report.target,
                    **({"positive_label": positive_label} if positive_label else {}),
                    DATA_DIGEST_PARAM: digest,
                    "train_rows": result.train_rows,
                    "test_rows": result.test_rows,
                    **result.params,
                }
            )
            mlflow.log_metrics(result.metrics)
            # NB: MLflow's dataset API records name, digest, schema and source with the run.
            with warnings.catch_warnings():
                # NB: MLflow guesses among source kinds for a local path and says so each time,
                # and repeats its integer-column hint when it infers the dataset's schema.
                warnings.simplefilter("ignore", UserWarning)
                logged_data = from_pandas(
                    dataset.table,
                    source=dataset.source,
                    name=Path(dataset.source).name,
                    targets=dataset.report.target,
                )
                mlflow.log_input(logged_data, context="training")
            mlflow.log_dict(dataset.report.to_dict(), DATA_REPORT_ARTIFACT)
            _log_training_table(dataset.source)
            if evidence is not None:
                for name, document in evidence.documents.items():
                    mlflow.log_dict(document, f"{EVIDENCE_DIR}/{name}")
                for name, figure in evidence.figures.items():
                    mlflow.log_figure(figure, f"{EVIDENCE_DIR}/{name}")
            mlflow.set_tags(
                {
                    GATE_PASSED_TAG: str(result.verdict.passed).lower(),
                    "gate_reason": result.verdict.reason,
                }
                | {LIBRARY_TAG_PREFIX + k: v for k, v in library_versions().items()}
            )
            if reference is not None:
                _log_reference(reference)
            with tempfile.TemporaryDirectory() as tmp:
                export = Path(tmp) / f"{settings.model_name}.skops"
                skops.io.dump(result.model, export)
                mlflow.log_artifact(str(export), artifact_path=EXPORT_DIR)
                # NB: the held-out split travels with the run, so a later promotion can re-score
                # the champion on exactly the rows this version was judged on.
                holdout = Path(tmp) / Path(HOLDOUT_ARTIFACT).name
                result.holdout.to_parquet(holdout, index=False)
                mlflow.log_artifact(str(holdout), artifact_path=str(Path(HOLDOUT_ARTIFACT).parent))
                if result.export.onnx is not None:
                    onnx_file = Path(tmp) / Path(ONNX_ARTIFACT).name
                    onnx_file.write_bytes(result.export.onnx)
                    mlflow.log_artifact(
                        str(onnx_file), artifact_path=str(Path(ONNX_ARTIFACT).parent)
                    )
            with warnings.catch_warnings():
                # NB: the same integer-column hint again, from checking the input example.
                warnings.simplefilter("ignore", UserWarning)
                info = mlflow.sklearn.log_model(
                    result.model,
                    name=MODEL_ARTIFACT,
                    signature=signature,
                    input_example=example,
                    skops_trusted_types=trusted,
                    pip_requirements=_pip_requirements(),
                )
            # NB: rounded for reading on the version's page; the run keeps full precision.
            tags = {name: f"{result.metrics[name]:.4f}" for name in METRIC_TAGS}
            tags |= {
                GATE_PASSED_TAG: str(result.verdict.passed).lower(),
                "gate_f1": repr(result.verdict.gate_f1),
                "gate_reason": result.verdict.reason,
                **({"version_label": version_label} if version_label else {}),
                "model_type": result.kind,
                THRESHOLD_TAG: repr(result.threshold),
                INFERENCE_TAG: "onnx" if result.export.onnx is not None else "sklearn",
                "onnx_check": result.export.reason,
            }
            if dataset.id_column:
                tags[ID_COLUMN_TAG] = dataset.id_column
            mv = mlflow.register_model(info.model_uri, settings.model_name, tags=tags)
            if not version_label:
                # NB: unnamed runs take their version's number, so the run list reads v1, v2...
                label = f"v{mv.version}"
                mlflow.log_param("version", label)
                client = _client(settings)
                client.update_run(run.info.run_id, name=label)
                client.set_model_version_tag(
                    settings.model_name, mv.version, "version_label", label
                )
            description = _description(result, dataset, seed, digest, run.info.run_id)
            _describe(settings, int(mv.version), description)
            # NB: the run page shows the same account under "Description".
            mlflow.set_tag(
                "mlflow.note.content", f"Registered as version {mv.version}. {description}"
            )
    return RegisteredRun(run_id=run.info.run_id, version=int(mv.version))


def _log_training_table(source: str) -> None:
    """Keep the training file with its run when it is small (built-in data is re-made from the
    seed): what `churnops reproduce` re-trains from."""
    import mlflow

    from churnops.data import BUILTIN_SOURCE

    path = Path(source)
    if source != BUILTIN_SOURCE and path.is_file():
        if path.stat().st_size <= TRAINING_DATA_MAX_BYTES:
            mlflow.log_artifact(str(path), artifact_path=TRAINING_DATA_DIR)
        else:
            log.info("not keeping %s with the run: over %d bytes", path, TRAINING_DATA_MAX_BYTES)


def run_record(
    settings: Settings, run_id: str
) -> tuple[dict[str, str], dict[str, float], dict[str, str]]:
    """A run's parameters, metrics (full precision) and tags."""
    client = _client(settings)
    with mlflow_errors(settings):
        try:
            run = client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise VersionNotFoundError(
                    f"no run {run_id!r} on {settings.tracking_uri}; `churnops status --json` shows "
                    "each version's run id"
                ) from None
            raise
    return dict(run.data.params), dict(run.data.metrics), dict(run.data.tags)


def download_run_folder(settings: Settings, run_id: str, folder: str, dst: Path) -> Path | None:
    """A run's artifact folder downloaded under ``dst``; None when the run has none."""
    import mlflow.artifacts

    with mlflow_errors(settings):
        try:
            return Path(
                mlflow.artifacts.download_artifacts(
                    run_id=run_id,
                    artifact_path=folder,
                    dst_path=str(dst),
                    tracking_uri=settings.tracking_uri,
                )
            )
        except (MlflowException, OSError):
            return None


@dataclass(frozen=True)
class Reference:
    """What monitoring compares a version's traffic with: a snapshot of its training rows, its
    held-out probabilities and outcomes, and its probability calibration."""

    rows: pd.DataFrame
    scores: pd.DataFrame
    calibration: dict[str, Any]
    # NB: each input column's kind (numeric / categorical) as training decided it; drift reads
    # the store's values through it, so an integer flag stored as a float is still the same flag.
    kinds: dict[str, str] = field(default_factory=dict)


def column_kinds(rows: pd.DataFrame) -> dict[str, str]:
    """Each column's kind as training decides it: numeric for numbers (booleans included),
    categorical for everything else."""
    return {
        str(c): "numeric" if pd.api.types.is_numeric_dtype(rows[c]) else "categorical"
        for c in rows.columns
    }


def _log_reference(reference: Reference) -> None:
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        for name, frame in ((REFERENCE_ROWS, reference.rows), (REFERENCE_SCORES, reference.scores)):
            path = Path(tmp) / name
            frame.to_parquet(path, index=False)
            mlflow.log_artifact(str(path), artifact_path=REFERENCE_DIR)
    mlflow.log_dict(reference.calibration, f"{REFERENCE_DIR}/{CALIBRATION}")
    mlflow.log_dict(reference.kinds, f"{REFERENCE_DIR}/{COLUMN_KINDS}")


def load_reference(settings: Settings, info: VersionInfo) -> Reference | None:
    """A version's monitoring reference; for a version trained before churnops logged one, its
    held-out split stands in for the rows (no scores, no calibration). None without either."""
    import mlflow.artifacts

    if not info.run_id:
        return None
    with mlflow_errors(settings), tempfile.TemporaryDirectory() as tmp:
        try:
            folder = Path(
                mlflow.artifacts.download_artifacts(
                    run_id=info.run_id,
                    artifact_path=REFERENCE_DIR,
                    dst_path=tmp,
                    tracking_uri=settings.tracking_uri,
                )
            )
        except (MlflowException, OSError):
            holdout = load_holdout(settings, info)
            if holdout is None:
                return None
            return Reference(holdout, pd.DataFrame(), {}, column_kinds(holdout))
        import json

        rows = pd.read_parquet(folder / REFERENCE_ROWS)
        kinds_file = folder / COLUMN_KINDS
        return Reference(
            rows,
            pd.read_parquet(folder / REFERENCE_SCORES),
            json.loads((folder / CALIBRATION).read_text()),
            # NB: versions trained before the kinds were logged: the snapshot's own types.
            json.loads(kinds_file.read_text()) if kinds_file.exists() else column_kinds(rows),
        )


def set_version_tags(settings: Settings, version: int, tags: dict[str, str]) -> None:
    """Set tags on one version (monitoring's latest figures)."""
    client = _client(settings)
    with mlflow_errors(settings):
        for key, value in tags.items():
            client.set_model_version_tag(settings.model_name, str(version), key, value)


@dataclass(frozen=True)
class MonitorLog:
    """One monitor run as MLflow gets it: per-window metrics stamped with the window's end,
    tags, a JSON report and files (figures, the HTML page)."""

    metrics: list[tuple[str, float, int, int]]
    tags: dict[str, str]
    report: dict[str, Any]
    files: dict[str, bytes]


def log_monitoring(settings: Settings, entry: MonitorLog, run_name: str = "monitor") -> str:
    """Log a monitor (or compare) run to the experiment ``<model>-monitoring``; its run id."""
    from mlflow.entities import Metric

    client = _client(settings)
    with mlflow_errors(settings):
        experiment = client.get_experiment_by_name(settings.monitoring_experiment)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else client.create_experiment(settings.monitoring_experiment)
        )
        run = client.create_run(experiment_id, tags=entry.tags, run_name=run_name)
        run_id = run.info.run_id
        metrics = [Metric(key, value, stamp, step) for key, value, stamp, step in entry.metrics]
        for start in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[start : start + 1000])
        client.log_dict(run_id, entry.report, "report.json")
        with tempfile.TemporaryDirectory() as tmp:
            for name, content in entry.files.items():
                path = Path(tmp) / name
                path.write_bytes(content)
                client.log_artifact(run_id, str(path))
        client.set_terminated(run_id)
    return run_id


def list_versions(settings: Settings) -> list[VersionInfo]:
    """Every version of the model, oldest first; empty when the model is not registered yet."""
    client = _client(settings)
    with mlflow_errors(settings):
        found = client.search_model_versions(f"name = '{settings.model_name}'", max_results=10_000)
        if not found:
            return []
        # NB: search results carry no aliases; the registered model holds them all.
        by_version: dict[int, list[str]] = {}
        for alias, version in client.get_registered_model(settings.model_name).aliases.items():
            by_version.setdefault(int(version), []).append(alias)
    return sorted(
        (_version_info(mv, tuple(sorted(by_version.get(int(mv.version), [])))) for mv in found),
        key=lambda v: v.version,
    )


def get_version(settings: Settings, version: int) -> VersionInfo:
    """One version, or VersionNotFoundError naming the versions that exist."""
    with mlflow_errors(settings):
        try:
            return _version_info(
                _client(settings).get_model_version(settings.model_name, str(version))
            )
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
    existing = [v.version for v in list_versions(settings)]
    known = ", ".join(map(str, existing)) if existing else "none yet (run `churnops train`)"
    raise VersionNotFoundError(
        f"{settings.model_name} has no version {version}; existing versions: {known}"
    )


def require_model(settings: Settings) -> None:
    """VersionNotFoundError, naming the registered models, when ``settings.model_name`` is not
    one of them (a misspelt CHURNOPS_MODEL_NAME)."""
    client = _client(settings)
    with mlflow_errors(settings):
        try:
            client.get_registered_model(settings.model_name)
            return
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
        names = sorted(m.name for m in client.search_registered_models(max_results=50))
    known = ", ".join(names) if names else "none yet (run `churnops train`)"
    raise VersionNotFoundError(
        f"no registered model {settings.model_name!r}; registered models: {known} "
        "(set CHURNOPS_MODEL_NAME to one of them)"
    )


def latest_passing_version(settings: Settings) -> int | None:
    """The highest version number whose gate passed, or None."""
    with mlflow_errors(settings):
        found = _client(settings).search_model_versions(
            f"name = '{settings.model_name}' and tags.{GATE_PASSED_TAG} = 'true'",
            max_results=1,
            order_by=["version_number DESC"],
        )
    return int(found[0].version) if found else None


def alias_target(settings: Settings) -> tuple[int, dict[str, str]] | None:
    """The version ``settings.alias`` points at and its tags, in one request; None when the
    alias is not set."""
    with mlflow_errors(settings):
        try:
            mv = _client(settings).get_model_version_by_alias(settings.model_name, settings.alias)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise
    return int(mv.version), dict(mv.tags or {})


def alias_version(settings: Settings) -> int | None:
    """The version the serving alias points at, or None when it is not set."""
    target = alias_target(settings)
    return None if target is None else target[0]


def set_alias(settings: Settings, version: int) -> None:
    """Point the serving alias at ``version``."""
    with mlflow_errors(settings):
        _client(settings).set_registered_model_alias(
            settings.model_name, settings.alias, str(version)
        )


def delete_alias(settings: Settings) -> None:
    """Remove ``settings.alias`` from the model (nothing happens when it is not set)."""
    with mlflow_errors(settings):
        try:
            _client(settings).delete_registered_model_alias(settings.model_name, settings.alias)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise


def _load_engine(settings: Settings, info: VersionInfo, local: str, threads: int) -> Engine:
    """The verified ONNX export when the version has one, else the scikit-learn pipeline.

    A version saved with pickle is refused either way. Its skops file's types are checked when it
    is deserialised (the scikit-learn engine); the ONNX engine never deserialises it (an ONNX
    graph is data for onnxruntime, not code), and skipping the check there keeps scikit-learn
    (~100 MiB) out of the serving workers.
    """
    import mlflow.artifacts

    from churnops import safety

    safety.check_unpacked_size(
        safety.skops_file(local, info.version), info.version, settings.max_unpacked_bytes
    )
    if info.tags.get(INFERENCE_TAG) == "onnx" and info.run_id:
        try:
            path = Path(local) / ONNX_ARTIFACT
            if not path.exists():  # NB: a cached copy (see churnops.cache) has it already
                _check_files(
                    settings, f"runs:/{info.run_id}/{Path(ONNX_ARTIFACT).parent}", info.version
                )
                path = Path(
                    mlflow.artifacts.download_artifacts(
                        run_id=info.run_id, artifact_path=ONNX_ARTIFACT, dst_path=local
                    )
                )
            threshold = float(info.tags.get(THRESHOLD_TAG, DEFAULT_THRESHOLD))
            return OnnxEngine(path.read_bytes(), threshold, threads)
        except Exception as exc:  # noqa: BLE001 - the pipeline is the documented fallback
            log.warning(
                "version %s: ONNX export unusable (%s); serving scikit-learn", info.version, exc
            )
    return SklearnEngine(safety.load_sklearn(local, info.version, settings.max_unpacked_bytes))


def _artifact_bytes(repository: Any, items: list[Any], depth: int = 0) -> int:
    total = 0
    for item in items:
        if item.is_dir:
            if depth >= 8:
                raise ChurnopsError(f"artifact folders nest deeper than 8 levels at {item.path}")
            total += _artifact_bytes(repository, repository.list_artifacts(item.path), depth + 1)
        else:
            total += int(item.file_size or 0)
    return total


def _check_files(settings: Settings, uri: str, version: int) -> None:
    """Before anything is downloaded: ModelFilesMissingError when a model's files are gone,
    UnsafeModelError when the files under ``uri`` exceed CHURNOPS_MAX_MODEL_BYTES."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repository = get_artifact_repository(artifact_uri=uri, tracking_uri=settings.tracking_uri)
    top = repository.list_artifacts(None)
    if uri.startswith("models:/") and not any(Path(item.path).name == "MLmodel" for item in top):
        raise ModelFilesMissingError(
            f"version {version}'s model files are missing from the artifact store (no MLmodel "
            f"under {uri}); it cannot be loaded: train a new version"
        )
    size = _artifact_bytes(repository, top)
    if size > settings.max_model_bytes:
        raise UnsafeModelError(
            f"version {version}'s files at {uri} are {size:,} bytes, over the limit of "
            f"{settings.max_model_bytes:,} (CHURNOPS_MAX_MODEL_BYTES); not downloaded"
        )


def load_version(
    settings: Settings,
    version: int,
    threads: int = 1,
    keep: Callable[[LoadedModel, VersionInfo, Path], object] | None = None,
) -> LoadedModel:
    """Download one version through the tracking server and build its inference engine
    (``threads`` per ONNX call); ``keep`` may copy the downloaded files before they go."""
    import mlflow.artifacts

    _use_tracking_uri(settings)
    info = get_version(settings, version)
    with mlflow_errors(settings), tempfile.TemporaryDirectory() as tmp:
        uri = f"models:/{settings.model_name}/{version}"
        _check_files(settings, uri, version)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        loaded = load_files(settings, info, local, threads)
        if keep is not None:
            keep(loaded, info, local)
    return loaded


def load_files(settings: Settings, info: VersionInfo, local: Path, threads: int) -> LoadedModel:
    """Build a version's engine from its files on disk, with their digests."""
    from mlflow.models import Model

    logged = Model.load(str(local))
    if logged.signature is None:
        raise ChurnopsError(
            f"version {info.version} has no signature, so its request fields are unknown; "
            "log the model with a signature (churnops train does)"
        )
    inputs = from_signature(logged.signature)
    raw_example = logged.load_input_example(str(local))
    engine = _load_engine(settings, info, str(local), threads)
    digests = file_digests(local) | threshold_digest(info.tags)
    example = None if raw_example is None else pd.DataFrame(raw_example)
    return LoadedModel(
        version=info.version,
        run_id=info.run_id,
        engine=engine,
        input_example=example,
        metrics=info.metrics,
        inputs=inputs,
        digests=digests,
        id_column=info.tags.get(ID_COLUMN_TAG) or None,
    )


def threshold_digest(tags: dict[str, str]) -> dict[str, str]:
    """The digest entry pinning a version's decision threshold (a tag, not a file)."""
    return {
        f"tag:{THRESHOLD_TAG}": hashlib.sha256(tags.get(THRESHOLD_TAG, "").encode()).hexdigest()
    }


def file_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by path relative to it."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            found[path.relative_to(folder).as_posix()] = digest.hexdigest()
    return found


def load_holdout(settings: Settings, info: VersionInfo) -> pd.DataFrame | None:
    """The held-out split a version was judged on (features plus HOLDOUT_TARGET), if logged."""
    import mlflow.artifacts

    if not info.run_id:
        return None
    with mlflow_errors(settings), tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=info.run_id,
                artifact_path=HOLDOUT_ARTIFACT,
                dst_path=tmp,
                tracking_uri=settings.tracking_uri,
            )
        except (MlflowException, OSError):
            return None
        return pd.read_parquet(path)


def load_data_report(settings: Settings, info: VersionInfo) -> dict[str, Any] | None:
    """The data report logged with a version's run (columns used and dropped), if any."""
    import mlflow.artifacts

    if not info.run_id:
        return None
    with mlflow_errors(settings):
        try:
            report = mlflow.artifacts.load_dict(f"runs:/{info.run_id}/{DATA_REPORT_ARTIFACT}")
        except (MlflowException, OSError, ValueError):
            return None
    return report if isinstance(report, dict) else None


def signature_inputs(settings: Settings, version: int) -> list[dict[str, str]]:
    """A version's input columns as logged in its signature:
    [{"name": ..., "type": ..., "required": "true" | "false"}]."""
    from mlflow.models import get_model_info

    _use_tracking_uri(settings)
    with mlflow_errors(settings):
        _check_files(settings, f"models:/{settings.model_name}/{version}", version)
        info = get_model_info(f"models:/{settings.model_name}/{version}")
    if info.signature is None:
        return []
    return [
        {
            "name": str(c["name"]),
            "type": str(c["type"]),
            "required": str(c.get("required", True)).lower(),
        }
        for c in info.signature.inputs.to_dict()
    ]


@dataclass(frozen=True)
class LedgerRun:
    """One run of the ledger experiment, as the ledger reads it."""

    run_id: str
    experiment_id: str
    start_time: int
    tags: dict[str, str]
    params: dict[str, str]


class LedgerStore:
    """The MLflow calls the ledger makes: runs in one experiment, their tags, and write-once
    parameters (the compare-and-set the ledger is built on). Callers wrap them in
    :func:`mlflow_errors`."""

    def __init__(self, settings: Settings) -> None:
        self._client = _client(settings)

    def experiment(self, name: str) -> tuple[str, bool] | None:
        """(id, whether it is active) of the experiment called ``name``, or None."""
        found = self._client.get_experiment_by_name(name)
        if found is None:
            return None
        return str(found.experiment_id), found.lifecycle_stage == "active"

    def create_experiment(self, name: str) -> str:
        """A new experiment's id."""
        return str(self._client.create_experiment(name))

    def rename_experiment(self, experiment_id: str, name: str) -> bool:
        """Rename; False when ``name`` is taken (the database refuses a duplicate name)."""
        try:
            self._client.rename_experiment(experiment_id, name)
        except MlflowException as exc:
            # NB: the database's unique-name refusal reaches the client as BAD_REQUEST; any
            # other failure (a refused connection, a permission) is not "taken".
            if exc.error_code not in ("BAD_REQUEST", "RESOURCE_ALREADY_EXISTS"):
                raise
            return False
        return True

    def delete_experiment(self, experiment_id: str) -> None:
        """Delete an experiment, best effort."""
        with contextlib.suppress(MlflowException):
            self._client.delete_experiment(experiment_id)

    def runs(self, experiment_id: str) -> list[LedgerRun]:
        """Every active run of the experiment."""
        return [
            LedgerRun(
                run.info.run_id,
                run.info.experiment_id,
                run.info.start_time or 0,
                dict(run.data.tags),
                dict(run.data.params),
            )
            for run in self._client.search_runs([experiment_id], max_results=50_000)
        ]

    def create_run(self, experiment_id: str, tags: dict[str, str], name: str) -> str:
        """A new run's id."""
        return str(self._client.create_run(experiment_id, tags=tags, run_name=name).info.run_id)

    def finish_run(self, run_id: str, status: str) -> None:
        """Set a run's status (FINISHED, KILLED)."""
        # NB: update_run, not set_terminated, which prints "View run" lines to stdout.
        self._client.update_run(run_id, status=status)

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        """Set (or overwrite) a run's tag."""
        self._client.set_tag(run_id, key, value)

    def write_once(self, run_id: str, key: str, value: str) -> str:
        """Log a parameter that may already hold a value; return the value it holds now."""
        try:
            self._client.log_param(run_id, key, value)
            return value
        except MlflowException as exc:
            if exc.error_code != "INVALID_PARAMETER_VALUE":
                raise
        held = self._client.get_run(run_id).data.params.get(key)
        if held is None:
            raise ChurnopsError(f"the tracking server refused parameter {key!r} on run {run_id}")
        return str(held)
