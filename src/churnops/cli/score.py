"""`churnops score`: a customer table scored into a file, every row kept in the store."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from churnops.cli.command import command, input_file, moment, read_settings
from churnops.config import DEFAULT_CHUNK_ROWS


@click.command()
# NB: text, not click.Path(dir_okay=False): with --engine spark both may be folders or URLs
# (s3a://, hdfs://); the local engine checks its paths itself.
@click.argument("source")
@click.argument("output")
@click.option(
    "--engine",
    type=click.Choice(["local", "spark"]),
    default="local",
    show_default=True,
    help="local: this process scores the file SOURCE into the file OUTPUT. spark: Spark "
    "(CHURNOPS_SPARK_MASTER, CHURNOPS_SPARK_CONF) scores the Parquet or CSV dataset SOURCE "
    "(a file or folder, local, hdfs:// or s3a://) into the folder OUTPUT: OUTPUT/predictions "
    "and OUTPUT/rejects, Parquet datasets; needs pip install 'churnops[spark]' and Java 17.",
)
@click.option(
    "--version",
    "version",
    type=click.IntRange(min=1),
    default=None,
    help="Score with this version instead of the one the alias points at.",
)
@click.option(
    "--alias",
    default=None,
    help="Score with the version this alias points at.  [default: CHURNOPS_ALIAS, production]",
)
@click.option(
    "--id-column",
    default=None,
    help="Input column copied to every output row.  [default: the identifier column training "
    "dropped, if the input has it]",
)
@click.option(
    "--chunk-rows",
    type=click.IntRange(min=1),
    default=DEFAULT_CHUNK_ROWS,
    show_default=True,
    help="Rows read, scored and written at a time (bounds memory); with --engine spark, the "
    "rows of each Arrow batch a Spark worker scores.",
)
@click.option(
    "--as-of",
    "as_of",
    default=None,
    help="ISO 8601 time the table's data describes (a past snapshot), recorded with the "
    "stored predictions.  [default: now]",
)
@command
def score(
    source: str,
    output: str,
    engine: str,
    version: int | None,
    alias: str | None,
    id_column: str | None,
    chunk_rows: int,
    as_of: str | None,
) -> tuple[dict[str, Any], str]:
    """Score a customer table (CSV or Parquet) into OUTPUT.

    OUTPUT gets one row per scored customer: the id column (if any), probability, prediction
    (at the version's tuned threshold) and model_version. Rows that cannot be scored (a missing
    required value, text where a number belongs) go to OUTPUT's rejects file (scores.csv ->
    scores.rejects.csv) with the reason and their row number, so every input row is in exactly
    one of the two files. Columns the model does not use, the target included, are ignored.
    Both files appear only once the whole table is scored. Every scored row is also kept in
    the prediction store with its prediction_id, for `churnops labels add` and `monitor`.

    With --engine spark, SOURCE is a Parquet or CSV dataset and OUTPUT a folder that gets two
    Parquet datasets: OUTPUT/predictions (the columns above) and OUTPUT/rejects (id column,
    reason, file, row, the model's columns as text). Both appear only once both are complete,
    and the scored rows go to the prediction store after that.
    """
    if version is not None and alias is not None:
        raise click.UsageError("give --version or --alias, not both")
    if engine == "local":
        _local_paths(Path(source), Path(output))
    event_time = moment(as_of, "--as-of").timestamp() if as_of else None
    if event_time is not None and event_time < 0:
        # NB: the store partitions rows by their date; the API refuses the same times.
        raise click.BadParameter("must be 1970-01-01 or later", param_hint="--as-of")
    settings = read_settings()
    if alias is not None:
        settings = settings.model_copy(update={"alias": alias})
    if engine == "spark":
        from churnops import spark_scoring

        report = spark_scoring.score_dataset(
            settings,
            source,
            output,
            version=version,
            id_column=id_column,
            batch_rows=chunk_rows,
            event_time=event_time,
        )
        return report.to_dict(), report.render(settings.model_name)
    from churnops import scoring

    total = scoring.count_rows(Path(source)) if Path(source).is_file() else None
    with click.progressbar(
        length=total or 0, label="scoring", file=sys.stderr, show_pos=True
    ) as bar:
        report = scoring.score_file(
            settings,
            Path(source),
            Path(output),
            version=version,
            id_column=id_column,
            chunk_rows=chunk_rows,
            on_chunk=bar.update,
            event_time=event_time,
        )
    return report.to_dict(), report.render(settings.model_name)


def _local_paths(source: Path, output: Path) -> None:
    """The local engine's paths: an input file that exists, an output that is no folder."""
    input_file(source)
    if output.is_dir():
        raise click.BadParameter(f"{output} is a folder; name the output file", param_hint="OUTPUT")
