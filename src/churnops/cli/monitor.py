"""The monitoring loop's commands: labels add, monitor, simulate, compare."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from churnops.cli.command import announce, command, input_file, moment, read_settings
from churnops.config import TARGET


@click.group(name="labels")
def labels_group() -> None:
    """Churn outcomes that arrive after the predictions (late labels)."""


@labels_group.command(name="add")
@click.argument("source", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--target",
    default=TARGET,
    show_default=True,
    help="The outcome column, named like training's --target (yes/no, true/false, 1/0, "
    "churned/retained ...).",
)
@click.option(
    "--id-column",
    default=None,
    help="The customer identifier column when it is not called customer_id.",
)
@command
def labels_add(source: Path, target: str, id_column: str | None) -> tuple[dict[str, Any], str]:
    """Add churn outcomes from SOURCE (CSV or Parquet) to the prediction store.

    Outcomes are keyed by a prediction_id column (as the API and `score` return it; final as
    given), or by customer_id plus a time column (ISO 8601: when the outcome was observed). A
    customer's outcome applies to that customer's predictions made within the churn horizon
    (CHURNOPS_CHURN_HORIZON_DAYS, 30) before it; "retained" counts only once the horizon after
    the prediction has passed. Adding the same file again changes nothing; when one key has
    conflicting outcomes the latest added wins. Outcomes no stored prediction matches are
    counted, not refused. A file with a problem is refused whole.
    """
    input_file(source)
    from churnops.monitoring import labels, store

    settings = read_settings()
    where = store.settings_store(settings)
    report = labels.add(where, settings.model_name, source, target, id_column, settings)
    return report.to_dict(), report.render()


def _window(text: str) -> timedelta:
    units = {"d": "days", "h": "hours", "m": "minutes"}
    number, unit = text[:-1], text[-1:].lower()
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in units or value <= 0:
        raise click.BadParameter(
            f"{text!r} is not a window length: write e.g. 1d, 12h or 30m", param_hint="--window"
        )
    return timedelta(**{units[unit]: value})


ENGINE_OPTION = click.option(
    "--engine",
    type=click.Choice(["duckdb", "spark", "pandas"]),
    default=None,
    help="The query engine that reads the prediction store: duckdb (embedded, memory bounded "
    "by the summaries), spark (CHURNOPS_SPARK_MASTER) or pandas (every row in memory).  "
    "[default: CHURNOPS_ENGINE, else duckdb]",
)


@click.command()
@click.option("--since", default=None, help="Start of the range (ISO 8601).  [default: all]")
@click.option("--until", default=None, help="End of the range (ISO 8601).  [default: now]")
@click.option("--window", default="1d", show_default=True, help="Window length: 1d, 12h, 30m.")
@click.option(
    "--auto-rollback",
    is_flag=True,
    help="When the advice is to roll back, do it (through the gate and the ledger, as "
    "churnops-monitor, with the numbers as the reason).",
)
@click.option("--no-log", is_flag=True, help="Do not log the run to MLflow or tag versions.")
@ENGINE_OPTION
@command
def monitor(
    since: str | None,
    until: str | None,
    window: str,
    auto_rollback: bool,
    no_log: bool,
    engine: str | None,
) -> None:
    """How each version is really doing: realised quality from the late outcomes (with 95%
    intervals, beside the gate's F1), estimated quality before outcomes (CBPE), drift of every
    input column and of the predicted probability against the version's training reference,
    alerts and rollback advice.

    Exits 0 when healthy and 3 when any alert fires (for cron, CI, Airflow). Each run is logged
    to the MLflow experiment <model>-monitoring with charts and an HTML report.
    """
    from churnops.monitoring import monitor as monitoring

    settings = read_settings()
    options = monitoring.Options(
        since=moment(since, "--since") if since else None,
        until=moment(until, "--until") if until else None,
        window=_window(window),
        auto_rollback=auto_rollback,
        log_to_mlflow=not no_log,
        engine=engine,
    )
    result = monitoring.run(settings, options)
    announce(result.to_dict(), result.render())
    if not result.healthy:
        sys.exit(3)


@click.command()
@click.option(
    "--api",
    help="The API.  [default: CHURNOPS_API_URL, else http://127.0.0.1:8000]",
)
@click.option("--days", default=60, show_default=True, type=click.IntRange(1, 400))
@click.option("--rows-per-day", default=500, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--shift-day", type=click.IntRange(min=0), help="Covariate shift from this day.")
@click.option("--concept-day", type=click.IntRange(min=0), help="Concept drift from this day.")
@click.option(
    "--strength", default=1.0, show_default=True, type=click.FloatRange(0, 1), help="Of drift."
)
@click.option(
    "--ending-days-ago",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="The simulated days end this many days ago (replay an earlier period).",
)
@click.option("--seed", default=7, show_default=True)
@click.option(
    "--labels-out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where the outcome file goes.  [default: <data dir>/data/outcomes.csv]",
)
@click.option(
    "--add-labels/--no-add-labels",
    default=True,
    show_default=True,
    help="Add the outcomes to the store right away (`churnops labels add`).",
)
@command
def simulate(
    api: str | None,
    days: int,
    rows_per_day: int,
    shift_day: int | None,
    concept_day: int | None,
    strength: float,
    ending_days_ago: float,
    seed: int,
    labels_out: Path | None,
    add_labels: bool,
) -> tuple[dict[str, Any], str]:
    """Send DAYS of simulated customers to the running API (dated in the past with
    X-Event-Time), with optional covariate shift and concept drift, and write the churn outcomes
    known by now; then `churnops monitor` shows the whole loop."""
    from churnops.monitoring import labels, store
    from churnops.monitoring import simulate as simulation

    settings = read_settings()
    api = api or settings.api_url
    out = labels_out or settings.data_dir / "data" / "outcomes.csv"
    token = settings.api_token.get_secret_value() if settings.api_token else None
    report = simulation.simulate(
        api,
        out,
        days=days,
        rows_per_day=rows_per_day,
        shift_day=shift_day,
        concept_day=concept_day,
        strength=strength,
        horizon_days=settings.churn_horizon_days,
        seed=seed,
        token=token,
        end=datetime.now(UTC) - timedelta(days=ending_days_ago),
    )
    document: dict[str, Any] = report.to_dict()
    text = (
        f"sent {report.rows} customers over {report.days} days ({report.requests} requests, "
        f"{report.start} to {report.end}) to {api}, ids tagged {report.run}- (a run over the "
        "same days adds its customers beside these: the store holds both)\n"
        f"wrote {report.outcomes} outcomes known by now ({report.churned} churned) to "
        f"{report.labels_file}"
    )
    if add_labels:
        added = labels.add(
            store.settings_store(settings), settings.model_name, out, TARGET, settings=settings
        )
        document["labels"] = added.to_dict()
        text += f"\nadded them to the store ({added.unknown} not matched yet)"
    text += (
        f"\nrows reach the store within {settings.store_flush_seconds:g} s; "
        "then run `churnops monitor`"
    )
    return document, text


@click.command()
@click.option(
    "--version",
    "version",
    type=click.IntRange(min=1),
    default=None,
    help="The challenger version to compare.  [default: the one in the slot]",
)
@click.option("--until", default=None, help="Only rows served before this (ISO 8601).")
@click.option("--no-log", is_flag=True, help="Do not log the comparison to MLflow.")
@ENGINE_OPTION
@command
def compare(
    version: int | None, until: str | None, no_log: bool, engine: str | None
) -> tuple[dict[str, Any], str]:
    """Compare the challenger with production on the same live customers.

    Before outcomes: how often their labels agree, the rank correlation of their probabilities,
    their predicted-churn shares. Once outcomes are added (`churnops labels add`): on shadowed
    rows, the paired F1 difference with a bootstrap interval, McNemar's test and DeLong's test
    of the ROC AUC difference; on canary rows, the unpaired equivalents. The verdict
    (better / worse / no evidence yet) rests on the F1 difference's 95% interval, with the
    number of labelled rows that would make the difference decisive. Logged to the MLflow
    experiment <model>-monitoring with a chart.
    """
    from churnops.monitoring import compare as comparing

    result = comparing.compare(
        read_settings(),
        version,
        until=moment(until, "--until") if until else None,
        log_to_mlflow=not no_log,
        engine=engine,
    )
    return result.to_dict(), result.render()
