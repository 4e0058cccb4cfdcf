"""The `churnops` click group: the global options, the exit codes of usage errors, and the
commands of every command module added to it (`churnops.cli` adds them)."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from churnops.cli.command import LOG_FORMAT_ENV

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
