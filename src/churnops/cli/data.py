"""`churnops data`: the built-in synthetic churn data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from churnops.cli.command import command, read_settings
from churnops.config import MIN_LABELLED_ROWS, TARGET


@click.group(name="data")
def data_group() -> None:
    """Built-in synthetic churn data."""


@data_group.command()
@click.option("--rows", default=5000, show_default=True, type=click.IntRange(min=MIN_LABELLED_ROWS))
@click.option("--seed", default=42, show_default=True)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="File to write: CSV, or Parquet when it ends in .parquet "
    "(default: <data dir>/data/churn.csv).",
)
@command
def generate(rows: int, seed: int, out: Path | None) -> tuple[dict[str, Any], str]:
    """Generate the seeded synthetic churn data set (course schema, ~25% churners)."""
    path = out or read_settings().default_data_file
    from churnops import data

    frame = data.write_generated(path, rows=rows, seed=seed)
    rate = float(frame[TARGET].mean())
    return (
        {"path": str(path), "rows": len(frame), "positive_rate": rate},
        f"wrote {len(frame)} rows to {path} (churn rate {rate:.1%})",
    )
