"""The challenger slot: one version tried on live traffic beside production, as a shadow (scored
on a share of production's rows after they are answered, never returned) or as a canary (answering
a share of customers itself, sticky by customer id).

The slot is the alias ``challenger`` (CHURNOPS_CHALLENGER_ALIAS); its mode and share are tags on
the version it points at, written before the alias moves, so every replica and worker reads
version, mode and share in one registry request. Moves go through the ledger like production's,
with their own actions (``challenger-set``, ``challenger-clear``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from churnops import gate, ledger, registry
from churnops.config import Settings
from churnops.errors import ChurnopsError
from churnops.lifecycle import (
    AliasMove,
    MoveResult,
    _check_force,
    _move,
    _unchanged,
    actor_of,
    gate_report,
)
from churnops.routing import (
    DEFAULT_PERCENT,
    MODE_TAG,
    PERCENT_TAG,
    Mode,
    Slot,
    slot,
    slot_from,
    slot_settings,
)

# NB: what a challenger can never skip, even with --force: it must load safely and read the rows
# production's clients send.
REQUIRED = frozenset({"smoke test", "signature compatible", gate.INPUTS_SENT})


def _check_percent(mode: Mode, percent: float | None) -> float:
    value = DEFAULT_PERCENT[mode] if percent is None else percent
    if not 0 < value <= 100:
        raise ChurnopsError(f"--percent must be in (0, 100]; got {value:g}")
    if mode == "canary" and value == 100:
        raise ChurnopsError(
            "a canary for 100% of customers is a promotion: run `churnops promote --version N`"
        )
    return value


def set_challenger(
    settings: Settings,
    version: int,
    mode: Mode = "shadow",
    percent: float | None = None,
    force: bool = False,
    reason: str = "",
) -> MoveResult:
    """Put ``version`` in the challenger slot, if it loads safely and reads only the inputs
    production's clients send; a canary also needs the held-out gate (``force`` overrides that,
    never the rest). Recorded in the ledger before the alias moves."""
    _check_force(force, reason)
    share = _check_percent(mode, percent)
    registry.ping(settings)
    registry.get_version(settings, version)
    production = registry.alias_version(settings)
    if production is None:
        raise ChurnopsError(
            f"{settings.model_name}@{settings.alias} is not set, so there is nothing to "
            "challenge; promote a version first (`churnops promote`)"
        )
    if production == version:
        raise ChurnopsError(
            f"v{version} is production already; a challenger must be another version"
        )
    report = _report(settings, version, production, mode)
    target = slot_settings(settings)
    current = registry.alias_target(target)
    if current is not None and slot_from(*current) == Slot(version, mode, share):
        return _unchanged(target, version)

    def apply() -> None:
        # NB: tags first, so no poll ever sees the new alias with the old mode.
        registry.set_version_tags(settings, version, {MODE_TAG: mode, PERCENT_TAG: f"{share:g}"})
        registry.set_alias(target, version)

    return _move(
        target,
        action="challenger-set",
        target=version,
        decided_from=None if current is None else current[0],
        report=report,
        force=force,
        reason=reason or f"{mode} {share:g}%",
        apply=apply,
        unforceable=REQUIRED,
    )


def _report(settings: Settings, version: int, production: int, mode: Mode) -> gate.GateReport:
    found = gate_report(settings, version, production, compare_champion=False)
    criteria = []
    for c in found.criteria:
        if c.name == "held-out f1" and mode == "shadow" and not c.passed:
            # NB: a shadow's answers are never returned, so its quality is what is measured.
            c = gate.Criterion(
                c.name, True, c.value, c.threshold, "not required for a shadow (never answers)"
            )
        criteria.append(c)
    if any(c.name == "smoke test" and c.passed for c in criteria):
        criteria.append(
            gate.check_inputs_sent(
                registry.signature_inputs(settings, production),
                registry.signature_inputs(settings, version),
                production,
            )
        )
    return gate.GateReport(version, tuple(criteria), found.digests)


def clear(settings: Settings, reason: str = "") -> MoveResult:
    """Empty the challenger slot (recorded in the ledger); nothing happens when it is empty."""
    registry.ping(settings)
    target = slot_settings(settings)
    current = registry.alias_version(target)
    if current is None:
        return MoveResult(AliasMove(settings.model_name, target.alias, None, None), None, None)
    actor, on_behalf_of = actor_of(settings)
    intent = ledger.Intent(
        actor=actor,
        action="challenger-clear",
        to_version=None,
        reason=reason or "cleared",
        on_behalf_of=on_behalf_of,
    )
    with ledger.move(target, intent, current, registry.alias_version) as pending:
        registry.delete_alias(target)
    return MoveResult(
        AliasMove(settings.model_name, target.alias, current, None), None, pending.entry
    )


@dataclass(frozen=True)
class SlotStatus:
    """The challenger slot as `churnops challenger status` shows it: the version in it (None
    when empty), production's version, and when the ledger's last challenger move put it there."""

    model: str
    alias: str
    production_version: int | None
    challenger: Slot | None
    since: str | None
    last_move: ledger.Entry | None

    def to_dict(self) -> dict[str, Any]:
        """The status as `--json` prints it."""
        found = self.challenger
        return {
            "model": self.model,
            "alias": self.alias,
            "production_version": self.production_version,
            "challenger": None
            if found is None
            else {"version": found.version, "mode": found.mode, "percent": found.percent},
            "since": self.since,
            "last_move": None if self.last_move is None else self.last_move.to_dict(),
        }

    def render(self) -> str:
        """One line: the slot beside production, or how to fill it."""
        found, production = self.challenger, self.production_version
        head = f"{self.model}@{self.alias}: "
        if found is None:
            return head + "not set (`churnops challenger set N`)"
        share = "rows" if found.mode == "shadow" else "customers"
        text = (
            head + f"v{found.version} as a {found.mode} on {found.percent:g}% of {share}, "
            f"beside production v{production}"
        )
        if self.since:
            text += f" (since {self.since})"
        if found.version == production:
            text += "; it is production now, so the API does not use it: clear it or set another"
        return text


def status(settings: Settings) -> SlotStatus:
    """The slot, production's version, and the ledger's last challenger move."""
    registry.ping(settings)
    found = slot(settings)
    moves = [e for e in ledger.entries(settings) if e.alias == settings.challenger_alias]
    last = next((e for e in reversed(moves) if e.state == "done"), None)
    return SlotStatus(
        model=settings.model_name,
        alias=settings.challenger_alias,
        production_version=registry.alias_version(settings),
        challenger=found,
        since=last.time if last is not None and found is not None else None,
        last_move=last,
    )
