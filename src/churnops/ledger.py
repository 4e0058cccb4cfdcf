"""The ledger of alias moves and the lock that serialises them, both kept in MLflow itself.

Each move is one run in the experiment ``<model>-ledger`` (visible in the MLflow UI), its fields in
tags, numbered by ``ledger.seq``. MLflow moves aliases with a last-writer-wins upsert and has no
compare-and-set, so moves take a lock first: a registered model named ``<model>-churnops-lock``,
whose creation is atomic in the tracking server's database, so exactly one holder exists across
machines. A lock older than ``LOCK_STALE_AFTER`` is taken to belong to a crashed holder and broken.

The pure part, :func:`production_stack`, replays the ledger into the stack of production versions
that rollback ("undo") walks back through.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from churnops.config import Settings
from churnops.errors import LockTimeoutError
from churnops.registry import mlflow_errors

log = logging.getLogger(__name__)

RETRIES_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
LOCK_TIMEOUT = 60.0
LOCK_STALE_AFTER = 120.0
ACTIONS = ("promote", "rollback", "undo", "external")


@dataclass(frozen=True)
class Entry:
    """One alias move."""

    seq: int
    time: str
    actor: str
    alias: str
    action: str
    from_version: int | None
    to_version: int
    reason: str
    override: bool
    gate: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        """The entry as `churnops history --json` prints it."""
        return dict(self.__dict__)


def _client(settings: Settings) -> MlflowClient:
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def experiment_name(settings: Settings) -> str:
    """The MLflow experiment holding this model's ledger."""
    return f"{settings.model_name}-ledger"


def _experiment_id(client: MlflowClient, settings: Settings, create: bool) -> str | None:
    found = client.get_experiment_by_name(experiment_name(settings))
    if found is not None:
        return str(found.experiment_id)
    if not create:
        return None
    try:
        return str(client.create_experiment(experiment_name(settings)))
    except MlflowException:
        # NB: another process created it between our read and our create.
        again = client.get_experiment_by_name(experiment_name(settings))
        if again is None:
            raise
        return str(again.experiment_id)


def _version(text: str | None) -> int | None:
    return int(text) if text not in (None, "", "none") else None


def entries(settings: Settings) -> list[Entry]:
    """Every ledger entry, oldest first."""
    with mlflow_errors(settings):
        client = _client(settings)
        experiment = _experiment_id(client, settings, create=False)
        if experiment is None:
            return []
        runs = client.search_runs([experiment], max_results=50_000)
    found = []
    seen: set[str] = set()
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        tags = run.data.tags
        # NB: the HTTP client retries a create_run whose answer timed out, which can write the
        # same entry twice; both copies carry the same ledger.id, and the first one counts.
        entry_id = tags.get("ledger.id", run.info.run_id)
        if "ledger.seq" not in tags or entry_id in seen:
            continue
        seen.add(entry_id)
        found.append(
            Entry(
                seq=int(tags["ledger.seq"]),
                time=tags["ledger.time"],
                actor=tags["ledger.actor"],
                alias=tags["ledger.alias"],
                action=tags["ledger.action"],
                from_version=_version(tags.get("ledger.from_version")),
                to_version=int(tags["ledger.to_version"]),
                reason=tags.get("ledger.reason", ""),
                override=tags.get("ledger.override") == "true",
                gate=json.loads(tags["ledger.gate"]) if tags.get("ledger.gate") else None,
            )
        )
    return sorted(found, key=lambda e: e.seq)


def append(
    settings: Settings,
    *,
    actor: str,
    action: str,
    from_version: int | None,
    to_version: int,
    reason: str = "",
    override: bool = False,
    gate: dict[str, Any] | None = None,
    after: list[Entry],
) -> Entry:
    """Write the next entry; call only while holding the lock, with ``after`` read under it."""
    entry = Entry(
        seq=(after[-1].seq + 1) if after else 1,
        time=datetime.now(UTC).isoformat(timespec="seconds"),
        actor=actor,
        alias=settings.alias,
        action=action,
        from_version=from_version,
        to_version=to_version,
        reason=reason,
        override=override,
        gate=gate,
    )
    tags = {
        "ledger.id": uuid.uuid4().hex,
        "ledger.seq": str(entry.seq),
        "ledger.time": entry.time,
        "ledger.actor": actor,
        "ledger.alias": entry.alias,
        "ledger.action": action,
        "ledger.from_version": str(from_version) if from_version is not None else "none",
        "ledger.to_version": str(to_version),
        "ledger.reason": reason,
        "ledger.override": str(override).lower(),
        "mlflow.user": actor,
    }
    if gate is not None:
        tags["ledger.gate"] = json.dumps(gate)
    before = f"v{from_version}" if from_version is not None else "none"
    with mlflow_errors(settings):
        client = _client(settings)
        experiment = _experiment_id(client, settings, create=True)
        assert experiment is not None
        run = client.create_run(
            experiment, tags=tags, run_name=f"#{entry.seq} {action} {before} -> v{to_version}"
        )
        # NB: update_run, not set_terminated, which prints "View run" lines to stdout.
        client.update_run(run.info.run_id, status="FINISHED")
    return entry


def production_stack(ledger: list[Entry]) -> list[int]:
    """The versions production held, oldest first, with every undone move popped off.

    Every move pushes its target; an undo pops the version it left. So after promotions to v1,
    v3 and v5 the stack is [1, 3, 5], and two undos leave [1].
    """
    stack: list[int] = []
    for entry in ledger:
        if entry.action == "undo" and stack:
            stack.pop()
            if not stack or stack[-1] != entry.to_version:
                stack.append(entry.to_version)  # an undo past the ledger's start
        else:
            stack.append(entry.to_version)
    return stack


def _lock_name(settings: Settings) -> str:
    return f"{settings.model_name}-churnops-lock"


@contextlib.contextmanager
def locked(settings: Settings, holder: str, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the model's alias lock for the duration of the block."""
    name = _lock_name(settings)
    token = f"{holder}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + timeout
    delay = 0.05
    with mlflow_errors(settings):
        client = _client(settings)
        while True:
            try:
                client.create_registered_model(
                    name,
                    tags={"holder": token, "acquired": str(time.time())},
                    description="churnops alias lock: held while production moves; "
                    "deleted when the move is done",
                )
                break
            except MlflowException as exc:
                if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                    raise
                if _holder(client, name) == token:
                    break  # a retried create whose first attempt had already taken the lock
            _break_if_stale(client, name)
            if time.monotonic() > deadline:
                raise LockTimeoutError(
                    f"another churnops command has held the {settings.alias} lock for over "
                    f"{timeout:.0f} s; retry, or delete the registered model {name!r} if no "
                    "command is running"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
    try:
        yield
    finally:
        with mlflow_errors(settings), contextlib.suppress(MlflowException):
            client = _client(settings)
            if _holder(client, name) == token:
                with _single_attempt():
                    client.delete_registered_model(name)


@contextlib.contextmanager
def _single_attempt() -> Iterator[None]:
    """Send the enclosed MLflow requests once, without the client's automatic retries.

    NB: a retried delete whose first attempt succeeded late would delete the *next* holder's
    lock; MLflow reads this variable at request time.
    """
    previous = os.environ.get(RETRIES_ENV)
    os.environ[RETRIES_ENV] = "0"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(RETRIES_ENV, None)
        else:
            os.environ[RETRIES_ENV] = previous


def _holder(client: MlflowClient, name: str) -> str | None:
    """The lock's holder token, or None when no lock exists."""
    for _ in range(5):
        try:
            holder = client.get_registered_model(name).tags.get("holder")
        except MlflowException:
            return None
        if holder is not None:
            return str(holder)
        time.sleep(0.1)  # NB: the tags were missing from this read; read again
    return None


def _break_if_stale(client: MlflowClient, name: str) -> None:
    # NB: the server's own creation time, not a tag: under load a read can come back without the
    # lock's tags, and a missing tag must never make a live lock look abandoned.
    try:
        created = client.get_registered_model(name).creation_timestamp
    except MlflowException:
        return  # released meanwhile
    if not created:
        return
    age = time.time() - created / 1000
    if age > LOCK_STALE_AFTER:
        log.warning("breaking a stale alias lock taken %.0f s ago", age)
        with contextlib.suppress(MlflowException), _single_attempt():
            client.delete_registered_model(name)
