"""Options and output shared by the commands that move an alias (promote, rollback, the
challenger slot): --force, --reason, --actor, --tolerance, --allow-schema-change."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from churnops.cli.command import read_settings
from churnops.config import Settings
from churnops.gate import DEFAULT_TOLERANCE

if TYPE_CHECKING:
    from churnops import lifecycle


def move_output(result: lifecycle.MoveResult) -> tuple[dict[str, Any], str]:
    """A move's JSON document and text: the gate report and the move, or "nothing changed"."""
    move, entry, report = result.move, result.entry, result.report
    if entry is None or report is None:
        document: dict[str, Any] = {
            "from_version": move.from_version,
            "to_version": move.to_version,
            "changed": False,
        }
        text = (
            f"{move.model_name}@{move.alias} is already v{move.to_version}; nothing changed "
            "(no ledger entry)"
        )
        return document, text
    document = {
        "from_version": move.from_version,
        "to_version": move.to_version,
        "changed": True,
        "action": entry.action,
        "override": entry.override,
        "seq": entry.seq,
        "gate": report.to_dict(),
    }
    text = report.render() + "\n" + move.describe()
    if entry.override:
        text += f"  (gate overridden: {entry.reason})"
    return document, text


def mover_settings(actor: str | None) -> Settings:
    """The settings, with --actor as the one recorded in the ledger when given."""
    found = read_settings()
    return found.model_copy(update={"actor": actor}) if actor else found


force = click.option(
    "--force",
    is_flag=True,
    help="Move even if a gate criterion fails (needs --reason); recorded as an "
    "override in the ledger.",
)
reason = click.option("--reason", default="", help="Why this move; recorded in the ledger.")
actor = click.option(
    "--actor",
    help="Who is moving the alias (default: CHURNOPS_ACTOR or the "
    "OS user); recorded in the ledger.",
)


tolerance = click.option(
    "--tolerance",
    default=DEFAULT_TOLERANCE,
    show_default=True,
    type=click.FloatRange(0.0, 1.0),
    help="How much lower than the champion's F1 the candidate's may be.",
)


schema_change = click.option(
    "--allow-schema-change",
    is_flag=True,
    help="Let a version that reads another table (other columns) take production: overrides "
    "only the signature and a champion that cannot score its rows, never the F1 gate or the "
    "smoke test; needs --reason, recorded in the ledger as an override.",
)
