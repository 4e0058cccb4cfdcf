"""The ledger's pure rules, without servers: the undo stack, the lease, the settings that bound
a move, and the digest check the API applies before serving a version."""

from __future__ import annotations

import pytest

from churnops import ledger
from churnops.config import Settings


def test_a_live_mover_is_waited_for_not_broken() -> None:
    """A lease is only taken for dead after its beat stood still for the whole lease."""
    lease = ledger._Lease(lease_seconds=3600)
    assert not lease.expired("run", "1")
    assert not lease.expired("run", "1")
    assert not lease.expired("run", "2")
    assert lease.expired("run", ledger.RELEASED)


def test_the_undo_stack_ignores_repeated_aborted_pending_and_challenger_entries() -> None:
    def entry(
        seq: int, action: str, to: int | None, state: str = "done", alias: str = "production"
    ) -> ledger.Entry:
        return ledger.Entry(seq, "", "a", alias, action, None, to, "", False, None, state)

    history = [
        entry(1, "promote", 1),
        entry(2, "promote", 2),
        entry(3, "promote", 2),  # a repeated promote written by an older churnops
        entry(4, "promote", 3, "aborted"),
        entry(5, "promote", 4, "pending"),
        entry(6, "challenger-set", 5, alias="challenger"),
        entry(7, "challenger-clear", None, alias="challenger"),
    ]
    assert ledger.production_stack(history, "production") == [1, 2]
    assert ledger.production_stack([*history, entry(8, "undo", 1)], "production") == [1]
    assert ledger.production_stack(history, "challenger") == [5]


def test_settings_refuse_a_move_timeout_shorter_than_the_lease() -> None:
    with pytest.raises(ValueError, match="must exceed CHURNOPS_LEASE_SECONDS"):
        Settings(lease_seconds=30, move_timeout=10)
