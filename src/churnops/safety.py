"""Safe model loading: churnops never unpickles, and it decides itself which types a skops file
may build.

MLflow's scikit-learn loader takes the skops allow-list from the model's own MLmodel file, so a
crafted version could approve any type it likes. Here the allow-list is pinned in this module:
the types beyond skops's own defaults that the models churnops trains need (measured for both
model kinds, with and without missing values). A version saved with pickle or cloudpickle, or
whose skops file needs any other type, is refused before anything is deserialised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from churnops.config import DEFAULT_MAX_UNPACKED_BYTES
from churnops.errors import UnsafeModelError

# NB: extend only with types a churnops-trained model is shown to need (see tests/test_safety.py).
ALLOWED_SKOPS_TYPES = frozenset(
    {
        "numpy.dtype",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        # NB: a random forest's trees (`train --search`), and the folds a target encoder of a
        # high-cardinality column was cross-fitted with (kept as its parameter, never run).
        "sklearn.tree._tree.Tree",
        "sklearn.model_selection._split.StratifiedKFold",
    }
)
SKLEARN_FLAVOR = "sklearn"
SKOPS_FORMAT = "skops"


def skops_file(local: str | Path, version: int) -> Path:
    """The skops file of a downloaded model, or UnsafeModelError when it is stored otherwise."""
    from mlflow.models import Model

    flavors = Model.load(str(local)).flavors
    flavor = flavors.get(SKLEARN_FLAVOR)
    if flavor is None:
        raise UnsafeModelError(
            f"version {version} has no scikit-learn flavor (flavors: {', '.join(flavors)}); "
            "churnops serves scikit-learn models saved with skops"
        )
    stored_as = flavor.get("serialization_format")
    if stored_as != SKOPS_FORMAT:
        raise UnsafeModelError(
            f"version {version} is saved as {stored_as}, which loads by unpickling and can run "
            "any code; churnops refuses it: re-log the model with serialization_format='skops' "
            "(churnops train does)"
        )
    return Path(local) / str(flavor["pickled_model"])


def check_types(path: Path, version: int) -> list[str]:
    """The non-default types ``path`` needs, or UnsafeModelError naming those outside the
    allow-list. Reads the file's schema only; nothing is constructed."""
    import skops.io

    needed = sorted(skops.io.get_untrusted_types(file=path))
    refused = [t for t in needed if t not in ALLOWED_SKOPS_TYPES]
    if refused:
        raise UnsafeModelError(
            f"version {version} needs types outside churnops's allow-list: {', '.join(refused)}; "
            "it was not trained by churnops or was altered, so it is not loaded"
        )
    return needed


def check_unpacked_size(path: Path, version: int, limit: int) -> None:
    """UnsafeModelError when the skops archive would unpack to more than ``limit`` bytes (read
    from the archive's directory; nothing is decompressed)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(member.file_size for member in archive.infolist())
    except zipfile.BadZipFile as exc:
        raise UnsafeModelError(f"version {version}'s skops file is not an archive: {exc}") from None
    if unpacked > limit:
        raise UnsafeModelError(
            f"version {version}'s skops file unpacks to {unpacked:,} bytes, over the limit of "
            f"{limit:,} (CHURNOPS_MAX_UNPACKED_BYTES); it is not loaded"
        )


def load_sklearn(
    local: str | Path, version: int, max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES
) -> Any:
    """Load a downloaded model's scikit-learn object, trusting only the pinned types."""
    import skops.io

    path = skops_file(local, version)
    check_unpacked_size(path, version, max_unpacked_bytes)
    return skops.io.load(path, trusted=check_types(path, version))
