"""The `churnops` command line: a thin layer over the library. Each command calls one library
function and prints its result, as text or, with --json, as exactly one JSON document on stdout.
Expected failures print one line on stderr and exit non-zero (2 when the tracking server is down).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

import click
from pydantic import ValidationError

from churnops.config import (
    DEFAULT_CHUNK_ROWS,
    LOOPBACK_HOSTS,
    MIN_LABELLED_ROWS,
    MODEL_KINDS,
    TARGET,
    ModelKind,
    Settings,
    apply_mlflow_client_limits,
)
from churnops.errors import (
    ChurnopsError,
    ConfigurationError,
    DataError,
    GateRefusedError,
    ServerStartError,
    TrackingUnavailableError,
)
from churnops.gate import DEFAULT_GATE_F1, DEFAULT_TOLERANCE, GateReport

if TYPE_CHECKING:
    from churnops import lifecycle, tracking_server
    from churnops.serving.routing import Mode

F = TypeVar("F", bound=Callable[..., Any])


def _settings(data_dir: Path | None = None) -> Settings:
    try:
        settings = Settings() if data_dir is None else Settings(data_dir=data_dir)
    except ValidationError as exc:
        raise ConfigurationError(f"invalid configuration: {_without_values(exc)}") from None
    apply_mlflow_client_limits(settings)
    return settings


def _without_values(exc: ValidationError) -> str:
    """Each problem of a configuration, without the value given: it may be a secret."""
    return "; ".join(
        (f"{e['loc'][0]}: " if e["loc"] else "") + str(e["msg"]).removeprefix("Value error, ")
        for e in exc.errors()
    )


def _input_file(path: Path | None) -> None:
    """Refuse a missing input at once, before MLflow and scikit-learn are imported (~2 s)."""
    if path is not None and not path.is_file():
        if path.is_dir():
            what = "is a folder"
        elif path.exists():
            # NB: a FIFO, socket or device: reading one may block for ever or never end.
            what = "is not a regular file (a pipe, socket or device); save the table to a file"
        else:
            what = "does not exist"
        raise DataError(f"data file {path} {what}")


def _emit(as_json: bool, document: dict[str, Any], text: str) -> None:
    if as_json:
        click.echo(json.dumps(document, default=str))
    else:
        click.echo(text)


def command(func: F) -> F:
    """Add --json, keep MLflow's stdout lines off stdout, turn ChurnopsError into exit codes."""

    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
    @functools.wraps(func)
    def wrapper(*args: Any, as_json: bool, **kwargs: Any) -> Any:
        from churnops.observability import configure_logging

        configure_logging(os.environ.get(LOG_FORMAT_ENV, "auto"))
        # NB: MLflow's "🏃 View run ..." lines: churnops prints the run id itself.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        meta = click.get_current_context().meta
        meta["churnops.json"], meta["churnops.stdout"] = as_json, sys.stdout
        try:
            # NB: MLflow writes "View run ..." to stdout; with --json stdout must hold JSON alone.
            with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
                result = _refusals_as_errors(func, *args, **kwargs)
        except ChurnopsError as exc:
            report = getattr(exc, "report", None)
            if as_json:
                document = {"error": str(exc), "exit_code": exc.exit_code}
                if isinstance(report, GateReport):
                    document["gate"] = report.to_dict()
                click.echo(json.dumps(document))
            elif isinstance(report, GateReport):
                click.echo(report.render(), err=True)
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        if result is not None:
            document, text = result
            _emit(as_json, document, text)

    return wrapper  # type: ignore[return-value]


def _refusals_as_errors(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``func``; an authenticating server's 401/403 anywhere becomes a one-line error."""
    try:
        return func(*args, **kwargs)
    except Exception as exc:
        # NB: MLflow is looked up, not imported: a command that never loaded it (`churnops
        # server` is one) cannot have raised its exception, and importing it costs ~150 MiB.
        mlflow_errors = sys.modules.get("mlflow.exceptions")
        if mlflow_errors is None or not isinstance(exc, mlflow_errors.MlflowException):
            raise
        from churnops import registry

        refused = registry.access_error(Settings(), exc)
        if refused is None:
            raise
        raise refused from None


def _announce(document: dict[str, Any], text: str) -> None:
    """Print on the real stdout, past the --json redirect, at once: a long-running command's
    addresses, or the result of a command that then exits with a code of its own."""
    meta = click.get_current_context().meta
    out = meta["churnops.stdout"]
    out.write((json.dumps(document, default=str) if meta["churnops.json"] else text) + "\n")
    out.flush()


def _stop_on_sigterm() -> None:
    # NB: turn SIGTERM into the same clean shutdown path as Ctrl-C.
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


USAGE_EXIT = 64  # NB: sysexits' EX_USAGE; click's own 2 would read as "server down, retry".


class _Group(click.Group):
    """click's group, with usage errors on exit 64 instead of 2 (which churnops keeps for a
    tracking server that does not answer)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            result = super().main(*args, **kwargs)
        except click.UsageError as exc:
            exc.show()
            sys.exit(USAGE_EXIT)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        # NB: without standalone mode, --help and --version return their exit code.
        sys.exit(result if isinstance(result, int) else 0)


LOG_FORMAT_ENV = "CHURNOPS_LOG_FORMAT"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="churnops")
@click.option(
    "--log-format",
    type=click.Choice(["auto", "text", "json"]),
    default=None,
    help="Log lines on stderr: text in a terminal, JSON otherwise (auto, the default), or "
    "always text or JSON; the API's workers follow it. Also CHURNOPS_LOG_FORMAT.",
)
def main(log_format: str | None) -> None:
    """churnops: train, gate, promote, roll back and serve a churn model on MLflow.

    Every command talks to the tracking server at MLFLOW_TRACKING_URI
    (default http://127.0.0.1:5000). Start one with `churnops server`, or run
    everything at once with `churnops up`.

    Exit codes: 0 done; 1 refused or failed (the message says why); 2 the tracking server
    does not answer (retry); 3 `monitor` raised an alert; 64 a usage error (see --help).
    """
    if log_format is not None:
        # NB: through the environment, so the API's worker processes log the same way.
        os.environ[LOG_FORMAT_ENV] = log_format


@main.command()
@command
def status() -> tuple[dict[str, Any], str]:
    """Show the tracking URI, whether it answers, and every version of the model."""
    from churnops import lifecycle

    settings = _settings()
    try:
        st = lifecycle.status(settings)
    except TrackingUnavailableError:
        click.echo(f"tracking URI: {settings.tracking_uri} (not answering)", err=True)
        raise
    lines = [
        f"tracking URI: {st.tracking_uri} (answering)",
        f"{st.model_name}@{st.alias}: "
        + (f"v{st.production_version}" if st.production_version else "not set"),
    ]
    if not st.versions:
        lines.append("no versions yet: run `churnops train`")
    else:
        # NB: the live column appears once `churnops monitor` has tagged a version.
        live = any("monitor.label_coverage" in v.tags for v in st.versions)
        heading = f"{'live f1 (realised/estimated, coverage)':<46}  " if live else ""
        lines.append(
            f"{'version':>7}  {'created (UTC)':<19}  {'f1':>6}  {'gate':<4}  {heading}aliases"
        )
        for v in st.versions:
            f1 = f"{v.f1:.4f}" if v.f1 is not None else "-"
            cell = f"{_live(v.tags):<46}  " if live else ""
            lines.append(
                f"{v.version:>7}  {v.created:%Y-%m-%d %H:%M:%S}  {f1:>6}  "
                f"{'pass' if v.gate_passed else 'FAIL':<4}  {cell}{','.join(v.aliases)}".rstrip()
            )
    document = {
        "tracking_uri": st.tracking_uri,
        "reachable": True,
        "model_name": st.model_name,
        "alias": st.alias,
        "production_version": st.production_version,
        "versions": [
            {
                "version": v.version,
                "created": v.created.isoformat(),
                "f1": v.f1,
                "gate_passed": v.gate_passed,
                "aliases": list(v.aliases),
                "run_id": v.run_id,
                "monitor": {
                    k.removeprefix("monitor."): val
                    for k, val in v.tags.items()
                    if k.startswith("monitor.")
                },
            }
            for v in st.versions
        ],
    }
    return document, "\n".join(lines)


def _live(tags: dict[str, str]) -> str:
    """A version's F1 over its monitored period from its tags, the figures `churnops monitor`
    printed, with the rows they rest on."""
    if "monitor.label_coverage" not in tags:
        return "-"
    coverage = float(tags["monitor.label_coverage"])
    rows = f" of {tags['monitor.rows']} rows" if "monitor.rows" in tags else ""
    return (
        f"{tags.get('monitor.realised_f1', '-')}/{tags.get('monitor.estimated_f1', '-')}, "
        f"{coverage:.0%}{rows}"
    )


@main.command()
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
    "[default: logreg on the built-in data, auto with --data]",
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
) -> tuple[dict[str, Any], str]:
    """Train a churn model, log the run and register a new version of the model.

    The decision threshold is tuned for F1 by cross-validation on the training split; the
    held-out metrics are measured at it and the API predicts with it. Evidence (confusion
    matrix, ROC and precision-recall curves, permutation importance, data report) is logged
    under evidence/ in the run.

    Exits 0 once the version is registered, whether or not it passed the gate.
    """
    _input_file(data_file)
    from churnops import lifecycle

    settings = _settings()
    report = lifecycle.train(
        settings,
        data_file=data_file,
        version_label=version_label,
        seed=seed,
        gate_f1=gate_f1,
        target=target,
        positive_label=positive_label,
        kind=kind,
    )
    metrics = "  ".join(f"{k}={v:.4f}" for k, v in report.metrics.items())
    chosen = "  ".join(f"{k}={v:.4f}" for k, v in report.cv_f1.items())
    text = (
        f"{report.data_report.render()}\n"
        f"model: {report.model_type} (cross-validated f1 on the training split: {chosen}); "
        f"threshold {report.threshold:.4f}; fitted in {report.fit_seconds:.1f} s\n"
        f"run {report.run_id}\n"
        f"registered {settings.model_name} version {report.version}\n"
        f"held-out metrics: {metrics}\n"
        f"gate: {'PASS' if report.verdict.passed else 'FAIL'} ({report.verdict.reason})\n"
        f"reproduce: churnops reproduce {report.run_id}"
    )
    document = {
        "run_id": report.run_id,
        "version": report.version,
        "metrics": report.metrics,
        "gate_passed": report.verdict.passed,
        "gate_reason": report.verdict.reason,
        "model_type": report.model_type,
        "threshold": report.threshold,
        "cv_f1": report.cv_f1,
        "fit_seconds": report.fit_seconds,
        "data_report": report.data_report.to_dict(),
    }
    return document, text


def _move_output(result: lifecycle.MoveResult) -> tuple[dict[str, Any], str]:
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


def _mover_settings(actor: str | None) -> Settings:
    settings = _settings()
    return settings.model_copy(update={"actor": actor}) if actor else settings


_force = click.option(
    "--force",
    is_flag=True,
    help="Move even if a gate criterion fails (needs --reason); recorded as an "
    "override in the ledger.",
)
_reason = click.option("--reason", default="", help="Why this move; recorded in the ledger.")
_actor = click.option(
    "--actor",
    help="Who is moving the alias (default: CHURNOPS_ACTOR or the "
    "OS user); recorded in the ledger.",
)


_tolerance = click.option(
    "--tolerance",
    default=DEFAULT_TOLERANCE,
    show_default=True,
    type=click.FloatRange(0.0, 1.0),
    help="How much lower than the champion's F1 the candidate's may be.",
)


_schema_change = click.option(
    "--allow-schema-change",
    is_flag=True,
    help="Let a version that reads another table (other columns) take production: overrides "
    "only the signature and a champion that cannot score its rows, never the F1 gate or the "
    "smoke test; needs --reason, recorded in the ledger as an override.",
)


@main.command()
@click.option(
    "--version",
    "version",
    type=click.IntRange(min=1),
    help="Version to promote (default: the latest).",
)
@_force
@_schema_change
@_reason
@_actor
@_tolerance
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

    return _move_output(
        lifecycle.promote(
            _mover_settings(actor), version, force, reason, tolerance, allow_schema_change
        )
    )


@main.command()
@click.argument("version", type=click.IntRange(min=1), required=False)
@_force
@_schema_change
@_reason
@_actor
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

    return _move_output(
        lifecycle.rollback(_mover_settings(actor), version, force, reason, allow_schema_change)
    )


@main.command(name="gate")
@click.argument("version", type=click.IntRange(min=1))
@_tolerance
@command
def gate_command(version: int, tolerance: float) -> tuple[dict[str, Any], str]:
    """Print the promotion gate report for VERSION without promoting it (exit 1 if it fails)."""
    from churnops import lifecycle, registry

    settings = _settings()
    registry.ping(settings)
    report = lifecycle.gate_report(settings, version, registry.alias_version(settings), tolerance)
    if not report.passed:
        failed = ", ".join(c.name for c in report.failures)
        raise GateRefusedError(f"version {version} would be refused ({failed})", report)
    return report.to_dict(), report.render()


@main.command()
@command
def history() -> tuple[Any, str]:
    """Every move of the production alias, newest first: time, actor, action, versions, reason.

    Reads only. Entries a crashed command left are shown as `pending` (the next promote or
    rollback finishes them) or `aborted`; a move made outside churnops (MLflow UI, raw client)
    is shown as an `unrecorded` external entry until the next promote or rollback records it.
    """
    from churnops import lifecycle

    settings = _settings()
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


@main.command()
@click.argument("source", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("output", type=click.Path(path_type=Path, dir_okay=False))
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
    help="Rows read, scored and written at a time (bounds memory).",
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
    source: Path,
    output: Path,
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
    """
    if version is not None and alias is not None:
        raise click.UsageError("give --version or --alias, not both")
    _input_file(source)
    from churnops import scoring

    event_time = _moment(as_of, "--as-of").timestamp() if as_of else None
    if event_time is not None and event_time < 0:
        # NB: the store partitions rows by their date; the API refuses the same times.
        raise click.BadParameter("must be 1970-01-01 or later", param_hint="--as-of")
    settings = _settings()
    if alias is not None:
        settings = settings.model_copy(update={"alias": alias})
    total = scoring.count_rows(source) if source.is_file() else None
    with click.progressbar(
        length=total or 0, label="scoring", file=sys.stderr, show_pos=True
    ) as bar:
        report = scoring.score_file(
            settings,
            source,
            output,
            version=version,
            id_column=id_column,
            chunk_rows=chunk_rows,
            on_chunk=bar.update,
            event_time=event_time,
        )
    text = (
        f"scored {report.rows_scored} of {report.rows_read} rows of {report.source} with "
        f"{settings.model_name} v{report.version} ({report.inference}) in "
        f"{report.seconds:.2f} s: {report.rows_per_second:,.0f} rows/s\n"
        f"output:  {report.output}\n"
        f"rejects: {report.rejects} ({report.rows_rejected} rows)"
    )
    return report.to_dict(), text


def _moment(text: str, option: str) -> datetime:
    """An ISO 8601 option value as an aware time (UTC when no zone is given)."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not an ISO 8601 time, e.g. 2026-12-01 or 2026-12-01T09:30:00Z",
            param_hint=option,
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _redacted(uri: str) -> str:
    """A database URI without its password, for printing."""
    parsed = urlparse(uri)
    if parsed.password:
        return uri.replace(f":{parsed.password}@", ":***@")
    return uri


def _split_tracking_uri(uri: str) -> tuple[str, int] | None:
    parsed = urlparse(uri)
    if parsed.scheme != "http" or parsed.hostname not in ("127.0.0.1", "localhost"):
        return None
    return "127.0.0.1", parsed.port or 80


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--workers",
    default=None,
    type=click.IntRange(min=1),
    help="uvicorn worker processes.  [default: 1 on up to 2 cores, else cores / 2, at most 4]",
)
@click.option(
    "--backend-store-uri",
    default=None,
    help="Database for runs and the registry, e.g. postgresql+psycopg://user:pw@host/db "
    "(CHURNOPS_BACKEND_STORE_URI).  [default: SQLite DATA_DIR/mlflow.db]",
)
@click.option(
    "--artifacts-destination",
    default=None,
    help="Where the server stores artifacts, e.g. s3://bucket/path, with the endpoint and "
    "keys from MLFLOW_S3_ENDPOINT_URL / AWS_* in the server's environment only "
    "(CHURNOPS_ARTIFACTS_DESTINATION).  [default: DATA_DIR/mlflow/artifacts]",
)
@click.option(
    "--auth",
    is_flag=True,
    help="Require users (MLflow's basic-auth app). Needs MLFLOW_AUTH_ADMIN_PASSWORD and "
    "MLFLOW_FLASK_SERVER_SECRET_KEY in the environment; users live in DATA_DIR/auth.",
)
@click.option(
    "--jobs",
    is_flag=True,
    help="Also run MLflow's job runner, for the UI's evaluation, scorer, issue-detection and "
    "prompt-optimization buttons (more processes and memory). Without it those requests get a "
    "501 that says so, and leave nothing behind.",
)
@click.option(
    "--allowed-hosts",
    default=None,
    help="Host names the server answers, comma-separated, `*` patterns allowed (as `mlflow "
    "server`; the loopback names always stay allowed).  [default: loopback names and private "
    "addresses]",
)
@click.option(
    "--cors-allowed-origins",
    default=None,
    help="Origins browsers may call it from, comma-separated (as `mlflow server`; default: "
    "localhost origins).",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Project data folder (default: CHURNOPS_DATA_DIR or the current directory).",
)
@command
def server(
    host: str,
    port: int,
    workers: int | None,
    backend_store_uri: str | None,
    artifacts_destination: str | None,
    auth: bool,
    jobs: bool,
    allowed_hosts: str | None,
    cors_allowed_origins: str | None,
    data_dir: Path | None,
) -> None:
    """Run the tracking server (MLflow's app, launched lean: one process by default, no job
    runner unless --jobs) until Ctrl-C. Artifacts go through the server, so clients need no
    storage access. Webhook secrets are encrypted with a key kept in DATA_DIR (unless
    MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY is set), so they survive restarts."""
    from churnops import tracking_server

    settings = _settings(data_dir)
    if backend_store_uri:
        settings = settings.model_copy(update={"backend_store_uri": backend_store_uri})
    if artifacts_destination:
        settings = settings.model_copy(update={"artifacts_destination": artifacts_destination})
    if host not in LOOPBACK_HOSTS and not auth:
        click.echo(
            f"warning: binding {host} without --auth: anyone who can reach it can read, "
            "register and promote models; bind 127.0.0.1 unless the network is trusted",
            err=True,
        )
    _stop_on_sigterm()
    proc: tracking_server.ServerProcess | None = None
    try:
        proc = tracking_server.start(
            settings,
            host=host,
            port=port,
            workers=workers or tracking_server.default_workers(),
            auth=auth,
            options=tracking_server.ServerOptions(jobs, allowed_hosts, cors_allowed_origins),
        )
        ui = f"http://{host}:{port}"
        _announce(
            {"tracking_uri": ui, "ui": ui},
            f"MLflow UI and tracking server: {ui}\n"
            f"backend: {_redacted(settings.server_backend_store_uri)}\n"
            f"artifacts: {settings.server_artifacts_destination}\nCtrl-C to stop.",
        )
        code = proc.process.wait()
        if code != 0:
            raise ServerStartError(f"the tracking server exited with code {code}")
    except KeyboardInterrupt:
        click.echo("stopping the tracking server", err=True)
    finally:
        if proc is not None:
            proc.stop()


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Worker processes (default: CHURNOPS_WORKERS, or one per core up to 4).",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.05),
    help="Seconds between alias polls (default: CHURNOPS_POLL_INTERVAL or 1).",
)
@click.option(
    "--store/--no-store",
    "store_predictions",
    default=None,
    help="Keep every prediction in the prediction store, CHURNOPS_PREDICTION_STORE "
    "(default: on, under <data dir>/store).",
)
@command
def serve(
    host: str,
    port: int,
    workers: int | None,
    poll_interval: float | None,
    store_predictions: bool | None,
) -> None:
    """Serve models:/churn_model@production over HTTP, following every alias move live.

    Loads each newly aliased version in the background, smoke-tests it, then swaps it in; requests
    never wait for a load. Routes: /predict, /predict/batch, /model, /ready, /health, /metrics,
    /docs.
    """
    from churnops.serving.server import run_api

    overrides = {
        "workers": workers,
        "poll_interval": poll_interval,
        "store_predictions": store_predictions,
    }
    settings = _settings().model_copy(update={k: v for k, v in overrides.items() if v is not None})
    from churnops.tracking_server import ensure_port_free

    # NB: checked before the banner, so a taken port never prints an address that is not ours.
    ensure_port_free(host, port)
    api = f"http://{host}:{port}"
    _announce(
        {"api": api, "docs": f"{api}/docs"},
        f"churnops API: {api}  (docs: {api}/docs), serving {settings.model_uri} "
        f"with {settings.workers} worker(s)",
    )
    run_api(settings, host, port)


@main.command()
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="Port of the prediction API.",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Project data folder (default: CHURNOPS_DATA_DIR or the current directory).",
)
@command
def up(port: int, data_dir: Path | None) -> None:
    """The main job: tracking server, data, a first production model, then the API.

    Starts the tracking server if none answers at the tracking URI (its port is the URI's:
    MLFLOW_TRACKING_URI=http://127.0.0.1:5001 for another), generates the default data if
    missing, trains and promotes a first version if none is in production, then serves the API
    on --port. Both ports are checked before anything starts. Ctrl-C stops everything it started.
    With make: `make up MLFLOW_PORT=5001 API_PORT=8001`.
    """
    from churnops import data, lifecycle, registry, tracking_server
    from churnops.serving.server import run_api

    settings = _settings(data_dir)
    # NB: before anything is started, trained or promoted: a taken port fails at once.
    tracking_server.ensure_port_free("127.0.0.1", port)
    _stop_on_sigterm()
    started: tracking_server.ServerProcess | None = None
    try:
        try:
            registry.ping(settings)
        except TrackingUnavailableError:
            address = _split_tracking_uri(settings.tracking_uri)
            if address is None:
                raise
            tracking_server.ensure_port_free(*address)
            server_log = settings.data_dir / "logs" / "mlflow-server.log"
            click.echo(
                f"starting the tracking server at {settings.tracking_uri} (log: {server_log})",
                err=True,
            )
            started = tracking_server.start(
                settings, host=address[0], port=address[1], log_file=server_log
            )
        data_file = settings.default_data_file
        if not data_file.exists():
            data.write_generated(data_file)
            click.echo(f"generated {data_file}", err=True)
        if registry.alias_version(settings) is None:
            report = lifecycle.train(
                settings,
                data_file=data_file,
                version_label=None,
                seed=42,
                gate_f1=DEFAULT_GATE_F1,
                kind="logreg",
            )
            click.echo(f"trained version {report.version}: f1={report.metrics['f1']:.4f}", err=True)
            moved = lifecycle.promote(settings, report.version, reason="first version (up)")
            click.echo(moved.move.describe(), err=True)
        api = f"http://127.0.0.1:{port}"
        addresses = {"ui": settings.tracking_uri, "api": api, "docs": f"{api}/docs"}
        # NB: a second shell knows neither port: printed as one line to paste, so the
        # commands of the README reach these servers and not the defaults.
        _announce(
            addresses,
            f"MLflow UI: {settings.tracking_uri}\nAPI docs:  {api}/docs\n"
            "In another shell, paste this line first:\n"
            f"  export MLFLOW_TRACKING_URI={settings.tracking_uri} CHURNOPS_API_URL={api}\n"
            "Ctrl-C to stop.",
        )
        run_api(settings, "127.0.0.1", port)
    except KeyboardInterrupt:
        pass
    finally:
        if started is not None:
            click.echo("stopping the tracking server", err=True)
            started.stop()


@main.group(name="data")
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
    path = out or _settings().default_data_file
    from churnops import data

    frame = data.write_generated(path, rows=rows, seed=seed)
    rate = float(frame[TARGET].mean())
    return (
        {"path": str(path), "rows": len(frame), "positive_rate": rate},
        f"wrote {len(frame)} rows to {path} (churn rate {rate:.1%})",
    )


@main.group(name="labels")
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
    _input_file(source)
    from churnops.monitoring import labels

    settings = _settings()
    report = labels.add(settings.store_uri, settings.model_name, source, target, id_column)
    lines = [
        (
            f"added {report.rows} outcomes ({report.churned} churned) keyed by {report.keyed_by} "
            f"from {report.source}"
        )
        if report.added
        else f"{report.source}: these {report.rows} outcomes were already added; nothing changed",
    ]
    if report.conflicts:
        lines.append(
            f"  {report.conflicts} key(s) have conflicting outcomes in this file: the last wins"
        )
    if report.unknown:
        lines.append(
            f"  {report.unknown} {report.keyed_by} value(s) match no stored prediction (yet): "
            "kept, not counted"
        )
    return report.to_dict(), "\n".join(lines)


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


def _monitor_text(report: dict[str, Any]) -> str:
    lines = [
        f"{report['model']}@{report['alias']}: serving v{report['serving_version']}; "
        f"{report['rows']} stored predictions from {report['since'] or 'the start'} to "
        f"{report['until']} ({report['immature']} with an immature 'retained' outcome)",
        f"{'version':>7}  {'rows':>8}  {'labelled':>8}  {'realised f1 (95% interval)':<28}  "
        f"{'estimated f1':>12}  {'gate f1':>7}  drift",
    ]
    if not report["versions"]:
        lines.append(
            f"no stored predictions of {report['model']}@{report['alias']} in this range: serve "
            "traffic (`churnops serve`, `churnops score`), or try `churnops simulate`"
        )
    for v in report["versions"]:
        f1 = v["realised"].get("f1")
        realised_text = (
            f"{f1['value']:.4f} ({f1['low']:.4f}-{f1['high']:.4f})" if f1 else "no outcomes yet"
        )
        estimated = f"{v['estimated']['f1']:.4f}" if v["estimated"] else "-"
        gate_f1 = f"{v['gate_f1']:.4f}" if v["gate_f1"] is not None else "-"
        drifted = [c["column"] for c in v["drift"]["columns"] if c["drifted"]]
        few = all(c["drifted"] is None for c in v["drift"]["columns"])
        drift_text = "too few rows" if few else (", ".join(drifted) if drifted else "none")
        lines.append(
            f"{v['version']:>7}  {v['rows']:>8}  {v['labelled']:>8}  {realised_text:<28}  "
            f"{estimated:>12}  {gate_f1:>7}  {drift_text}"
        )
    horizon = report.get("horizon") or {}
    if horizon.get("note"):
        lines.append(f"NOTE: {horizon['note']}")
    lines += [f"ALERT: {a['message']}" for a in report["alerts"]] or ["no alerts"]
    if report.get("advice"):
        lines.append(f"advice: {report['advice']['message']}")
    if horizon.get("auto_rollback"):
        lines.append(f"auto-rollback {horizon['auto_rollback']}")
    if report.get("rolled_back"):
        moved = report["rolled_back"]
        if moved.get("refused"):
            lines.append(f"auto-rollback refused: {moved['refused']}")
        else:
            lines.append(f"rolled back: v{moved['from_version']} -> v{moved['to_version']}")
    if report.get("run_id"):
        lines.append(f"logged as run {report['run_id']} in {report['model']}-monitoring")
    return "\n".join(lines)


@main.command()
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
@command
def monitor(
    since: str | None, until: str | None, window: str, auto_rollback: bool, no_log: bool
) -> None:
    """How each version is really doing: realised quality from the late outcomes (with 95%
    intervals, beside the gate's F1), estimated quality before outcomes (CBPE), drift of every
    input column and of the predicted probability against the version's training reference,
    alerts and rollback advice.

    Exits 0 when healthy and 3 when any alert fires (for cron, CI, Airflow). Each run is logged
    to the MLflow experiment <model>-monitoring with charts and an HTML report.
    """
    from churnops.monitoring import monitor as monitoring

    settings = _settings()
    options = monitoring.Options(
        since=_moment(since, "--since") if since else None,
        until=_moment(until, "--until") if until else None,
        window=_window(window),
        auto_rollback=auto_rollback,
        log_to_mlflow=not no_log,
    )
    result = monitoring.run(settings, options)
    _announce(result.report, _monitor_text(result.report))
    if not result.healthy:
        sys.exit(3)


@main.command()
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
    from churnops.monitoring import labels
    from churnops.monitoring import simulate as simulation

    settings = _settings()
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
        added = labels.add(settings.store_uri, settings.model_name, out, TARGET)
        document["labels"] = added.to_dict()
        text += f"\nadded them to the store ({added.unknown} not matched yet)"
    text += (
        f"\nrows reach the store within {settings.store_flush_seconds:g} s; "
        "then run `churnops monitor`"
    )
    return document, text


@main.group(name="challenger")
def challenger_group() -> None:
    """A version tried on live traffic beside production: as a shadow (scored on production's
    rows after they are answered, never returned) or a canary (answering a share of customers,
    the same customers every time). Compare it with `churnops compare`."""


def _slot_text(document: dict[str, Any]) -> str:
    found = document["challenger"]
    production = document["production_version"]
    head = f"{document['model']}@{document['alias']}: "
    if found is None:
        return head + "not set (`churnops challenger set N`)"
    share = "rows" if found["mode"] == "shadow" else "customers"
    text = (
        head + f"v{found['version']} as a {found['mode']} on {found['percent']:g}% of {share}, "
        f"beside production v{production}"
    )
    if document.get("since"):
        text += f" (since {document['since']})"
    if found["version"] == production:
        text += "; it is production now, so the API does not use it: clear it or set another"
    return text


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
@_reason
@_actor
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

    settings = _mover_settings(actor)
    chosen: Mode = "canary" if mode == "canary" else "shadow"
    result = challenger.set_challenger(settings, version, chosen, percent, force, reason)
    document, text = _move_output(result)
    state = challenger.status(settings)
    return document | {"slot": state}, text + "\n" + _slot_text(state)


@challenger_group.command(name="clear")
@_reason
@_actor
@command
def challenger_clear(reason: str, actor: str | None) -> tuple[dict[str, Any], str]:
    """Empty the challenger slot: the API stops shadowing or routing a canary within a poll.
    Recorded in the ledger. An empty slot changes nothing (exit 0)."""
    from churnops import challenger

    result = challenger.clear(_mover_settings(actor), reason)
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

    state = challenger.status(_settings())
    return state, _slot_text(state)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _compare_text(report: dict[str, Any]) -> str:
    lines = [
        f"{report['model']}: challenger v{report['challenger']} vs production "
        + ", ".join(f"v{v}" for v in report["production_versions"])
    ]
    shadow = report.get("shadow")
    if shadow:
        lines.append(
            f"shadow: {shadow['rows']} paired rows; labels agree on {shadow['agreement']:.2%}; "
            f"rank correlation {shadow['rank_correlation']}; predicted churn "
            f"{shadow['predicted_churn']['production']:.2%} (production) vs "
            f"{shadow['predicted_churn']['challenger']:.2%}; {shadow['labelled']} labelled"
        )
        if shadow.get("mcnemar"):
            m, auc = shadow["mcnemar"], shadow["roc_auc"]
            lines.append(
                f"  McNemar: right only by production {m['a_only']}, only by the challenger "
                f"{m['b_only']}, p={m['p_value']:.4g}"
            )
            if auc["difference"] is not None:
                lines.append(
                    f"  ROC AUC challenger v{report['challenger']} {auc['b']:.4f} vs production "
                    f"{auc['a']:.4f}: challenger minus production {auc['difference']:+.4f} "
                    f"({auc['low']:+.4f} to {auc['high']:+.4f}), DeLong p={auc['p_value']:.4g}"
                )
    canary = report.get("canary")
    if canary:
        rows, share = canary["rows"], canary["predicted_churn"]
        lines.append(
            f"canary: {rows['challenger']} rows answered by the challenger, {rows['production']} "
            f"by production over the same period; predicted churn {_share(share['challenger'])} "
            f"vs {_share(share['production'])}; labelled {canary['labelled']['challenger']} / "
            f"{canary['labelled']['production']}"
        )
        if canary.get("fisher"):
            lines.append(
                f"  Fisher's exact test on right/wrong: p={canary['fisher']['p_value']:.4g}"
            )
    if report.get("latency"):
        timed = report["latency"]
        lines.append(
            f"latency per single-row call, measured here on {timed['rows']} rows: "
            + "; ".join(
                f"{name} ({t['engine']}) p50 {t['p50_ms']:.3f} ms, p99 {t['p99_ms']:.3f} ms"
                for name, t in timed["versions"].items()
            )
        )
    verdict = report["verdict"]
    lines.append(f"verdict: {verdict['result']}: {verdict['message']}")
    if report.get("run_id"):
        lines.append(f"logged as run {report['run_id']} in {report['model']}-monitoring")
    return "\n".join(lines)


@main.command()
@click.option(
    "--version",
    "version",
    type=click.IntRange(min=1),
    default=None,
    help="The challenger version to compare.  [default: the one in the slot]",
)
@click.option("--until", default=None, help="Only rows served before this (ISO 8601).")
@click.option("--no-log", is_flag=True, help="Do not log the comparison to MLflow.")
@command
def compare(version: int | None, until: str | None, no_log: bool) -> tuple[dict[str, Any], str]:
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
        _settings(),
        version,
        until=_moment(until, "--until") if until else None,
        log_to_mlflow=not no_log,
    )
    return result.report, _compare_text(result.report)


def _reproduction_text(found: dict[str, Any]) -> str:
    verdict = "identical" if found["identical"] else "NOT identical"
    lines = [f"run {found['run_id']}: re-trained from what it recorded: {verdict}"]
    if found["data_recorded"] is None:
        lines.append(
            f"  data      {found['data_source']}: digest {found['data_now']} (none recorded)"
        )
    else:
        same = "same" if found["data_identical"] else "DIFFERENT"
        lines.append(
            f"  data      {same}: recorded {found['data_recorded']}, now {found['data_now']}"
        )
    for m in found["metrics"]:
        mark = "same" if m["identical"] else "DIFFERENT"
        lines.append(
            f"  {m['name']:<12}{mark}: recorded {m['recorded']:.6f}, now {m['reproduced']:.6f}"
        )
    if found["probabilities_identical"] is not None:
        mark = "same" if found["probabilities_identical"] else "DIFFERENT"
        largest = found["largest_probability_difference"]
        tail = "" if largest is None else f" (largest difference {largest:.3g})"
        lines.append(f"  held-out probabilities {mark} on {found['rows_compared']} rows{tail}")
    lines += [f"  warning: {w}" for w in found["warnings"]]
    return "\n".join(lines)


@main.command()
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

    settings = _settings()
    if run_id is None:
        assert version is not None
        run_id = registry.get_version(settings, version).run_id
        if run_id is None:
            raise DataError(f"version {version} has no training run to reproduce")
    found = reproducing.reproduce(settings, run_id).to_dict()
    _announce(found, _reproduction_text(found))
    if not found["identical"]:
        sys.exit(1)
