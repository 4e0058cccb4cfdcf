"""`churnops server` gives everything plain `mlflow server` gives: a broad client script
(tests/parity.py) observes the same on both, so an MLflow upgrade cannot silently break parity;
plus what churnops adds: webhook secrets that survive a restart, a clear 501 instead of a
half-made run for job buttons when jobs are off, and `mlflow server`'s host and CORS options.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet

from churnops import tracking_server
from churnops.config import Settings
from tests.conftest import free_port
from tests.parity import WEBHOOK_SECRET, signature_valid, start_receiver

pytestmark = pytest.mark.slow

# NB: MLflow refuses webhooks to http:// and to private addresses unless told; the receivers
# here are on loopback. The same variables go to both servers.
WEBHOOK_ENV = {
    "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
    "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
}
# The operations whose success the comparison rests on: equal failures would not be parity.
MUST_SUCCEED = (
    "artifacts: 20 MB round trip",
    "model: log and load",
    "registry: load by alias",
    "traces: log and search",
    "prompts: register, alias, load",
    "webhooks: create and test",
)


@contextlib.contextmanager
def plain_mlflow_server(folder: Path) -> Iterator[str]:
    """`mlflow server` as its documentation starts it, on SQLite and a local artifact folder."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{folder / 'mlflow.db'}",
            "--artifacts-destination",
            str(folder / "artifacts"),
        ],
        # NB: as MLflow's docs say for several workers: one webhook encryption key for all of
        # them. Without it each worker draws its own, and a hook created through one worker
        # and tested through another fails with INTERNAL_ERROR (seen once in CI).
        env={
            **tracking_server.child_env(),
            **WEBHOOK_ENV,
            tracking_server.WEBHOOK_KEY_ENV: Fernet.generate_key().decode(),
        },
        stdout=(folder / "server.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = tracking_server.ServerProcess(process, f"http://127.0.0.1:{port}")
    try:
        tracking_server.wait_until_answers(
            process, server.url, tracking_server.READY_PATH, 120, "plain mlflow server"
        )
        yield server.url
    finally:
        server.stop(timeout=30)


@contextlib.contextmanager
def churnops_server(folder: Path, **options: object) -> Iterator[str]:
    server = tracking_server.start(
        Settings(data_dir=folder),
        port=free_port(),
        quiet=True,
        extra_env=WEBHOOK_ENV,
        options=tracking_server.ServerOptions(**options),  # type: ignore[arg-type]
    )
    try:
        yield server.url
    finally:
        server.stop()


def _observe(url: str, folder: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "tests.parity", url, str(folder)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((folder / "observed.json").read_text())


def test_a_broad_client_script_observes_the_same_on_churnops_server_as_on_mlflow_server(
    tmp_path: Path,
) -> None:
    with plain_mlflow_server(tmp_path / "plain") as url:
        plain = _observe(url, tmp_path / "plain-client")
    with churnops_server(tmp_path / "churnops") as url:
        ours = _observe(url, tmp_path / "churnops-client")
    assert len(plain) >= 50
    for name in MUST_SUCCEED:
        assert "ok" in plain[name], (name, plain[name])
    assert plain["webhooks: delivery signed with the secret"] == {"ok": [True]}
    differing = {
        k: (plain.get(k), ours.get(k))
        for k in plain.keys() | ours.keys()
        if plain.get(k) != ours.get(k)
    }
    assert differing == {}


def test_webhook_secrets_still_sign_deliveries_after_a_restart(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    # NB: registry_uri given: MlflowClient otherwise follows a registry URI an earlier test set.
    receiver = start_receiver()
    try:
        with churnops_server(tmp_path) as url:
            hook = MlflowClient(url, registry_uri=url).create_webhook(
                name="after-restart",
                url=receiver.url,
                events=["model_version.created"],
                secret=WEBHOOK_SECRET,
            )
        with churnops_server(tmp_path) as url:
            result = MlflowClient(url, registry_uri=url).test_webhook(hook.webhook_id)
    finally:
        receiver.stop()
    assert result.success, result.error_message
    assert [signature_valid(d, WEBHOOK_SECRET) for d in receiver.deliveries] == [True]
    key = tmp_path / "mlflow" / tracking_server.WEBHOOK_KEY_FILE
    assert key.stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / tracking_server.WEBHOOK_KEY_FILE).exists()


def test_a_webhook_key_kept_at_the_data_folders_top_by_an_earlier_release_is_moved_not_replaced(
    tmp_path: Path,
) -> None:
    earlier = tmp_path / tracking_server.WEBHOOK_KEY_FILE
    earlier.write_text("an-earlier-key\n")
    settings = Settings(data_dir=tmp_path)

    env = tracking_server.webhook_key_environment(settings, {})

    assert env == {tracking_server.WEBHOOK_KEY_ENV: "an-earlier-key"}
    assert not earlier.exists()
    assert tracking_server.webhook_key_path(settings).read_text() == "an-earlier-key\n"


def test_without_jobs_the_ui_job_buttons_get_a_clear_501_and_leave_no_run_behind(
    tmp_path: Path,
) -> None:
    from mlflow.tracking import MlflowClient

    with churnops_server(tmp_path) as url:
        experiment = MlflowClient(url, registry_uri=url).create_experiment("evaluations")
        for path in (
            "/ajax-api/3.0/mlflow/genai/evaluate/invoke",
            "/ajax-api/3.0/mlflow/scorer/invoke",
            "/ajax-api/3.0/mlflow/issues/invoke",
            "/ajax-api/3.0/jobs/",
            "/ajax-api/3.0/mlflow/prompt-optimization/jobs",
        ):
            answer = httpx.post(url + path, json={"experiment_id": experiment}, timeout=30)
            assert answer.status_code == 501, (path, answer.text)
            assert "churnops server --jobs" in answer.json()["message"]
        assert MlflowClient(url, registry_uri=url).search_runs([experiment]) == []
        assert httpx.post(url + "/ajax-api/3.0/jobs/search", json={}).status_code == 200


def test_with_jobs_the_job_runner_starts_and_stops_with_the_server(tmp_path: Path) -> None:
    server = tracking_server.start(
        Settings(data_dir=tmp_path),
        port=free_port(),
        quiet=True,
        extra_env=WEBHOOK_ENV,
        options=tracking_server.ServerOptions(jobs=True),
    )
    try:
        answer = httpx.post(server.url + "/ajax-api/3.0/mlflow/genai/evaluate/invoke", json={})
        # MLflow itself answers now: a missing experiment id, not "jobs are off".
        assert answer.status_code == 400 and "experiment_id" in answer.json()["message"]
        runners = _job_runners_of(server.process.pid)
        assert runners
    finally:
        server.stop()
    assert not _alive(runners)


def _job_runners_of(root: int) -> list[int]:
    """The job-runner processes among ``root``'s descendants: never another server's."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # NB: the command name in field 2 may hold spaces; the parent follows its ")".
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    family, grew = {root}, True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in family} - family
        family |= children
        grew = bool(children)
    runner = re.compile(r"huey_consumer|job_runner|_executor_runner")
    found = []
    for pid in family - {root}:
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if runner.search(command):
                found.append(pid)
    return found


def _alive(pids: list[int]) -> list[int]:
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        living = [p for p in pids if Path(f"/proc/{p}").exists()]
        if not living:
            return []
        time.sleep(0.5)
    return living


def test_allowed_hosts_and_cors_origins_are_passed_on_as_mlflow_server_takes_them(
    tmp_path: Path,
) -> None:
    search = "/api/2.0/mlflow/experiments/search?max_results=1"
    with churnops_server(tmp_path / "default") as url:
        assert httpx.get(url + search, headers={"Host": "mlflow.internal"}).status_code == 403
    with churnops_server(
        tmp_path / "widened",
        allowed_hosts="mlflow.internal",
        cors_allowed_origins="https://ui.example",
    ) as url:
        assert httpx.get(url + search, headers={"Host": "mlflow.internal"}).status_code == 200
        assert httpx.get(url + search, headers={"Host": "evil.example"}).status_code == 403
        allowed = httpx.get(url + search, headers={"Origin": "https://ui.example"})
        assert allowed.headers.get("access-control-allow-origin") == "https://ui.example"
        other = httpx.get(url + search, headers={"Origin": "https://evil.example"})
        assert other.headers.get("access-control-allow-origin") != "https://evil.example"
