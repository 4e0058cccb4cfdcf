"""The ledger of alias moves, kept in MLflow itself, and the protocol that lets one mover at a time
change production, with the intent written before the alias moves.

Each move is one run in the experiment ``<model>-ledger`` (visible in the MLflow UI), its fields in
tags. The runs form a chain: every entry names its predecessor (tag ``ledger.prev``) and is linked
from it by the predecessor's parameter ``next``. MLflow parameters are write-once (logging another
value for a key is refused by the tracking server's database), so linking is a compare-and-set:
of all movers that read the same head, exactly one links its entry and the others read again.
No lock object exists to break, nothing is ever deleted, and no decision compares clocks.

A move is written as an *intent* (state ``pending``: actor, reason, gate report, from, to) before
the alias moves, and finished by a second write-once parameter, ``outcome`` = ``done`` or
``aborted``. While a mover holds a pending entry it renews a lease by rewriting the tag
``ledger.beat``; a waiter that sees the same beat for ``lease_seconds`` of its own elapsed time
takes the mover for crashed and finishes its entry from the alias: ``done`` when production
reached the intended version, else ``aborted``. Either way the original actor and reason stay.

The chain starts at a root run (seq 0) made before the experiment gets its name, so two first
movers cannot start two chains; a ledger written by an older churnops (no chain) continues from
its last entry.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from churnops.config import Settings
from churnops.errors import ChurnopsError, LockTimeoutError, StaleMoveError
from churnops.registry import versions
from churnops.registry.connection import mlflow_errors
from churnops.registry.ledger_store import LedgerRun, LedgerStore

log = logging.getLogger(__name__)

ACTIONS = ("promote", "rollback", "undo", "external", "challenger-set", "challenger-clear")
STATES = ("done", "aborted", "pending", "unrecorded")
NEXT_PARAM = "next"
OUTCOME_PARAM = "outcome"
BEAT_TAG = "ledger.beat"
RELEASED = "released"
EXTERNAL_ACTOR = "unknown (outside churnops)"


@dataclass(frozen=True)
class Entry:
    """One alias move."""

    seq: int
    time: str
    actor: str
    alias: str
    action: str
    from_version: int | None
    # NB: None only for challenger-clear, which leaves the challenger alias unset.
    to_version: int | None
    reason: str
    override: bool
    gate: dict[str, Any] | None
    state: str = "done"
    on_behalf_of: str | None = None
    resolved_by: str | None = None
    digests: dict[str, str] | None = None
    run_id: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The entry as `churnops history --json` prints it."""
        document = dict(self.__dict__)
        document.pop("run_id")
        return document


def _version(text: str | None) -> int | None:
    return int(text) if text not in (None, "", "none") else None


def _entry(run: LedgerRun) -> Entry:
    tags, params = run.tags, run.params
    state = params.get(OUTCOME_PARAM, "pending") if "ledger.prev" in tags else "done"
    return Entry(
        seq=int(tags["ledger.seq"]),
        time=tags["ledger.time"],
        actor=tags["ledger.actor"],
        alias=tags["ledger.alias"],
        action=tags["ledger.action"],
        from_version=_version(tags.get("ledger.from_version")),
        to_version=_version(tags["ledger.to_version"]),
        reason=tags.get("ledger.reason", ""),
        override=tags.get("ledger.override") == "true",
        gate=json.loads(tags["ledger.gate"]) if tags.get("ledger.gate") else None,
        state=state,
        on_behalf_of=tags.get("ledger.on_behalf_of"),
        resolved_by=tags.get("ledger.resolved_by"),
        digests=json.loads(tags["ledger.digests"]) if tags.get("ledger.digests") else None,
        run_id=run.run_id,
    )


@dataclass(frozen=True)
class Chain:
    """The ledger as read at one moment: its entries, oldest first, and the run to link after."""

    experiment_id: str | None
    entries: list[Entry]
    head_run_id: str | None
    head_beat: str | None = None

    @property
    def head(self) -> Entry | None:
        """The newest entry, or None for an empty ledger."""
        return self.entries[-1] if self.entries else None

    def holds(self, alias: str) -> int | None:
        """The version ``alias`` holds per the ledger: the target of its newest finished move."""
        done = [e for e in self.entries if e.state == "done" and e.alias == alias]
        return done[-1].to_version if done else None


def _chain(experiment_id: str, runs: list[LedgerRun]) -> Chain:
    by_id = {r.run_id: r for r in runs}
    ordered = sorted(runs, key=lambda r: (r.start_time, r.run_id))
    # NB: a ledger written by churnops before the chain existed: entries numbered by seq, where
    # a retried create_run can have written one twice (same ledger.id; the first counts).
    legacy: list[LedgerRun] = []
    seen: set[str] = set()
    for run in ordered:
        tags = run.tags
        if "ledger.seq" not in tags or "ledger.prev" in tags or tags.get("ledger.root"):
            continue
        entry_id = tags.get("ledger.id", run.run_id)
        if entry_id not in seen:
            seen.add(entry_id)
            legacy.append(run)
    legacy.sort(key=lambda r: int(r.tags["ledger.seq"]))
    roots = [r for r in ordered if r.tags.get("ledger.root") == "true"]
    start = legacy[-1] if legacy else (roots[0] if roots else None)
    if start is None:
        return Chain(experiment_id, [], None)
    entries = [_entry(r) for r in legacy]
    current = start
    while (linked := current.params.get(NEXT_PARAM)) is not None:
        following = by_id.get(linked)
        if following is None:
            raise ChurnopsError(
                f"the ledger links entry #{current.tags.get('ledger.seq', 0)} to run "
                f"{linked}, which is missing (deleted from experiment "
                f"{current.experiment_id}?); restore it in the MLflow UI"
            )
        entries.append(_entry(following))
        current = following
    return Chain(experiment_id, entries, current.run_id, current.tags.get(BEAT_TAG))


def _read(store: LedgerStore, experiment_id: str) -> Chain:
    return _chain(experiment_id, store.runs(experiment_id))


def _find_experiment(store: LedgerStore, settings: Settings) -> str | None:
    found = store.experiment(settings.ledger_experiment)
    if found is None:
        return None
    experiment_id, active = found
    if not active:
        raise ChurnopsError(
            f"the ledger experiment {settings.ledger_experiment!r} is deleted; restore it "
            f"(`mlflow experiments restore --experiment-id {experiment_id}`) and retry"
        )
    return experiment_id


def read(settings: Settings) -> Chain:
    """The ledger as it stands; never writes."""
    with mlflow_errors(settings):
        store = LedgerStore(settings)
        experiment = _find_experiment(store, settings)
        if experiment is None:
            return Chain(None, [], None)
        return _read(store, experiment)


def entries(settings: Settings) -> list[Entry]:
    """Every ledger entry, oldest first, finished or not."""
    return read(settings).entries


def pinned_digests(settings: Settings, version: int) -> dict[str, str] | None:
    """The digests the newest finished move of the alias to ``version`` pinned; None when none
    did (a move made outside churnops, or by an older churnops)."""
    for entry in reversed(entries(settings)):
        if entry.state == "done" and entry.alias == settings.alias and entry.to_version == version:
            return entry.digests
    return None


def _open(store: LedgerStore, settings: Settings) -> Chain:
    """The ledger, created with its root run when it does not exist yet."""
    name = settings.ledger_experiment
    for _ in range(3):
        experiment = _find_experiment(store, settings)
        if experiment is not None:
            chain = _read(store, experiment)
            if chain.head_run_id is not None:
                return chain
            # NB: an empty ledger experiment without a root (made by an older churnops or by
            # hand): set it aside under a name fixed by its id, then open a new one.
            store.rename_experiment(experiment, f"{name}-empty-{experiment}")
            continue
        # NB: the root is written before the experiment takes the ledger's name, and a rename
        # to a taken name fails, so exactly one opener's root ever heads the chain.
        opening = store.create_experiment(f"{name}-opening-{uuid.uuid4().hex}")
        root = store.create_run(
            opening,
            {"ledger.root": "true", "ledger.seq": "0", "mlflow.user": "churnops"},
            "#0 ledger opened",
        )
        store.finish_run(root, "FINISHED")
        if not store.rename_experiment(opening, name):
            store.delete_experiment(opening)
    experiment = _find_experiment(store, settings)
    if experiment is None:
        raise ChurnopsError(f"could not create the ledger experiment {name!r}; retry")
    return _read(store, experiment)


def _finish(store: LedgerStore, run_id: str, outcome: str) -> str:
    """Write an entry's outcome once; return the outcome that holds (maybe another writer's)."""
    held = store.write_once(run_id, OUTCOME_PARAM, outcome)
    store.finish_run(run_id, "FINISHED" if held == "done" else "KILLED")
    return held


@dataclass
class _Lease:
    """Observations of a pending head's heartbeat, timed by this process's own clock only."""

    lease_seconds: float
    seen: dict[str, tuple[str | None, float]] = field(default_factory=dict)

    def expired(self, run_id: str, beat: str | None) -> bool:
        """True once the holder released the entry or its beat stood still for a lease."""
        if beat == RELEASED:
            return True
        now = time.monotonic()
        last = self.seen.get(run_id)
        if last is None or last[0] != beat:
            self.seen[run_id] = (beat, now)
            return False
        return now - last[1] >= self.lease_seconds


class _Heartbeat:
    """Renews a pending entry's lease from a daemon thread until stopped."""

    def __init__(self, settings: Settings, run_id: str) -> None:
        self._store = LedgerStore(settings)
        self._run_id = run_id
        self._interval = settings.lease_seconds / 5
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="churnops-lease", daemon=True)

    def _run(self) -> None:
        beat = 0
        while not self._stop.wait(self._interval):
            beat += 1
            try:
                self._store.set_tag(self._run_id, BEAT_TAG, str(beat))
            except Exception as exc:  # noqa: BLE001 - a missed beat only shortens the lease
                log.warning("could not renew the move's lease: %s", exc)

    def start(self) -> None:
        """Begin renewing."""
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing and wait for the thread."""
        self._stop.set()
        self._thread.join(timeout=5)


@dataclass(frozen=True)
class Intent:
    """What a mover means to do, recorded before the alias moves."""

    actor: str
    action: str
    to_version: int | None
    reason: str = ""
    override: bool = False
    gate: dict[str, Any] | None = None
    on_behalf_of: str | None = None
    digests: dict[str, str] | None = None


def _tags(alias: str, intent: Intent, seq: int, before: int | None, prev: str) -> dict:
    tags = {
        "ledger.id": uuid.uuid4().hex,
        "ledger.seq": str(seq),
        "ledger.prev": prev,
        "ledger.time": datetime.now(UTC).isoformat(timespec="seconds"),
        "ledger.actor": intent.actor,
        "ledger.alias": alias,
        "ledger.action": intent.action,
        "ledger.from_version": str(before) if before is not None else "none",
        "ledger.to_version": str(intent.to_version) if intent.to_version is not None else "none",
        "ledger.reason": intent.reason,
        "ledger.override": str(intent.override).lower(),
        BEAT_TAG: "0",
        "mlflow.user": intent.actor,
    }
    if intent.gate is not None:
        tags["ledger.gate"] = json.dumps(intent.gate)
    if intent.on_behalf_of:
        tags["ledger.on_behalf_of"] = intent.on_behalf_of
    if intent.digests:
        tags["ledger.digests"] = json.dumps(intent.digests)
    return tags


def _label(version: int | None) -> str:
    return f"v{version}" if version is not None else "none"


def _link(
    store: LedgerStore, alias: str, chain: Chain, intent: Intent, before: int | None
) -> Entry | None:
    """Write ``intent`` as a pending entry after the chain's head; None when another mover
    linked first."""
    assert chain.experiment_id is not None and chain.head_run_id is not None
    seq = chain.head.seq + 1 if chain.head else 1
    tags = _tags(alias, intent, seq, before, chain.head_run_id)
    run_id = store.create_run(
        chain.experiment_id,
        tags,
        f"#{seq} {intent.action} {_label(before)} -> {_label(intent.to_version)}",
    )
    if store.write_once(chain.head_run_id, NEXT_PARAM, run_id) != run_id:
        # NB: never deleted (that needs MANAGE); an unlinked run is not part of the ledger.
        store.set_tag(run_id, "ledger.state", "lost the race; not part of the ledger")
        store.finish_run(run_id, "KILLED")
        return None
    return Entry(
        seq=seq,
        time=tags["ledger.time"],
        actor=intent.actor,
        alias=alias,
        action=intent.action,
        from_version=before,
        to_version=intent.to_version,
        reason=intent.reason,
        override=intent.override,
        gate=intent.gate,
        state="pending",
        on_behalf_of=intent.on_behalf_of,
        digests=intent.digests,
        run_id=run_id,
    )


def _resolve(store: LedgerStore, entry: Entry, alias: int | None, by: str) -> str:
    """Finish a crashed mover's entry from where production actually is."""
    outcome = "done" if alias == entry.to_version else "aborted"
    store.set_tag(entry.run_id, "ledger.resolved_by", by)
    held = _finish(store, entry.run_id, outcome)
    log.warning(
        "finished entry #%s (%s by %s) left pending by a crashed command: %s",
        entry.seq,
        entry.action,
        entry.actor,
        held,
    )
    return held


@dataclass
class Pending:
    """A linked, not yet finished move; the caller moves the alias, then leaves the block."""

    entry: Entry


@contextlib.contextmanager
def move(
    settings: Settings, alias: str, intent: Intent, decided_from: int | None
) -> Iterator[Pending]:
    """Link ``intent`` as the ledger's next entry, then run the block, which moves ``alias``.

    Before linking: a crashed mover's entry is finished, and a move made outside churnops is
    recorded as ``external``. StaleMoveError when production is no longer at ``decided_from``;
    LockTimeoutError when another live mover holds the ledger past ``move_timeout``.
    """
    deadline = time.monotonic() + settings.move_timeout
    lease = _Lease(settings.lease_seconds)
    said: set[int] = set()
    with mlflow_errors(settings):
        store = LedgerStore(settings)
        while True:
            chain = _open(store, settings)
            head = chain.head
            current = versions.alias_version(settings, alias)
            if head is not None and head.state == "pending":
                if lease.expired(head.run_id, chain.head_beat):
                    _resolve(store, head, current, intent.actor)
                    continue
                if time.monotonic() > deadline:
                    raise LockTimeoutError(
                        f"entry #{head.seq} ({head.action} to {_label(head.to_version)} by "
                        f"{head.actor}) is still in progress and its holder is alive after "
                        f"{settings.move_timeout:.0f} s; retry when it finishes"
                    )
                if head.seq not in said:
                    # NB: a wait of up to a lease (15 s) or the move timeout (60 s) says why.
                    said.add(head.seq)
                    log.info(
                        "waiting for entry #%d (%s to %s by %s) to finish: up to %.0f s while "
                        "its holder is alive, %.0f s if it crashed",
                        head.seq,
                        head.action,
                        _label(head.to_version),
                        head.actor,
                        settings.move_timeout,
                        settings.lease_seconds,
                    )
                time.sleep(min(0.5, settings.lease_seconds / 10))
                continue
            if current is not None and current != chain.holds(alias):
                external = Intent(
                    actor=EXTERNAL_ACTOR,
                    action="external",
                    to_version=current,
                    reason="alias moved outside churnops; detected by churnops",
                )
                recorded = _link(store, alias, chain, external, chain.holds(alias))
                if recorded is not None:
                    _finish(store, recorded.run_id, "done")
                continue
            if current != decided_from:
                doing = {"promote": "promoting", "rollback": "rolling back", "undo": "rolling back"}
                raise StaleMoveError(
                    f"{alias} moved from {_label(decided_from)} to {_label(current)} "
                    f"while you were {doing.get(intent.action, 'moving it')}; re-run"
                )
            linked = _link(store, alias, chain, intent, current)
            if linked is not None:
                break
        heartbeat = _Heartbeat(settings, linked.run_id)
        heartbeat.start()
        pending = Pending(linked)
        try:
            yield pending
        except BaseException:
            heartbeat.stop()
            # NB: best effort; if the tracking server is gone, the next mover finishes it.
            with contextlib.suppress(Exception):
                _resolve(store, linked, versions.alias_version(settings, alias), intent.actor)
            with contextlib.suppress(Exception):
                store.set_tag(linked.run_id, BEAT_TAG, RELEASED)
            raise
        heartbeat.stop()
        held = _finish(store, linked.run_id, "done")
        if held != "done":
            raise ChurnopsError(
                f"entry #{linked.seq} was finished as {held} by another command that took this "
                "one for crashed (it stalled past the lease); check `churnops status`"
            )
    pending.entry = replace(linked, state="done")


def production_stack(ledger: list[Entry], alias: str) -> list[int]:
    """The versions ``alias`` held, oldest first, with every undone move popped off.

    Every finished move pushes its target; an undo pops the version it left. So after
    promotions to v1, v3 and v5 the stack is [1, 3, 5], and two undos leave [1]. Unfinished and
    aborted entries, moves of other aliases, and moves to the version already on top, change
    nothing.
    """
    stack: list[int] = []
    for entry in ledger:
        if entry.state != "done" or entry.alias != alias or entry.to_version is None:
            continue
        if entry.action == "undo" and stack:
            stack.pop()
            if not stack or stack[-1] != entry.to_version:
                stack.append(entry.to_version)  # an undo past the ledger's start
        elif not stack or stack[-1] != entry.to_version:
            stack.append(entry.to_version)
    return stack
