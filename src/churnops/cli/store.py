"""`churnops store`: upkeep of the prediction store (compaction)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click

from churnops.cli.command import command, read_settings

_DAY = click.DateTime(formats=["%Y-%m-%d"])


@click.group(name="store")
def store_group() -> None:
    """Upkeep of the prediction store (CHURNOPS_PREDICTION_STORE)."""


@store_group.command(name="compact")
@click.option(
    "--day",
    "days",
    type=_DAY,
    metavar="YYYY-MM-DD",
    multiple=True,
    help="Compact this day (YYYY-MM-DD, UTC; repeat for several), today included.  "
    "[default: every day before --before]",
)
@click.option(
    "--before",
    type=_DAY,
    metavar="YYYY-MM-DD",
    default=None,
    help="Compact every day before this one (YYYY-MM-DD).  [default: today, UTC: the closed days]",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    default=None,
    help="Seconds a merged file must have been visible before the files it replaces are "
    "deleted (a later run deletes those still waiting).  "
    "[default: CHURNOPS_STORE_COMPACT_GRACE_SECONDS, 900]",
)
@command
def compact(
    days: tuple[datetime, ...], before: datetime | None, grace: float | None
) -> tuple[dict[str, Any], str]:
    """Merge each day partition's small prediction files (one per API flush) into few large
    ones sorted by time, which `monitor` and query engines read much faster.

    Safe while the API writes and while `monitor` reads: every row stays readable exactly once
    at every moment, and a run that dies is finished by the next. The merged files' sources
    are deleted once the merged file has been visible for --grace seconds, on this run or a
    later one. Run it from one place at a time (e.g. a daily cron or the Kubernetes CronJob);
    on a local store a second run is refused.
    """
    if days and before is not None:
        raise click.UsageError("give --day or --before, not both")
    from churnops.monitoring import compaction, store

    settings = read_settings()
    report = compaction.compact(
        store.settings_store(settings),
        days=[d.date() for d in days] or None,
        before=before.date() if before is not None else None,
        grace_seconds=settings.store_compact_grace_seconds if grace is None else grace,
    )
    return report.to_dict(), report.render()
