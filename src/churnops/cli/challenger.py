"""`churnops challenger`: the challenger slot, set, cleared and shown."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from churnops.cli import options
from churnops.cli.command import command, read_settings

if TYPE_CHECKING:
    from churnops.routing import Mode


@click.group(name="challenger")
def challenger_group() -> None:
    """A version tried on live traffic beside production: as a shadow (scored on production's
    rows after they are answered, never returned) or a canary (answering a share of customers,
    the same customers every time). Compare it with `churnops compare`."""


@challenger_group.command(name="set")
@click.argument("version", type=click.IntRange(min=1))
@click.option(
    "--mode",
    type=click.Choice(["shadow", "canary"]),
    default="shadow",
    show_default=True,
    help="shadow: scored on production's rows after they are answered, never returned; "
    "canary: answers a share of customers itself.",
)
@click.option(
    "--percent",
    type=float,
    default=None,
    help="Share of rows (shadow) or customers (canary), sticky by customer id.  "
    "[default: 100 for shadow, 10 for canary]",
)
@click.option(
    "--force",
    is_flag=True,
    help="Set a canary whose held-out F1 fails the gate (needs --reason); never a version that "
    "fails the smoke test or reads inputs production's clients do not send.",
)
@options.reason
@options.actor
@command
def challenger_set(
    version: int, mode: str, percent: float | None, force: bool, reason: str, actor: str | None
) -> tuple[dict[str, Any], str]:
    """Put VERSION in the challenger slot.

    It must load safely and predict (smoke test), accept every input production accepts and
    read only inputs production's clients send; a canary must also pass the held-out gate,
    because it answers customers. The champion comparison is what the live traffic is for, so
    it is not checked here. Every API worker and replica follows the slot within a poll.
    Recorded in the ledger (`churnops history`) before the alias moves.
    """
    from churnops import challenger

    settings = options.mover_settings(actor)
    chosen: Mode = "canary" if mode == "canary" else "shadow"
    result = challenger.set_challenger(settings, version, chosen, percent, force, reason)
    document, text = options.move_output(result)
    state = challenger.status(settings)
    return document | {"slot": state.to_dict()}, text + "\n" + state.render()


@challenger_group.command(name="clear")
@options.reason
@options.actor
@command
def challenger_clear(reason: str, actor: str | None) -> tuple[dict[str, Any], str]:
    """Empty the challenger slot: the API stops shadowing or routing a canary within a poll.
    Recorded in the ledger. An empty slot changes nothing (exit 0)."""
    from churnops import challenger

    result = challenger.clear(options.mover_settings(actor), reason)
    move = result.move
    if not result.changed:
        return {"changed": False}, f"{move.model_name}@{move.alias} is not set; nothing changed"
    return {
        "changed": True,
        "from_version": move.from_version,
        "seq": result.entry.seq if result.entry else None,
    }, move.describe()


@challenger_group.command(name="status")
@command
def challenger_status() -> tuple[dict[str, Any], str]:
    """Show the challenger slot: version, mode, share, and since when."""
    from churnops import challenger

    state = challenger.status(read_settings())
    return state.to_dict(), state.render()
