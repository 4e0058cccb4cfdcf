"""The last-served copy: the API keeps the files of the versions it loaded under
``<data dir>/cache/<model>/``, with their sha256 digests, and which one it served last. A replica
restarted while the registry is unreachable serves that version, digest-checked and marked stale
on /ready and /model, instead of never becoming ready; the registry stays the source of truth and
replaces the copy at the first poll that reaches it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

from churnops.config import Settings
from churnops.registry.loading import LoadedModel, file_digests, load_files, threshold_digest
from churnops.registry.versions import VersionInfo, version_info

log = logging.getLogger(__name__)

KEPT_VERSIONS = 3
SERVED = "served.json"
MANIFEST = "manifest.json"
FILES = "files"


def _root(settings: Settings) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", settings.model_name)
    return settings.data_dir / "cache" / safe


def _write_atomically(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    staging.write_text(text)
    staging.replace(path)


def keep(settings: Settings, loaded: LoadedModel, info: VersionInfo, files: Path) -> None:
    """Copy a loaded version's files into the cache (once; workers racing are harmless)."""
    root = _root(settings)
    target = root / f"v{loaded.version}"
    if (target / MANIFEST).exists():
        return
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        shutil.copytree(files, staging / FILES)
        manifest = {
            "version": loaded.version,
            "run_id": loaded.run_id,
            "tags": info.tags,
            "digests": loaded.digests,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest))
        # NB: a rename is atomic, and fails when another worker's copy got there first.
        staging.rename(target)
    except OSError as exc:
        if not (target / MANIFEST).exists():
            log.warning("could not cache version %s: %s", loaded.version, exc)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def mark_served(settings: Settings, version: int) -> None:
    """Record ``version`` as the one served last, and drop copies of older versions."""
    root = _root(settings)
    if not (root / f"v{version}" / MANIFEST).exists():
        return
    _write_atomically(root / SERVED, json.dumps({"version": version}))
    copies = sorted(
        (p for p in root.glob("v*") if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True
    )
    for stale in [p for p in copies if p.name != f"v{version}"][KEPT_VERSIONS - 1 :]:
        shutil.rmtree(stale, ignore_errors=True)


def load_served(settings: Settings, threads: int = 1) -> LoadedModel | None:
    """The version served last, from its cached copy; None when there is none or its files
    no longer match their digests."""
    root = _root(settings)
    with contextlib.suppress(OSError, ValueError, KeyError):
        version = int(json.loads((root / SERVED).read_text())["version"])
        folder = root / f"v{version}"
        manifest = json.loads((folder / MANIFEST).read_text())
        expected = dict(manifest["digests"])
        tags = {str(k): str(v) for k, v in manifest["tags"].items()}
        # NB: checked before anything is deserialised; the loader then hashes what it loads.
        if file_digests(folder / FILES) | threshold_digest(tags) != expected:
            log.error("the cached copy of version %s does not match its digests", version)
            return None
        info = version_info(version, manifest.get("run_id"), tags, datetime.now(UTC))
        return load_files(settings, info, folder / FILES, threads)
    return None
