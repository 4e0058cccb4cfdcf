"""`churnops reproduce`: re-train a run from what it recorded."""

from __future__ import annotations

import sys

import click

from churnops.cli.command import announce, command, read_settings
from churnops.errors import DataError


@click.command()
@click.argument("run_id", required=False)
@click.option(
    "--version",
    "version",
    type=click.IntRange(min=1),
    help="The version whose training run to reproduce, instead of RUN_ID.",
)
@command
def reproduce(run_id: str | None, version: int | None) -> None:
    """Re-train RUN_ID (or --version N's run) from what it recorded; say whether it comes out
    identical.

    Uses the run's own copy of its table (kept when under 20 MB; the built-in data is re-made
    from the seed), seed, gate, model kind and target, and compares every held-out metric and
    the held-out probabilities exactly. Warns when a library version differs from the run's.
    Exit 0 when identical, 1 when anything differs. `churnops status --json` gives each version's
    run id; so does the version's description in the MLflow UI.
    """
    if (run_id is None) == (version is None):
        raise click.UsageError("give RUN_ID or --version N (one of them)")
    from churnops import registry
    from churnops import reproduce as reproducing

    settings = read_settings()
    if run_id is None:
        assert version is not None
        run_id = registry.get_version(settings, version).run_id
        if run_id is None:
            raise DataError(f"version {version} has no training run to reproduce")
    found = reproducing.reproduce(settings, run_id)
    announce(found.to_dict(), found.render())
    if not found.identical:
        sys.exit(1)
