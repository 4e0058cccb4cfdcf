"""The tracking server: by default a SQLite backend plus a dedicated artifact store, or any
database and object store MLflow supports (PostgreSQL + S3 for a team), with artifacts proxied
by the server so clients on other machines need no shared disk or storage credentials. Starts the
lean launcher (``churnops.registry_app``) as a child process group, waits until the registry
answers, and stops it cleanly.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from churnops.config import Settings
from churnops.errors import ChurnopsError, PortInUseError, ServerStartError

log = logging.getLogger(__name__)

START_TIMEOUT = 90.0
STOP_TIMEOUT = 15.0
# NB: a registry request, not just /health, proves the store behind the server is usable.
READY_PATH = "/api/2.0/mlflow/registered-models/search?max_results=1"


def ensure_port_free(host: str, port: int) -> None:
    """Raise PortInUseError when ``host:port`` cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # NB: as uvicorn does, so closed connections in TIME_WAIT do not count as "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PortInUseError(
                f"{host}:{port} is already in use ({exc.strerror}); stop what holds it or pass "
                "--port with a free port"
            ) from None


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child server: this venv's bin/ first, since MLflow execs its tools."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.update(extra or {})
    return env


@dataclass
class ServerProcess:
    """A running child server and the address it answers on."""

    process: subprocess.Popen[bytes]
    url: str

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM the whole process group, then SIGKILL what is left after ``timeout``."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass


def wait_until_answers(
    proc: subprocess.Popen[bytes],
    url: str,
    path: str,
    timeout: float,
    what: str,
    auth: bool = False,
) -> None:
    """Poll ``url + path`` until it answers 200 (or 401 behind authentication: the store
    answered), the process dies, or ``timeout`` passes."""
    ready = {200, 401} if auth else {200}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerStartError(f"{what} exited with code {proc.returncode} before answering")
        try:
            if httpx.get(url + path, timeout=2.0).status_code in ready:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise ServerStartError(f"{what} did not answer at {url} within {timeout:.0f} s")


BACKEND_STORE_ENV = "CHURNOPS_BACKEND_STORE_URI"


def default_workers() -> int:
    """Workers sized to the machine: one per two cores, at least 1, at most 4."""
    return max(1, min((os.cpu_count() or 1) // 2, 4))


@dataclass(frozen=True)
class ServerOptions:
    """What `churnops server` passes on to MLflow's app beyond the stores, as `mlflow server`
    names it: the job runner, and the security middleware's host and origin lists."""

    jobs: bool = False
    allowed_hosts: str | None = None
    cors_allowed_origins: str | None = None

    def arguments(self) -> list[str]:
        found = ["--jobs"] if self.jobs else []
        if self.allowed_hosts:
            found += ["--allowed-hosts", self.allowed_hosts]
        if self.cors_allowed_origins:
            found += ["--cors-allowed-origins", self.cors_allowed_origins]
        return found


WEBHOOK_KEY_ENV = "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"
WEBHOOK_KEY_FILE = "webhook-secret.key"


def webhook_key_path(settings: Settings) -> Path:
    """Where the webhook key lives: with the tracking server's other state, under mlflow/."""
    return settings.data_dir.resolve() / "mlflow" / WEBHOOK_KEY_FILE


def webhook_key_environment(settings: Settings, env: dict[str, str]) -> dict[str, str]:
    """The key MLflow encrypts webhook secrets with, kept in the data folder's mlflow/.

    NB: without it MLflow draws a random key per process, so a webhook's secret cannot be read
    after a restart or by another worker (its deliveries fail). A key set in the environment
    wins; servers sharing one database must share the key. Releases before 2026-12-06 kept the
    key at the data folder's top (the repository root in the quick start); it is moved, never
    replaced, since the secrets already stored can only be read with it."""
    if env.get(WEBHOOK_KEY_ENV):
        return {}
    path = webhook_key_path(settings)
    earlier = settings.data_dir.resolve() / WEBHOOK_KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() and earlier.is_file():
        os.replace(earlier, path)
    if not path.exists():
        from cryptography.fernet import Fernet

        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(Fernet.generate_key())
    return {WEBHOOK_KEY_ENV: path.read_text().strip()}


def server_command(
    settings: Settings,
    host: str,
    port: int,
    workers: int,
    auth: bool = False,
    options: ServerOptions | None = None,
) -> list[str]:
    """The lean launcher's command line (``churnops.registry_app``) for the configured stores.

    NB: the backend store URI, which may hold a database password, is not on it: a command line
    is visible to every user (`ps`), so it travels in the child's environment
    (BACKEND_STORE_ENV, see :func:`start`), which only its owner can read.
    """
    command = [
        sys.executable,
        "-m",
        "churnops.registry_app",
        "--artifacts-destination",
        settings.server_artifacts_destination,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    command += (options or ServerOptions()).arguments()
    return [*command, "--app-name", "basic-auth"] if auth else command


AUTH_SECRETS = ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY")


def auth_environment(settings: Settings, env: dict[str, str]) -> dict[str, str]:
    """What MLflow's basic-auth app needs beyond ``env``: refuses to go on without an admin
    password and a secret key (never a default), and keeps the user database in the data dir."""
    missing = [name for name in AUTH_SECRETS if not env.get(name, "").strip()]
    if missing:
        raise ChurnopsError(
            f"--auth needs {' and '.join(missing)} in the environment: the admin's password "
            "(created on the first start) and a random secret for session signing, e.g. "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`; churnops never "
            "uses a default password"
        )
    if env.get("MLFLOW_AUTH_CONFIG_PATH"):
        return {}
    config = settings.data_dir.resolve() / "auth" / "basic_auth.ini"
    config.parent.mkdir(parents=True, exist_ok=True)
    database = config.parent / "basic_auth.db"
    config.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{database}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # NB: MLflow checks the password hash (PBKDF2) on every request by default, and one
        # promote makes dozens; a changed password or revoked user takes effect within 30 s.
        "auth_cache_ttl_seconds = 30\n"
    )
    return {"MLFLOW_AUTH_CONFIG_PATH": str(config)}


def start(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 5000,
    workers: int = 1,
    timeout: float = START_TIMEOUT,
    quiet: bool = False,
    log_file: Path | None = None,
    auth: bool = False,
    extra_env: dict[str, str] | None = None,
    options: ServerOptions | None = None,
) -> ServerProcess:
    """Start the embedded tracking server and return once its registry answers.

    Its output goes to ``log_file`` when given, nowhere when ``quiet``, else to stderr (never to
    stdout, which stays clean for --json documents).
    """
    ensure_port_free(host, port)
    if settings.backend_store_uri is None:
        settings.backend_db.parent.mkdir(parents=True, exist_ok=True)
    if settings.artifacts_destination is None:
        settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
    # NB: storage credentials (extra_env) go to the server alone; clients reach artifacts
    # through its proxy.
    env = child_env(extra_env)
    env[BACKEND_STORE_ENV] = settings.server_backend_store_uri
    if auth:
        env.update(auth_environment(settings, env))
    env.update(webhook_key_environment(settings, env))
    output: int | IO[bytes] = subprocess.DEVNULL if quiet else 2
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        output = log_file.open("ab")
    proc = subprocess.Popen(
        server_command(settings, host, port, workers, auth, options),
        env=env,
        stdout=output,
        stderr=output,
        start_new_session=True,
    )
    if not isinstance(output, int):
        output.close()  # the child holds its own copy
    server = ServerProcess(proc, f"http://{host}:{port}")
    # NB: a wildcard bind is probed on loopback: MLflow refuses the Host 0.0.0.0 once
    # --allowed-hosts names the server's real names (a container's).
    probe = f"http://127.0.0.1:{port}" if host in ("0.0.0.0", "") else server.url
    try:
        wait_until_answers(proc, probe, READY_PATH, timeout, "the tracking server", auth=auth)
    except BaseException:
        server.stop()
        raise
    log.info("mlflow server answers at %s", server.url)
    return server
