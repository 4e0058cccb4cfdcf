"""Podman for the container tests: build the image with `make image`, run containers and
`podman kube play` files on the host's network (every address 127.0.0.1, free ports), and
remove exactly what a test started."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "localhost/churnops:test"
# NB: the image's user (deploy/Containerfile); a bind-mounted /data must belong to it.
IMAGE_USER = 10001
CUSTOMER = {
    "tenure_months": 3,
    "num_complaints": 4,
    "avg_session_minutes": 12.5,
    "plan_type": "basic",
    "region": "EU",
}


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """Run one podman command; fail with its output when ``check`` and it fails."""
    assert shutil.which("podman"), "podman is missing: run ../shared/containers/setup.sh"
    result = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check:
        assert result.returncode == 0, f"podman {' '.join(args)}: {result.stderr[-3000:]}"
    return result


@functools.cache
def build_image(tag: str = IMAGE) -> str:
    """`make image IMAGE=tag`, as a user runs it, once per test session; the tag."""
    result = subprocess.run(
        ["make", "image", f"IMAGE={tag}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return tag


def data_folder(path: Path) -> Path:
    """A folder to mount at /data, owned by the image's user."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, IMAGE_USER, IMAGE_USER)
    return path


@dataclass
class Containers:
    """Containers one test started, by name; ``remove_all`` removes those and nothing else."""

    image: str
    names: list[str] = field(default_factory=list)

    def run(self, *args: str, env: dict[str, str], data: Path | None = None) -> str:
        """Start the image detached on the host network with ``args`` after its entrypoint."""
        name = f"churnops-test-{uuid.uuid4().hex[:10]}"
        command = ["run", "--detach", "--name", name, "--network", "host"]
        for key, value in env.items():
            command += ["--env", f"{key}={value}"]
        if data is not None:
            command += ["--volume", f"{data_folder(data)}:/data"]
        self.names.append(name)
        podman(*command, self.image, *args)
        return name

    def logs(self, name: str) -> tuple[str, str]:
        """What the container wrote on stdout and on stderr."""
        result = podman("logs", name)
        return result.stdout, result.stderr

    def exit_code(self, name: str) -> int:
        """The exit code of a stopped container."""
        return int(podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip())

    def remove_all(self) -> None:
        """Remove every container this object started, running or not."""
        for name in self.names:
            podman("rm", "--force", "--time", "5", name, check=False)
        self.names.clear()


def answers(url: str, path: str, token: str | None = None) -> int | None:
    """The status of GET ``url + path``, or None when nothing answers."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        return httpx.get(url + path, timeout=5, headers=headers).status_code
    except httpx.HTTPError:
        return None


@dataclass
class Load:
    """A bounded single-row /predict load from a few threads: at most ``requests`` each and
    ``seconds`` in all. It records the prediction id of every 200 and counts every failure."""

    url: str
    threads: int = 4
    requests: int = 3000
    seconds: float = 60.0
    token: str | None = None
    answered: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        with httpx.Client(base_url=self.url, timeout=10, headers=headers) as client:
            for _ in range(self.requests):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                try:
                    response = client.post("/predict", json=CUSTOMER)
                except httpx.HTTPError as exc:
                    self.failed.append(type(exc).__name__)
                    continue
                if response.status_code == 200:
                    self.answered.append(response.json()["prediction_id"])
                else:
                    self.failed.append(str(response.status_code))

    def __enter__(self) -> Load:
        self._workers = [threading.Thread(target=self._run) for _ in range(self.threads)]
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the threads and wait for them."""
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)

    def until(self, answered: int, timeout: float = 30) -> None:
        """Wait until at least ``answered`` requests got a 200."""
        deadline = time.monotonic() + timeout
        while len(self.answered) < answered:
            assert time.monotonic() < deadline, f"only {len(self.answered)} answers: {self.failed}"
            time.sleep(0.05)


def kube_down(manifest: Path) -> None:
    """`podman kube down` what `podman kube play manifest` started."""
    podman("kube", "down", str(manifest), check=False, timeout=120)


def iterate_json_lines(text: str) -> Iterator[str]:
    """The non-empty lines of a log."""
    yield from (line for line in text.splitlines() if line.strip())
