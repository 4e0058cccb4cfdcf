"""What every command shares: the `command` decorator (--json, MLflow's stdout lines kept off
stdout, ChurnopsError turned into one line and an exit code), settings read once per command,
and the small parsers and printers the command modules use.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from churnops.config import Settings, apply_mlflow_client_limits
from churnops.errors import ChurnopsError, ConfigurationError, DataError
from churnops.gate import GateReport

F = TypeVar("F", bound=Callable[..., Any])

LOG_FORMAT_ENV = "CHURNOPS_LOG_FORMAT"


def read_settings(data_dir: Path | None = None) -> Settings:
    """The settings from the environment (and --data-dir), or a one-line configuration error."""
    try:
        found = Settings() if data_dir is None else Settings(data_dir=data_dir)
    except ValidationError as exc:
        raise ConfigurationError(f"invalid configuration: {_without_values(exc)}") from None
    apply_mlflow_client_limits(found)
    return found


def _without_values(exc: ValidationError) -> str:
    """Each problem of a configuration, without the value given: it may be a secret."""
    return "; ".join(
        (f"{e['loc'][0]}: " if e["loc"] else "") + str(e["msg"]).removeprefix("Value error, ")
        for e in exc.errors()
    )


def input_file(path: Path | None) -> None:
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


def _emit(as_json: bool, document: Any, text: str) -> None:
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


def announce(document: Any, text: str) -> None:
    """Print on the real stdout, past the --json redirect, at once: a long-running command's
    addresses, or the result of a command that then exits with a code of its own."""
    meta = click.get_current_context().meta
    out = meta["churnops.stdout"]
    out.write((json.dumps(document, default=str) if meta["churnops.json"] else text) + "\n")
    out.flush()


def stop_on_sigterm() -> None:
    """Turn SIGTERM into the same clean shutdown path as Ctrl-C."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def moment(text: str, option: str) -> datetime:
    """An ISO 8601 option value as an aware time (UTC when no zone is given)."""
    try:
        found = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not an ISO 8601 time, e.g. 2026-12-01 or 2026-12-01T09:30:00Z",
            param_hint=option,
        ) from None
    return found if found.tzinfo else found.replace(tzinfo=UTC)
