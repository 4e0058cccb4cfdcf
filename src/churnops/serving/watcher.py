"""Follows the serving alias: a background thread polls the registry, loads a newly aliased version
off the request path, smoke-tests it on its input example, and swaps it in atomically.

Requests read ``watcher.current`` once and use that snapshot to the end, so a response never mixes
versions and never waits for a load. When the registry is unreachable or a load fails, the current
model keeps serving and the failure is recorded for /model.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd

from churnops import ledger
from churnops.config import Settings
from churnops.errors import TrackingUnavailableError, UnsafeModelError
from churnops.inputs import RequestSchema, identifier_names
from churnops.predict import Engine, smoke_test
from churnops.registry import loading, versions
from churnops.registry.loading import LoadedModel

log = logging.getLogger(__name__)

MAX_BACKOFF = 60.0
RECENT_VERSIONS = 3
PREFETCH_INTERVAL = 5.0


@dataclass(frozen=True)
class ServedModel:
    """The model answering requests right now; replaced whole, never mutated."""

    version: int
    run_id: str | None
    engine: Engine
    metrics: dict[str, float]
    loaded_at: datetime
    schema: RequestSchema
    # NB: True when its files match the digests pinned at promotion; None when nothing was pinned.
    verified: bool | None = None
    # NB: True when served from the on-disk copy because the registry was unreachable at start.
    stale: bool = False


def request_schema(loaded: LoadedModel) -> RequestSchema:
    """The request validators for a loaded version, with its first input example for /docs."""
    example = None
    if loaded.input_example is not None and not loaded.input_example.empty:
        row = loaded.input_example.iloc[0].to_dict()
        # NB: numpy scalars become plain Python values and NaN becomes null, so it is valid JSON.
        example = {
            str(k): None if pd.isna(v) else (v.item() if hasattr(v, "item") else v)
            for k, v in row.items()
        }
    return RequestSchema(loaded.inputs, example, identifier_names(loaded.id_column, loaded.inputs))


def check_pinned(loaded: LoadedModel, pinned: dict[str, str] | None) -> None:
    """Refuse a version whose files or threshold differ from what its promotion gated."""
    if pinned is None:
        return
    changed = sorted(
        name
        for name in pinned.keys() | loaded.digests.keys()
        if pinned.get(name) != loaded.digests.get(name)
    )
    if changed:
        raise UnsafeModelError(
            f"version {loaded.version} differs from what its promotion gated "
            f"({', '.join(changed[:5])} changed); refusing to serve it: promote a version "
            "whose files are intact"
        )


class ModelWatcher:
    """Polls the alias and keeps ``current`` on the version it points at."""

    def __init__(
        self,
        settings: Settings,
        resolve: Callable[[Settings], int | None] = versions.alias_version,
        load: Callable[[Settings, int], LoadedModel] = loading.load_version,
        on_swap: Callable[[ServedModel], object] = lambda _: None,
        on_failed_swap: Callable[[], object] = lambda: None,
        on_poll: Callable[[bool], object] = lambda _: None,
        latest: Callable[[Settings], int | None] = versions.latest_passing_version,
        pinned: Callable[[Settings, int], dict[str, str] | None] = ledger.pinned_digests,
        fallback: Callable[[Settings], LoadedModel | None] = lambda _: None,
        on_served: Callable[[Settings, int], object] = lambda _s, _v: None,
        *,
        prefetch: bool = True,
        unset_clears: bool = False,
        on_cleared: Callable[[], object] = lambda: None,
    ) -> None:
        self._settings = settings
        self._resolve = resolve
        self._load = load
        self._on_swap = on_swap
        self._on_failed_swap = on_failed_swap
        self._on_poll = on_poll
        self._latest = latest
        self._pinned = pinned
        self._fallback = fallback
        self._on_served = on_served
        # NB: production keeps serving when its alias is removed; the challenger stops.
        self._prefetch = prefetch
        self._unset_clears = unset_clears
        self._on_cleared = on_cleared
        self._fallback_tried = False
        self._lock = threading.Lock()
        self._prefetcher: threading.Thread | None = None
        self._prefetch_failed: set[int] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failures = 0
        # NB: the last few loaded versions stay in memory, so a rollback swaps back at once.
        self._recent: OrderedDict[int, LoadedModel] = OrderedDict()
        self._retry_at = 0.0
        self.current: ServedModel | None = None
        self.wanted_version: int | None = None
        self.registry_reachable: bool | None = None
        self.last_error: str | None = None

    def poll_once(self) -> None:
        """Resolve the alias once and swap in its version if it differs from the one serving."""
        started = time.perf_counter()
        try:
            wanted = self._resolve(self._settings)
        except TrackingUnavailableError as exc:
            self._unreachable(str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a poll must never kill the watcher
            self._unreachable(f"alias lookup failed: {exc}")
            return
        self.registry_reachable = True
        self._on_poll(True)
        if wanted != self.wanted_version:
            self._failures, self._retry_at = 0, 0.0
        self.wanted_version = wanted
        current = self.current
        if wanted is None and self._unset_clears and current is not None:
            self.current = None
            self._on_cleared()
            log.info(
                "%s is no longer set: stopped using version %s",
                self._settings.alias,
                current.version,
            )
            return
        if wanted is None or (
            current is not None and current.version == wanted and not current.stale
        ):
            if wanted is not None:
                self.last_error = None
            return
        if time.monotonic() < self._retry_at:
            return
        self._swap_to(wanted, poll_seconds=time.perf_counter() - started)

    def prefetch_once(self) -> None:
        """Load the newest version that passed the gate ahead of its promotion, so that
        promoting it swaps at once instead of after a download.

        NB: runs on a thread of its own, never the polling thread: a slow download must not
        delay following the alias (a rollback above all).
        """
        latest = None
        try:
            latest = self._latest(self._settings)
            with self._lock:
                known = latest in self._recent
            if latest is None or known or latest in self._prefetch_failed:
                return
            loaded = self._load(self._settings, latest)
            smoke_test(loaded.engine, loaded.input_example, loaded.version)
        except Exception as exc:  # noqa: BLE001 - a failed prefetch only costs the head start
            log.warning("prefetch failed: %s", exc)
            if latest is not None and not isinstance(exc, TrackingUnavailableError):
                self._prefetch_failed.add(latest)
            return
        self._remember(loaded)
        log.info("prefetched version %s", latest)

    def _remember(self, loaded: LoadedModel) -> None:
        with self._lock:
            self._recent[loaded.version] = loaded
            self._recent.move_to_end(loaded.version)
            while len(self._recent) > RECENT_VERSIONS:
                self._recent.popitem(last=False)

    def _unreachable(self, reason: str) -> None:
        if self.registry_reachable is not False:
            log.warning(
                "registry unreachable, still serving version %s: %s",
                self.current.version if self.current else None,
                reason,
            )
        self.registry_reachable = False
        self.last_error = reason
        self._on_poll(False)
        if self.current is None and not self._fallback_tried:
            self._fallback_tried = True
            self._serve_fallback()

    def _serve(
        self, loaded: LoadedModel, schema: RequestSchema, verified: bool | None, stale: bool
    ) -> None:
        """Swap ``loaded`` in as the serving model."""
        self._remember(loaded)
        self.current = ServedModel(
            version=loaded.version,
            run_id=loaded.run_id,
            engine=loaded.engine,
            metrics=loaded.metrics,
            loaded_at=datetime.now(UTC),
            schema=schema,
            verified=verified,
            stale=stale,
        )
        self._on_swap(self.current)

    def _serve_fallback(self) -> None:
        """Serve the on-disk copy of the version served last, marked stale."""
        try:
            loaded = self._fallback(self._settings)
            if loaded is None:
                return
            smoke_test(loaded.engine, loaded.input_example, loaded.version)
            schema = request_schema(loaded)
        except Exception as exc:  # noqa: BLE001 - no copy to fall back on; keep waiting
            log.error("the on-disk copy of the last served version is unusable: %s", exc)
            return
        self._serve(loaded, schema, verified=None, stale=True)
        log.warning(
            "registry unreachable at start: serving version %s from its on-disk copy (stale)",
            loaded.version,
        )

    def _swap_to(self, version: int, poll_seconds: float = 0.0) -> None:
        started = time.perf_counter()
        try:
            with self._lock:
                cached = self._recent.get(version)
            loaded = cached or self._load(self._settings, version)
            smoke_test(loaded.engine, loaded.input_example, loaded.version)
            pinned = self._pinned(self._settings, version)
            check_pinned(loaded, pinned)
            schema = request_schema(loaded)
        except Exception as exc:  # noqa: BLE001 - any failure leaves the current model serving
            self._failures += 1
            delay = min(self._settings.poll_interval * 2**self._failures, MAX_BACKOFF)
            self._retry_at = time.monotonic() + delay
            self.last_error = f"version {version} not swapped in: {exc}"
            log.error(
                "%s: version %s not swapped in (retry in %.0f s): %s",
                self._settings.alias,
                version,
                delay,
                exc,
            )
            self._on_failed_swap()
            return
        previous = self.current.version if self.current else None
        self._serve(loaded, schema, verified=None if pinned is None else True, stale=False)
        self._failures, self.last_error = 0, None
        try:
            self._on_served(self._settings, version)
        except Exception as exc:  # noqa: BLE001 - the copy is a fallback; serving goes on
            log.warning("could not record version %s as served: %s", version, exc)
        log.info(
            "%s: now serving version %s (was %s) with %s",
            self._settings.alias,
            version,
            previous,
            loaded.engine.kind,
            extra={
                "poll_seconds": round(poll_seconds, 3),
                "load_seconds": round(time.perf_counter() - started, 3),
            },
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self._settings.poll_interval)

    def _run_prefetch(self) -> None:
        while not self._stop.wait(PREFETCH_INTERVAL):
            self.prefetch_once()

    def start(self) -> None:
        """Begin polling and prefetching in daemon threads; the first poll happens at once."""
        self._thread = threading.Thread(target=self._run, name="churnops-watcher", daemon=True)
        self._thread.start()
        if self._prefetch:
            self._prefetcher = threading.Thread(
                target=self._run_prefetch, name="churnops-prefetch", daemon=True
            )
            self._prefetcher.start()

    def stop(self) -> None:
        """Stop polling and wait for the threads to finish their current step."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._prefetcher is not None:
            # NB: a download in progress cannot be interrupted; the daemon thread dies with us.
            self._prefetcher.join(timeout=2)
