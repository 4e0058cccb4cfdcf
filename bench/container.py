"""The image against the venv, same machine, same run: a cold start of the API to /ready (three
of each, alternating) and single-row /predict throughput at 64 connections (wrk, alternating
pairs), both APIs with two workers on the same promoted version. Needs the image (`make image`)
and podman; the container runs on the host network, bound to 127.0.0.1.

    .venv/bin/python -m bench.container [--image localhost/churnops:latest] [--duration 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from bench.common import promoted_model, write_results
from bench.serve import ROW, ensure_wrk, free_port, lua_post, run_wrk

WORKERS = 2
USER = 10001


def wait_ready(url: str, timeout: float = 120) -> float:
    """Poll /ready until 200; the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{url} was not ready within {timeout} s")


def venv_api(env: dict[str, str], port: int) -> Callable[[], None]:
    """Start `churnops serve` from this venv; a function that stops it."""
    folder = Path(tempfile.mkdtemp(prefix="bench-venv-api-"))
    process = subprocess.Popen(
        [sys.executable, "-m", "churnops", "serve", "--port", str(port)],
        env={**env, "CHURNOPS_DATA_DIR": str(folder), "CHURNOPS_WORKERS": str(WORKERS)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def stop() -> None:
        process.terminate()
        process.wait(timeout=30)

    return stop


def container_api(image: str, env: dict[str, str], port: int) -> Callable[[], None]:
    """Start the image's API on the host network; a function that removes it."""
    folder = Path(tempfile.mkdtemp(prefix="bench-box-api-"))
    os.chown(folder, USER, USER)
    name = f"churnops-bench-{port}"
    subprocess.run(
        [
            "podman", "run", "--detach", "--name", name, "--network", "host",
            "--volume", f"{folder}:/data",
            "--env", f"MLFLOW_TRACKING_URI={env['MLFLOW_TRACKING_URI']}",
            "--env", f"CHURNOPS_MODEL_NAME={env['CHURNOPS_MODEL_NAME']}",
            "--env", f"CHURNOPS_WORKERS={WORKERS}",
            image, "serve", "--host=127.0.0.1", f"--port={port}",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip

    def stop() -> None:
        subprocess.run(["podman", "rm", "--force", "--time", "20", name], capture_output=True)

    return stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image", default="localhost/churnops:latest")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/container.json"))
    args = parser.parse_args()
    wrk = ensure_wrk()
    size = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Size}}", args.image],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    starts: dict[str, list[float]] = {"venv": [], "container": []}
    throughput: dict[str, list[float]] = {"venv": [], "container": []}
    with promoted_model("bench-container-") as (_, env, work):
        script = lua_post(json.dumps(ROW), work, "one")
        for _ in range(args.starts):
            for kind in ("venv", "container"):
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                began = time.monotonic()
                stop = (
                    venv_api(env, port) if kind == "venv" else container_api(args.image, env, port)
                )
                try:
                    wait_ready(url)
                    starts[kind].append(time.monotonic() - began)
                    result = run_wrk(wrk, f"{url}/predict", script, 64, args.duration)
                    throughput[kind].append(result.requests_per_s)
                finally:
                    stop()
    figures = {
        "image": args.image,
        "image_bytes": int(size),
        "cold_start_s": starts,
        "requests_per_s_64": throughput,
        "cold_start_ratio": statistics.median(starts["container"])
        / statistics.median(starts["venv"]),
        "throughput_ratio": statistics.median(throughput["container"])
        / statistics.median(throughput["venv"]),
    }
    write_results(args.out, figures)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
