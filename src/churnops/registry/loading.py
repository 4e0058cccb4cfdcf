"""Loading a version: its files downloaded through the tracking server (checked for size and
presence first), its inference engine, the digests that pin what was loaded, and the artifacts of
its run that the gate and monitoring read (held-out split, data report, signature, reference).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.exceptions import MlflowException

from churnops.compiled import OnnxEngine
from churnops.config import Settings
from churnops.errors import ChurnopsError, ModelFilesMissingError, UnsafeModelError
from churnops.inputs import InputField, from_signature
from churnops.predict import DEFAULT_THRESHOLD, Engine, SklearnEngine
from churnops.registry.connection import client, mlflow_errors
from churnops.registry.runs import (
    CALIBRATION,
    COLUMN_KINDS,
    DATA_REPORT_ARTIFACT,
    HOLDOUT_ARTIFACT,
    ONNX_ARTIFACT,
    REFERENCE_DIR,
    REFERENCE_ROWS,
    REFERENCE_SCORES,
    Reference,
    column_kinds,
)
from churnops.registry.versions import (
    ID_COLUMN_TAG,
    INFERENCE_TAG,
    THRESHOLD_TAG,
    VersionInfo,
    get_version,
)

log = logging.getLogger(__name__)


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


def _load_engine(settings: Settings, info: VersionInfo, local: str, threads: int) -> Engine:
    """The verified ONNX export when the version has one, else the scikit-learn pipeline.

    A version saved with pickle is refused either way. Its skops file's types are checked when it
    is deserialised (the scikit-learn engine); the ONNX engine never deserialises it (an ONNX
    graph is data for onnxruntime, not code), and skipping the check there keeps scikit-learn
    (~100 MiB) out of the serving workers.
    """
    from churnops import safety

    safety.check_unpacked_size(
        safety.skops_file(local, info.version), info.version, settings.max_unpacked_bytes
    )
    if info.tags.get(INFERENCE_TAG) == "onnx" and info.run_id:
        try:
            path = Path(local) / ONNX_ARTIFACT
            if not path.exists():  # NB: a cached copy (see churnops.cache) has it already
                uri = f"runs:/{info.run_id}/{Path(ONNX_ARTIFACT).parent}"
                repository = _check_files(settings, uri, uri, info.version)
                path = Path(repository.download_artifacts(Path(ONNX_ARTIFACT).name, local))
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


def _repository(settings: Settings, uri: str) -> Any:
    """The artifact repository under ``uri``, reached through the settings' tracking server."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return get_artifact_repository(
        artifact_uri=uri, tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri
    )


def _model_files(settings: Settings, version: int) -> tuple[str, str]:
    """(where a version's model files are, the ``models:/`` name messages give them).

    NB: asked of this client, because MLflow resolves a ``models:/`` URI through its
    process-wide registry URI, which churnops never sets."""
    with mlflow_errors(settings):
        uri = client(settings).get_model_version_download_uri(settings.model_name, str(version))
    return uri, f"models:/{settings.model_name}/{version}"


def _check_files(
    settings: Settings, uri: str, shown: str, version: int, model: bool = False
) -> Any:
    """Before anything is downloaded: ModelFilesMissingError when a model's files are gone,
    UnsafeModelError when the files under ``uri`` (``shown`` in messages) exceed
    CHURNOPS_MAX_MODEL_BYTES. The repository, to download from."""
    repository = _repository(settings, uri)
    top = repository.list_artifacts(None)
    if model and not any(Path(item.path).name == "MLmodel" for item in top):
        raise ModelFilesMissingError(
            f"version {version}'s model files are missing from the artifact store (no MLmodel "
            f"under {shown}); it cannot be loaded: train a new version"
        )
    size = _artifact_bytes(repository, top)
    if size > settings.max_model_bytes:
        raise UnsafeModelError(
            f"version {version}'s files at {shown} are {size:,} bytes, over the limit of "
            f"{settings.max_model_bytes:,} (CHURNOPS_MAX_MODEL_BYTES); not downloaded"
        )
    return repository


def load_version(
    settings: Settings,
    version: int,
    threads: int = 1,
    keep: Callable[[LoadedModel, VersionInfo, Path], object] | None = None,
) -> LoadedModel:
    """Download one version through the tracking server and build its inference engine
    (``threads`` per ONNX call); ``keep`` may copy the downloaded files before they go."""
    import mlflow.artifacts

    info = get_version(settings, version)
    uri, shown = _model_files(settings, version)
    with mlflow_errors(settings), tempfile.TemporaryDirectory() as tmp:
        _check_files(settings, uri, shown, version, model=True)
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=uri,
                dst_path=tmp,
                tracking_uri=settings.tracking_uri,
                registry_uri=settings.tracking_uri,
            )
        )
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
    if not info.run_id:
        return None
    with mlflow_errors(settings), tempfile.TemporaryDirectory() as tmp:
        try:
            path = _repository(settings, f"runs:/{info.run_id}").download_artifacts(
                DATA_REPORT_ARTIFACT, tmp
            )
            report = json.loads(Path(path).read_text())
        except (MlflowException, OSError, ValueError):
            return None
    return report if isinstance(report, dict) else None


def signature_inputs(settings: Settings, version: int) -> list[dict[str, str]]:
    """A version's input columns as logged in its signature:
    [{"name": ..., "type": ..., "required": "true" | "false"}]."""
    from mlflow.models import Model

    uri, shown = _model_files(settings, version)
    with mlflow_errors(settings), tempfile.TemporaryDirectory() as tmp:
        repository = _check_files(settings, uri, shown, version, model=True)
        signature = Model.load(repository.download_artifacts("MLmodel", tmp)).signature
    if signature is None:
        return []
    return [
        {
            "name": str(c["name"]),
            "type": str(c["type"]),
            "required": str(c.get("required", True)).lower(),
        }
        for c in signature.inputs.to_dict()
    ]


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
        rows = pd.read_parquet(folder / REFERENCE_ROWS)
        kinds_file = folder / COLUMN_KINDS
        return Reference(
            rows,
            pd.read_parquet(folder / REFERENCE_SCORES),
            json.loads((folder / CALIBRATION).read_text()),
            # NB: versions trained before the kinds were logged: the snapshot's own types.
            json.loads(kinds_file.read_text()) if kinds_file.exists() else column_kinds(rows),
        )
