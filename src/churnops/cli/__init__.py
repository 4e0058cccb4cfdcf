"""The `churnops` command line: a thin layer over the library. Each command calls one library
function and prints its result, as text or, with --json, as exactly one JSON document on stdout.
Expected failures print one line on stderr and exit non-zero (2 when the tracking server is down).

One module per command group: ``group`` (the click group and its exit codes), ``command``
(what every command shares), ``options`` (the alias movers' options), ``lifecycle``, ``score``,
``serve``, ``data``, ``monitor``, ``store``, ``challenger`` and ``reproduce``. The commands import
heavy libraries (MLflow, scikit-learn, pandas) inside their bodies, so `churnops --help` stays
fast.
"""

from churnops.cli import challenger, data, lifecycle, monitor, reproduce, score, serve, store
from churnops.cli.group import main

for _command in (
    lifecycle.status,
    lifecycle.train,
    lifecycle.promote,
    lifecycle.rollback,
    lifecycle.gate_command,
    lifecycle.history,
    score.score,
    serve.server,
    serve.serve,
    serve.up,
    data.data_group,
    monitor.labels_group,
    monitor.monitor,
    monitor.simulate,
    monitor.compare,
    store.store_group,
    challenger.challenger_group,
    reproduce.reproduce,
):
    main.add_command(_command)

__all__ = ["main"]
