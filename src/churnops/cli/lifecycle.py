"""The life-cycle commands: status, train, promote, rollback, gate, history."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from churnops.cli import options
from churnops.cli.command import command, input_file, moment, read_settings
from churnops.config import MODEL_KINDS, TARGET, ModelKind
from churnops.errors import GateRefusedError, TrackingUnavailableError
from churnops.gate import DEFAULT_GATE_F1


class SearchBudget(click.ParamType):
    """A search's time budget (60s, 5m, 1h) as seconds, or None for auto."""

    name = "budget"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or isinstance(value, float):
            return value
        from churnops.search import parse_budget

        try:
            return parse_budget(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@click.command()
@command
def status() -> tuple[dict[str, Any], str]:
    """Show the tracking URI, whether it answers, and every version of the model."""
    from churnops import lifecycle

    settings = read_settings()
    try:
        st = lifecycle.status(settings)
    except TrackingUnavailableError:
        click.echo(f"tracking URI: {settings.tracking_uri} (not answering)", err=True)
        raise
    return st.to_dict(), st.render()


@click.command()
@click.option(
    "--data",
    "data_file",
    type=click.Path(path_type=Path),
    help="Training CSV; without it, the built-in synthetic data set.",
)
@click.option("--target", default=TARGET, show_default=True, help="Target column of --data.")
@click.option(
    "--positive-label",
    help="The target value that means churned, when the labels are not yes/no, true/false, 1/0.",
)
@click.option(
    "--version",
    "version_label",
    default=None,
    help="Free-form label of this training, logged as the run's name and `version` param "
    "[default: the registered version's number, e.g. v3].",
)
@click.option("--seed", default=42, show_default=True, help="Seed of the split and the model.")
@click.option(
    "--gate-f1",
    default=DEFAULT_GATE_F1,
    show_default=True,
    type=click.FloatRange(0.0, 1.0),
    help="Held-out F1 a version needs to pass the gate.",
)
@click.option(
    "--model",
    "kind",
    type=click.Choice(MODEL_KINDS),
    default=None,
    help="logreg (the course's logistic regression), hgb (histogram gradient boosting) or auto "
    "(whichever has the better cross-validated F1 on the training split). "
    "[default: logreg on the built-in data, auto with --data or --search]",
)
@click.option(
    "--search",
    "search_budget",
    type=SearchBudget(),
    default="auto",
    show_default=True,
    metavar="BUDGET",
    help="Time budget such as 60s or 5m: search model families (logistic regression, gradient "
    "boosting, random forest; only --model's if given) and their hyper-parameters by "
    "cross-validation on the training split, the defaults first, so the model kept is never "
    "worse on cross-validation than --model auto's. auto: no search, the fast default.",
)
@click.option(
    "--from-store",
    is_flag=True,
    help="Train on what production served instead of --data: the prediction store's production "
    "rows in --since/--until whose churn outcomes are mature, one per customer per outcome "
    "(the latest prediction before it), with the serving version's inputs; the newest quarter "
    "is held out (out of time). Refused, with the date more outcomes mature, below 50 rows.",
)
@click.option("--since", default=None, help="With --from-store: start of the range (ISO 8601).")
@click.option(
    "--until", default=None, help="With --from-store: end of the range (ISO 8601).  [default: now]"
)
@command
def train(
    data_file: Path | None,
    target: str,
    positive_label: str | None,
    version_label: str | None,
    seed: int,
    gate_f1: float,
    kind: ModelKind | None,
    search_budget: float | None,
    from_store: bool,
    since: str | None,
    until: str | None,
) -> tuple[dict[str, Any], str]:
    """Train a churn model, log the run and register a new version of the model.

    The decision threshold is tuned for F1 by cross-validation on the training split; the
    held-out metrics are measured at it and the API predicts with it. Evidence (confusion
    matrix, ROC and precision-recall curves, permutation importance, data report) is logged
    under evidence/ in the run.

    Exits 0 once the version is registered, whether or not it passed the gate.
    """
    if from_store and data_file is not None:
        raise click.UsageError("give --data or --from-store, not both")
    if not from_store and (since or until):
        raise click.UsageError("--since and --until go with --from-store")
    settings = read_settings()
    if from_store:
        from churnops import from_store as learning

        report = learning.train(
            settings,
            since=moment(since, "--since") if since else None,
            until=moment(until, "--until") if until else None,
            seed=seed,
            gate_f1=gate_f1,
            version_label=version_label,
            kind=kind,
            search_budget=search_budget,
        )
        return report.to_dict(), report.render(settings.model_name)
    input_file(data_file)
    from churnops import lifecycle

    report = lifecycle.train(
        settings,
        data_file=data_file,
        version_label=version_label,
        seed=seed,
        gate_f1=gate_f1,
        target=target,
        positive_label=positive_label,
        kind=kind,
        search_budget=search_budget,
    )
    return report.to_dict(), report.render(settings.model_name)


@click.command()
@click.option(
    "--version",
    "version",
    type=click.IntRange(min=1),
    help="Version to promote (default: the latest).",
)
@options.force
@options.schema_change
@options.reason
@options.actor
@options.tolerance
@command
def promote(
    version: int | None,
    force: bool,
    allow_schema_change: bool,
    reason: str,
    actor: str | None,
    tolerance: float,
) -> tuple[dict[str, Any], str]:
    """Point the production alias at a version, if it passes the promotion gate.

    The gate checks the version's held-out F1 (>= its gate_f1, and never below the policy floor
    CHURNOPS_GATE_F1_MIN, and above the trivial baseline), champion vs challenger (not worse than
    the current production version by more than --tolerance F1, both scored on the candidate's
    held-out split), signature compatibility (accepts every input the current version accepts)
    and a smoke test (loads safely from the registry and predicts on its input example).
    --force overrides the quality criteria, never the smoke test; --allow-schema-change only a
    switch to another table (see its help). When the champion cannot be
    compared for now, nothing changes and the exit code is 2 (retry). The version already in
    production changes nothing (exit 0, no ledger entry). Every move is recorded in the ledger
    (`churnops history`), its intent before the alias moves.
    """
    from churnops import lifecycle

    return options.move_output(
        lifecycle.promote(
            options.mover_settings(actor), version, force, reason, tolerance, allow_schema_change
        )
    )


@click.command()
@click.argument("version", type=click.IntRange(min=1), required=False)
@options.force
@options.schema_change
@options.reason
@options.actor
@command
def rollback(
    version: int | None, force: bool, allow_schema_change: bool, reason: str, actor: str | None
) -> tuple[dict[str, Any], str]:
    """Undo the last production change, or move production to VERSION.

    Without VERSION, production returns to the version that held it before the current one was
    put there, per the ledger; repeated rollbacks keep walking back and never return to the
    version just left. Where the ledger has nothing earlier, the nearest lower-numbered version
    that passed the gate is used. A rollback always moves production to a different version, or
    exits 1 changing nothing. VERSION must be older than production (a newer one is a promotion:
    use `churnops promote --version N`); production's own version changes nothing. The target
    goes through the gate (without the champion comparison).
    """
    from churnops import lifecycle

    return options.move_output(
        lifecycle.rollback(
            options.mover_settings(actor), version, force, reason, allow_schema_change
        )
    )


@click.command(name="gate")
@click.argument("version", type=click.IntRange(min=1))
@options.tolerance
@command
def gate_command(version: int, tolerance: float) -> tuple[dict[str, Any], str]:
    """Print the promotion gate report for VERSION without promoting it (exit 1 if it fails)."""
    from churnops import lifecycle
    from churnops.registry import connection, versions

    settings = read_settings()
    connection.ping(settings)
    report = lifecycle.gate_report(settings, version, versions.alias_version(settings), tolerance)
    if not report.passed:
        failed = ", ".join(c.name for c in report.failures)
        raise GateRefusedError(f"version {version} would be refused ({failed})", report)
    return report.to_dict(), report.render()


@click.command()
@command
def history() -> tuple[Any, str]:
    """Every move of the production alias, newest first: time, actor, action, versions, reason.

    Reads only. Entries a crashed command left are shown as `pending` (the next promote or
    rollback finishes them) or `aborted`; a move made outside churnops (MLflow UI, raw client)
    is shown as an `unrecorded` external entry until the next promote or rollback records it.
    """
    from churnops import lifecycle

    settings = read_settings()
    entries = lifecycle.history(settings)
    if not entries:
        return [], "no alias moves yet: run `churnops promote`"
    width = max(9, *(len(e.action) for e in entries))
    lines = [
        f"{'#':>4}  {'time (UTC)':<25} {'actor':<26} {'action':<{width}} {'move':<12} "
        f"{'state':<10} reason"
    ]
    for e in entries:
        before = f"v{e.from_version}" if e.from_version is not None else "none"
        after = f"v{e.to_version}" if e.to_version is not None else "none"
        alias = "" if e.alias == settings.alias else f"[{e.alias}] "
        flag = " [override]" if e.override else ""
        actor = e.actor + (f" for {e.on_behalf_of}" if e.on_behalf_of else "")
        lines.append(
            f"{e.seq:>4}  {e.time:<25} {actor[:26]:<26} {e.action:<{width}} "
            f"{before + ' -> ' + after:<12} {e.state:<10} {alias}{e.reason}{flag}"
        )
    return [e.to_dict() for e in entries], "\n".join(lines)
