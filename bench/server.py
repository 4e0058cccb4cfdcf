"""Launcher benchmark: `churnops server` against plain `mlflow server`, same backend, one run.

Each launch starts on a fresh SQLite database and artifact folder (or, with --postgres-uri, on
its own fresh PostgreSQL database made from that server), and is timed from the launch until
the first *registry* request (a registered-model search) answers 200: `/health` alone would
answer before the store is usable. Then, after --settle seconds (plain MLflow starts its job
runner and consumers in the background), the resident memory of the whole process tree is
summed from /proc. Launches alternate, --rounds each; medians are reported with the
churnops/plain ratios (targets: time <= 0.5, RSS <= 0.33).

    .venv/bin/python bench/server.py [--rounds 3] [--settle 8] [--out bench/results/server.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

READY = "/api/2.0/mlflow/registered-models/search?max_results=1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def launch(kind: str, work: Path, backend: str, settle: float) -> dict[str, float]:
    port = free_port()
    artifacts = work / "artifacts"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    if kind == "plain":
        command = [
            sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
            "--serve-artifacts", "--artifacts-destination", str(artifacts),
            "--host", "127.0.0.1", "--port", str(port),
        ]  # fmt: skip
    else:
        command = [
            sys.executable, "-m", "churnops", "server", "--port", str(port),
            "--backend-store-uri", backend, "--artifacts-destination", str(artifacts),
            "--data-dir", str(work),
        ]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd=work,
    )
    try:
        deadline = started + 180
        while True:
            assert process.poll() is None, f"{kind} exited with {process.returncode}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}{READY}", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.perf_counter() < deadline, f"{kind} did not answer"
            time.sleep(0.05)
        ready = time.perf_counter() - started
        time.sleep(settle)
        pids = tree(process.pid)
        return {"ready_s": ready, "rss_mib": rss_mib(pids), "processes": len(pids)}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def fresh_backend(work: Path, postgres: str | None, name: str) -> str:
    if postgres is None:
        return f"sqlite:///{work / 'mlflow.db'}"
    import psycopg

    admin = postgres.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = postgres.rpartition("/")
    return f"{base}/{name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=8.0)
    parser.add_argument(
        "--postgres-uri",
        default=None,
        help="postgresql+psycopg://user@host:port/postgres: each launch gets a fresh database",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/server.json"))
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "churnops": []}
    for n in range(args.rounds):
        for kind in ("plain", "churnops"):
            with tempfile.TemporaryDirectory(prefix=f"churnops-bench-{kind}-") as tmp:
                name = f"bench_{kind}_{n}_{os.getpid()}"
                backend = fresh_backend(Path(tmp), args.postgres_uri, name)
                runs[kind].append(launch(kind, Path(tmp), backend, args.settle))
                print(kind, runs[kind][-1], file=sys.stderr)
    summary: dict[str, Any] = {}
    for kind, results in runs.items():
        summary[kind] = {key: statistics.median(r[key] for r in results) for key in results[0]}
    ratio = {key: summary["churnops"][key] / summary["plain"][key] for key in summary["plain"]}
    backend = "PostgreSQL" if args.postgres_uri else "SQLite"
    print(f"\n{backend} backend, median of {args.rounds} launches each\n")
    print("| measure | churnops server | plain mlflow server | ratio | target |")
    print("|---|---|---|---|---|")
    rows = (
        ("first registry request answered, s", "ready_s", "<= 0.5"),
        ("RSS of the whole process tree, MiB", "rss_mib", "<= 0.33"),
        ("processes", "processes", ""),
    )
    for label, key, target in rows:
        print(
            f"| {label} | {summary['churnops'][key]:.1f} | {summary['plain'][key]:.1f} | "
            f"{ratio[key]:.2f} | {target} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(),
                "machine": platform.platform(),
                "backend": backend,
                "runs": runs,
                "median": summary,
                "ratio": ratio,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
