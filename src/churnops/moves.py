"""Moving an alias under the gate and the ledger: production's by promote and rollback, the
challenger's by `churnops challenger`. One protocol for every alias: the gate report decides
(criteria in ``unforceable`` refuse even with --force), the intent is linked into the ledger, the
alias moves, the entry is finished. The alias is always named by the caller.
"""

from __future__ import annotations

import getpass
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from churnops import gate, ledger
from churnops.config import Settings
from churnops.errors import ChurnopsError, GateRefusedError
from churnops.registry import versions


@dataclass(frozen=True)
class AliasMove:
    """One move of an alias."""

    model_name: str
    alias: str
    from_version: int | None
    to_version: int | None

    def describe(self) -> str:
        """`churn_model@production: v1 -> v2`."""

        def label(version: int | None) -> str:
            return f"v{version}" if version is not None else "none"

        moved = f"{label(self.from_version)} -> {label(self.to_version)}"
        return f"{self.model_name}@{self.alias}: {moved}"


@dataclass(frozen=True)
class MoveResult:
    """An alias move with the gate report that allowed it and its ledger entry; ``entry`` is None
    when the alias already held the target, and nothing changed."""

    move: AliasMove
    report: gate.GateReport | None
    entry: ledger.Entry | None

    @property
    def changed(self) -> bool:
        """True when the alias moved."""
        return self.entry is not None


def actor_of(settings: Settings) -> tuple[str, str | None]:
    """Who is moving the alias, and on whose behalf.

    Under an authenticating tracking server the actor is the user it authenticated
    (MLFLOW_TRACKING_USERNAME), and --actor / CHURNOPS_ACTOR, when it names someone else, is kept
    beside it as "on behalf of", never in its place. Otherwise the actor is --actor, else the OS
    user.
    """
    authenticated = settings.tracking_username
    if authenticated:
        requested = settings.actor if settings.actor not in (None, authenticated) else None
        return authenticated, requested
    return settings.actor or getpass.getuser(), None


def failpoint(settings: Settings, step: str) -> None:
    """Kill this process with SIGKILL at ``step`` when CHURNOPS_FAILPOINT names it, or wait
    there while ``<data dir>/failpoint-<step>.paused`` exists when it names ``<step>:pause``.

    NB: for the fault-injection tests, which need a real kill -9, or a fault of their own (a
    database restart, a server killed), at an exact step of a move rather than after a sleep."""
    if settings.failpoint == step:
        os.kill(os.getpid(), signal.SIGKILL)
    if settings.failpoint == f"{step}:pause":
        marker = settings.data_dir / f"failpoint-{step}.paused"
        marker.touch()
        deadline = time.monotonic() + settings.move_timeout
        while marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)


def check_force(force: bool, reason: str, allow_schema_change: bool = False) -> None:
    """Refuse an override without a reason, before anything is read or loaded."""
    if force and not reason.strip():
        raise ChurnopsError("--force needs --reason TEXT: say why the gate is overridden")
    if allow_schema_change and not reason.strip():
        raise ChurnopsError(
            "--allow-schema-change needs --reason TEXT: say why production switches tables"
        )


def unchanged(settings: Settings, alias: str, version: int) -> MoveResult:
    """The result of a move to the version ``alias`` already holds: nothing changed."""
    return MoveResult(AliasMove(settings.model_name, alias, version, version), None, None)


def _refusal(
    alias: str,
    target: int,
    decided_from: int | None,
    report: gate.GateReport,
    force: bool,
    unforceable: Iterable[gate.Criteria],
    allow_schema_change: bool,
) -> GateRefusedError | None:
    """Why the gate refuses this move, or None when it may go ahead."""
    unsafe = [c for c in report.failures if c.name in frozenset(unforceable)]
    if unsafe:
        return GateRefusedError(
            f"version {target} failed the {unsafe[0].name}, which --force cannot override "
            f"({unsafe[0].value}: {unsafe[0].detail[:200]}); {alias} stays where it is",
            report,
        )
    another_table = gate.schema_change_only(report)
    if report.passed or force or (allow_schema_change and another_table):
        return None
    failed = ", ".join(c.name for c in report.failures)
    remedy = (
        "It reads another table: to switch production to it on purpose, pass "
        "--allow-schema-change --reason TEXT (or serve it under its own CHURNOPS_MODEL_NAME)."
        if another_table
        else "Pass --force --reason TEXT to override."
    )
    return GateRefusedError(
        f"version {target} failed the gate ({failed}); {alias} stays at "
        + (f"v{decided_from}" if decided_from is not None else "none")
        + f". {remedy}",
        report,
    )


def move(
    settings: Settings,
    alias: str,
    *,
    action: str,
    target: int,
    decided_from: int | None,
    report: gate.GateReport,
    force: bool,
    reason: str,
    apply: Callable[[], object] | None = None,
    unforceable: Iterable[gate.Criteria] = gate.SAFETY_CRITERIA,
    allow_schema_change: bool = False,
) -> MoveResult:
    """Move ``alias`` to ``target`` (by ``apply``, default: set the alias) if the gate report
    allows it: the intent is linked into the ledger first, then the alias moves, then the entry
    is finished; if nothing changed since the decision. Criteria in ``unforceable`` refuse even
    with --force."""
    refused = _refusal(alias, target, decided_from, report, force, unforceable, allow_schema_change)
    if refused is not None:
        raise refused
    schema_change = allow_schema_change and gate.schema_change_only(report)
    if schema_change:
        reason = f"schema change: {reason}"
    actor, on_behalf_of = actor_of(settings)
    intent = ledger.Intent(
        actor=actor,
        action=action,
        to_version=target,
        reason=reason,
        override=(force or schema_change) and not report.passed,
        gate=report.to_dict(),
        on_behalf_of=on_behalf_of,
        digests=report.digests or None,
    )
    failpoint(settings, "before-intent")
    with ledger.move(settings, alias, intent, decided_from) as pending:
        failpoint(settings, "after-intent")
        if apply is None:
            versions.set_alias(settings, target, alias)
        else:
            apply()
        failpoint(settings, "after-alias")
    return MoveResult(
        AliasMove(settings.model_name, alias, decided_from, target), report, pending.entry
    )


def clear(settings: Settings, alias: str, action: str, reason: str) -> MoveResult:
    """Remove ``alias`` through the ledger; nothing happens when it is not set."""
    current = versions.alias_version(settings, alias)
    if current is None:
        return MoveResult(AliasMove(settings.model_name, alias, None, None), None, None)
    actor, on_behalf_of = actor_of(settings)
    intent = ledger.Intent(
        actor=actor, action=action, to_version=None, reason=reason, on_behalf_of=on_behalf_of
    )
    with ledger.move(settings, alias, intent, current) as pending:
        versions.delete_alias(settings, alias)
    return MoveResult(AliasMove(settings.model_name, alias, current, None), None, pending.entry)
