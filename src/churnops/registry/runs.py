"""Logging a training run and registering it as a version: parameters, metrics, the dataset,
evidence, the monitoring reference, the model and its exports, and the version's tags and
description; and reading a run back (its record, a folder of its artifacts).

Every call goes through a client built with the settings' URI: nothing here uses MLflow's fluent
API, which reads the process-wide tracking URI.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.time import get_current_time_millis

from churnops.config import Settings
from churnops.errors import VersionNotFoundError
from churnops.registry.connection import MISSING, client, experiment_id, mlflow_errors
from churnops.registry.versions import (
    GATE_F1_TAG,
    GATE_PASSED_TAG,
    ID_COLUMN_TAG,
    INFERENCE_TAG,
    METRIC_TAGS,
    THRESHOLD_TAG,
)

if TYPE_CHECKING:
    # NB: type-only, so the API's workers never import scikit-learn's training modules (~80 MiB).
    from churnops.data import Dataset
    from churnops.evidence import Evidence
    from churnops.search import SearchRecord
    from churnops.training import TrainingResult

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
EXPORT_DIR = "export"
ONNX_ARTIFACT = "onnx/model.onnx"
HOLDOUT_ARTIFACT = "eval/holdout.parquet"
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
SEARCH_ARTIFACT = "search/trials.json"
SEARCH_METRIC = "search_cv_f1"
LIBRARIES = ("churnops", "mlflow", "scikit-learn", "pandas", "numpy", "scipy")
LIBRARY_TAG_PREFIX = "library."


@dataclass(frozen=True)
class RegisteredRun:
    """The run and model version one training produced."""

    run_id: str
    version: int


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
        f"Held out: **F1 {m['f1']:.4f}**, ROC AUC {m['roc_auc']:.4f} at the threshold "
        f"{result.threshold:.3f}. Gate: **{gate}**: {verdict.reason}.\n\n"
        f"Reproduce: `churnops reproduce {run_id}`"
    )


MODEL_DESCRIPTION = (
    "Customer-churn classifier managed by churnops. Every version is one `churnops train` run "
    "(see its description and run page); the alias `production` is the version the prediction "
    "API serves, moved only by `churnops promote` / `rollback`, each move recorded in the "
    "`{ledger}` experiment."
)


def _describe(tracking: MlflowClient, settings: Settings, version: int, description: str) -> None:
    tracking.update_model_version(settings.model_name, str(version), description=description)
    model = tracking.get_registered_model(settings.model_name)
    if not model.description:
        tracking.update_registered_model(
            settings.model_name,
            description=MODEL_DESCRIPTION.format(ledger=settings.ledger_experiment),
        )


def _skops_trusted_types(model: Any) -> list[str]:
    """The non-default types a skops file of ``model`` needs, so logging and loading accept it."""
    import skops.io

    return list(skops.io.get_untrusted_types(data=skops.io.dumps(model)))


def version_tags(result: TrainingResult, id_column: str | None) -> dict[str, str]:
    """What a version carries as tags: only what is read back from it (its metrics, which the
    gate and the API's /model read; its verdict and gate; how to serve it). The rest of the
    account (gate reason, model kind, the ONNX check, the label) is on its run."""
    # NB: rounded for reading on the version's page; the run keeps full precision.
    tags = {name: f"{result.metrics[name]:.4f}" for name in METRIC_TAGS}
    tags |= {
        GATE_PASSED_TAG: str(result.verdict.passed).lower(),
        GATE_F1_TAG: repr(result.verdict.gate_f1),
        THRESHOLD_TAG: repr(result.threshold),
        INFERENCE_TAG: "onnx" if result.export.onnx is not None else "sklearn",
    }
    if id_column:
        tags[ID_COLUMN_TAG] = id_column
    return tags


def _register(
    tracking: MlflowClient, settings: Settings, model_id: str, run_id: str, tags: dict
) -> int:
    """A new version of the model from a logged model, with its tags from the start; the
    registered model is created on the first training."""
    try:
        tracking.create_registered_model(settings.model_name)
    except MlflowException as exc:
        # NB: a create racing a delete of the same name can answer 404 rather than "exists".
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", *MISSING):
            raise
    mv = tracking.create_model_version(
        settings.model_name, f"models:/{model_id}", run_id=run_id, tags=tags, model_id=model_id
    )
    return int(mv.version)


def _log_model(
    tracking: MlflowClient,
    experiment: str,
    run_id: str,
    result: TrainingResult,
    params: dict[str, str],
) -> str:
    """Save the pipeline as an MLflow model (skops, signature, input example) and log it as the
    run's logged model, the way ``mlflow.sklearn.log_model`` does but through this client; its
    model id."""
    import mlflow.sklearn
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric
    from mlflow.models import Model, infer_signature

    with warnings.catch_warnings():
        # NB: MLflow warns that integer columns cannot hold missing values; the API validates them.
        warnings.simplefilter("ignore", UserWarning)
        # NB: inferred from the whole training split, so a column that had missing values there
        # is logged as not required, and the API lets it be omitted.
        features = result.train_features
        signature = infer_signature(features, result.model.predict(features))
    logged = tracking.create_logged_model(
        experiment, name=MODEL_ARTIFACT, source_run_id=run_id, params=params
    )
    try:
        tracking.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        # NB: the run's metrics, attached to the model too, as the model's page shows them.
        now = get_current_time_millis()
        tracking.log_batch(
            run_id,
            metrics=[
                Metric(k, v, now, 0, run_id=run_id, model_id=logged.model_id)
                for k, v in result.metrics.items()
            ],
        )
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            # NB: the same integer-column hint again, from checking the input example.
            warnings.simplefilter("ignore", UserWarning)
            local = str(Path(tmp) / MODEL_ARTIFACT)
            mlflow_model = Model(
                artifact_path=logged.artifact_location,
                model_uuid=logged.model_id,
                run_id=run_id,
                model_id=logged.model_id,
            )
            mlflow.sklearn.save_model(
                result.model,
                local,
                mlflow_model=mlflow_model,
                signature=signature,
                input_example=result.input_example,
                skops_trusted_types=_skops_trusted_types(result.model),
                pip_requirements=_pip_requirements(),
            )
            tracking.log_model_artifacts(logged.model_id, local)
    except BaseException:
        tracking.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    tracking.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    return str(logged.model_id)


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
    """Log one training as a run in the model's experiment and register it as a new version.

    The gate verdict and metrics go onto the version as tags at creation time, so no version is
    ever visible without its verdict. A failure inside the run marks the run FAILED.
    """
    from mlflow.entities import Metric, Param

    digest = table_digest(dataset.table)
    params = {
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
    texts = {k: str(v) for k, v in params.items()}
    tracking = client(settings)
    with mlflow_errors(settings):
        from mlflow.tracking.context.registry import resolve_tags

        experiment = experiment_id(tracking, settings.training_experiment)
        run = tracking.create_run(experiment, tags=resolve_tags(), run_name=version_label)
        run_id = run.info.run_id
        try:
            now = get_current_time_millis()
            tracking.log_batch(
                run_id,
                metrics=[Metric(k, v, now, 0) for k, v in result.metrics.items()],
                params=[Param(k, v) for k, v in texts.items()],
            )
            _log_dataset(tracking, run_id, dataset, digest)
            tracking.log_dict(run_id, dataset.report.to_dict(), DATA_REPORT_ARTIFACT)
            _log_training_table(tracking, run_id, dataset.source)
            if evidence is not None:
                for name, document in evidence.documents.items():
                    tracking.log_dict(run_id, document, f"{EVIDENCE_DIR}/{name}")
                for name, figure in evidence.figures.items():
                    tracking.log_figure(run_id, figure, f"{EVIDENCE_DIR}/{name}")
            tracking.log_batch(run_id, tags=_run_tags(result, version_label))
            if result.search is not None:
                _log_search(tracking, run_id, result.search)
            if reference is not None:
                _log_reference(tracking, run_id, reference)
            _log_exports(tracking, run_id, settings.model_name, result)
            model_id = _log_model(tracking, experiment, run_id, result, texts)
            version = _register(
                tracking, settings, model_id, run_id, version_tags(result, dataset.id_column)
            )
            if not version_label:
                # NB: unnamed runs take their version's number, so the run list reads v1, v2...
                label = f"v{version}"
                tracking.log_param(run_id, "version", label)
                tracking.update_run(run_id, name=label)
            description = _description(result, dataset, seed, digest, run_id)
            _describe(tracking, settings, version, description)
            # NB: the run page shows the same account under "Description".
            tracking.set_tag(
                run_id, "mlflow.note.content", f"Registered as version {version}. {description}"
            )
        except BaseException:
            with contextlib.suppress(Exception):
                tracking.set_terminated(run_id, "FAILED")
            raise
        tracking.set_terminated(run_id, "FINISHED")
    return RegisteredRun(run_id=run_id, version=version)


def _run_tags(result: TrainingResult, version_label: str | None) -> list[Any]:
    """The run's own tags: the verdict and its reason, the model kind, the ONNX check and the
    libraries it was trained with."""
    from mlflow.entities import RunTag

    tags = {
        GATE_PASSED_TAG: str(result.verdict.passed).lower(),
        "gate_reason": result.verdict.reason,
        "model_type": result.kind,
        "onnx_check": result.export.reason,
        **({"version_label": version_label} if version_label else {}),
    } | {LIBRARY_TAG_PREFIX + k: v for k, v in library_versions().items()}
    return [RunTag(k, v) for k, v in tags.items()]


def _log_search(tracking: MlflowClient, run_id: str, search: SearchRecord) -> None:
    """A search's trials: each one's cross-validated F1 as a step of one metric (the run page
    charts the search), and every trial's family, parameters, score and seconds as JSON."""
    from mlflow.entities import Metric

    now = get_current_time_millis()
    tracking.log_batch(
        run_id,
        metrics=[Metric(SEARCH_METRIC, t.cv_f1, now, t.number) for t in search.trials],
    )
    tracking.log_dict(run_id, search.to_dict(), SEARCH_ARTIFACT)


def _log_dataset(tracking: MlflowClient, run_id: str, dataset: Dataset, digest: str) -> None:
    """Record the training table with the run through MLflow's dataset API (name, schema,
    source), under churnops's own digest, so the UI shows the number the version's description
    and `data_digest` parameter give."""
    from mlflow.data.pandas_dataset import from_pandas
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    with warnings.catch_warnings():
        # NB: MLflow guesses among source kinds for a local path and says so each time,
        # and repeats its integer-column hint when it infers the dataset's schema.
        warnings.simplefilter("ignore", UserWarning)
        logged = from_pandas(
            dataset.table,
            source=dataset.source,
            name=Path(dataset.source).name,
            targets=dataset.report.target,
            digest=digest,
        )
        entity = logged._to_mlflow_entity()
    context = InputTag(key=MLFLOW_DATASET_CONTEXT, value="training")
    tracking.log_inputs(run_id, datasets=[DatasetInput(dataset=entity, tags=[context])])


def _log_exports(
    tracking: MlflowClient, run_id: str, model_name: str, result: TrainingResult
) -> None:
    """The pipeline's skops file, its held-out split and its ONNX export, beside the model."""
    import skops.io

    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / f"{model_name}.skops"
        skops.io.dump(result.model, export)
        tracking.log_artifact(run_id, str(export), artifact_path=EXPORT_DIR)
        # NB: the held-out split travels with the run, so a later promotion can re-score
        # the champion on exactly the rows this version was judged on.
        holdout = Path(tmp) / Path(HOLDOUT_ARTIFACT).name
        result.holdout.to_parquet(holdout, index=False)
        folder = str(Path(HOLDOUT_ARTIFACT).parent)
        tracking.log_artifact(run_id, str(holdout), artifact_path=folder)
        if result.export.onnx is not None:
            onnx_file = Path(tmp) / Path(ONNX_ARTIFACT).name
            onnx_file.write_bytes(result.export.onnx)
            tracking.log_artifact(
                run_id, str(onnx_file), artifact_path=str(Path(ONNX_ARTIFACT).parent)
            )


def _log_training_table(tracking: MlflowClient, run_id: str, source: str) -> None:
    """Keep the training file with its run when it is small (built-in data is re-made from the
    seed): what `churnops reproduce` re-trains from."""
    from churnops.data import BUILTIN_SOURCE

    path = Path(source)
    if source != BUILTIN_SOURCE and path.is_file():
        if path.stat().st_size <= TRAINING_DATA_MAX_BYTES:
            tracking.log_artifact(run_id, str(path), artifact_path=TRAINING_DATA_DIR)
        else:
            log.info("not keeping %s with the run: over %d bytes", path, TRAINING_DATA_MAX_BYTES)


def run_record(
    settings: Settings, run_id: str
) -> tuple[dict[str, str], dict[str, float], dict[str, str]]:
    """A run's parameters, metrics (full precision) and tags."""
    with mlflow_errors(settings):
        try:
            run = client(settings).get_run(run_id)
        except MlflowException as exc:
            if exc.error_code in MISSING:
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


def _log_reference(tracking: MlflowClient, run_id: str, reference: Reference) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, frame in ((REFERENCE_ROWS, reference.rows), (REFERENCE_SCORES, reference.scores)):
            path = Path(tmp) / name
            frame.to_parquet(path, index=False)
            tracking.log_artifact(run_id, str(path), artifact_path=REFERENCE_DIR)
    tracking.log_dict(run_id, reference.calibration, f"{REFERENCE_DIR}/{CALIBRATION}")
    tracking.log_dict(run_id, reference.kinds, f"{REFERENCE_DIR}/{COLUMN_KINDS}")
