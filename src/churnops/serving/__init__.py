"""The prediction API, one module per concern: ``app`` (the factory and its routes), ``flow`` (one
request's scoring, testable without HTTP), ``decode`` (reading a request), ``openapi``,
``middleware``, ``status`` (/ready and /model), ``server`` (uvicorn), ``watcher`` and ``routing``
(which versions answer), ``shadow``, ``cache`` (the last-served copy), ``schemas`` (response
bodies), and the prediction store's ``writer`` with its ``spool``.

Nothing is imported here: the CLI and the monitoring modules import ``routing`` without FastAPI.
"""
