"""The only code that talks to MLflow, one module per job: ``connection`` (clients built with their
URI, the health check, MLflow's failures as churnops errors), ``versions`` (versions, their tags
and aliases), ``runs`` (logging a training run, its monitoring reference, reading runs back),
``loading`` (downloading a version and building its engine, with digests), ``monitoring_log``
(monitor and compare runs) and ``ledger_store`` (the calls the ledger is built on).

The registry is the single source of truth: a version's metrics and gate verdict live in its tags,
and which version serves lives in an alias. Nothing here sets MLflow's process-wide tracking URI:
every call goes through a client built with ``settings.tracking_uri``.
"""
