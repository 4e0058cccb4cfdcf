"""`churnops server`'s child command line, without servers: a database password never appears on
it (every user can read a command line with `ps`)."""

from __future__ import annotations

from pathlib import Path

from churnops import registry_app, tracking_server
from churnops.config import Settings


def test_the_backend_store_uri_travels_in_the_environment_not_on_the_command_line(
    tmp_path: Path, monkeypatch
) -> None:
    uri = "postgresql+psycopg://mlflow:s3cret-password@127.0.0.1:5432/mlflow"
    settings = Settings(data_dir=tmp_path, backend_store_uri=uri)
    command = tracking_server.server_command(settings, "127.0.0.1", 5000, 1)
    assert not any("s3cret-password" in part for part in command)
    monkeypatch.setenv(tracking_server.BACKEND_STORE_ENV, uri)
    parsed = registry_app.parse(command[3:])
    assert parsed.backend_store_uri == uri
