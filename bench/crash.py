"""Crash and store-fault benchmark: how many answered rows the prediction store loses when API
workers are killed under load, and what an unwritable store costs, with the spool on and off.

Starts a tracking server, trains and promotes one version, then for each case starts
`churnops serve` (2 workers, default flush interval) on its own data folder and drives it with
wrk (single-row bodies, 16 connections):

- kill one worker: SIGKILL one worker halfway through the run; uvicorn's supervisor restarts it.
- kill the group: SIGKILL every worker and the supervisor halfway; a new `serve` is started on
  the same folder and stopped at once.
- store unwritable: the store's folder is a file, so every write fails; the API's throughput
  against a writable store in the same run, its resident memory, the rows dropped beyond
  CHURNOPS_STORE_MAX_BUFFER_ROWS, and how many warning lines it logged.
- the spool's cost: single-row throughput and p99 at 64 connections, spool on against off (the
  store on in both), in interleaved pairs.

Rows answered are wrk's 2xx responses (one row each); rows stored are read from the store after
a SIGTERM. wrk does not count the responses still in flight when its time is up, which the API
answered and stored, so "lost" can read a few rows below the truth (even below zero). Each kill
case runs with the spool on and off (off: the loss before the spool).

    .venv/bin/python -m bench.crash [--duration 8] [--out bench/results/crash.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import promoted_model, write_results
from bench.serve import (
    ROW,
    ensure_wrk,
    free_port,
    lua_post,
    run_wrk,
    tree_rss_mib,
    wait_http,
    worker_versions,
)
from churnops.monitoring import store

CONNECTIONS = 16


def start_serve(env: dict[str, str], folder: Path, extra: dict[str, str]) -> tuple[Any, str]:
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "churnops", "serve", "--port", str(port), "--workers", "2"],
        env={**env, "CHURNOPS_DATA_DIR": str(folder), **extra},
        stdout=(folder / "serve.log").open("a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/ready", process, 120)
    deadline = time.monotonic() + 60
    with httpx.Client(base_url=url) as client:
        while len(worker_versions(client)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
    return process, url


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def stored_rows(folder: Path, model: str) -> int:
    return store.read_predictions(store.open_store(str(folder / "store")), model).num_rows


def live_workers(supervisor: int) -> list[int]:
    """The supervisor's workers, busiest (most CPU time) first: killing an idle one proves
    nothing."""
    workers = [pid for pid in tree_rss_mib(supervisor) if pid != supervisor]

    def cpu(pid: int) -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    return sorted(workers, key=cpu, reverse=True)


def kill_case(
    wrk: str, env: dict[str, str], folder: Path, duration: int, group: bool, spool: bool
) -> dict[str, Any]:
    extra = {"CHURNOPS_STORE_SPOOL": "true" if spool else "false"}
    process, url = start_serve(env, folder, extra)
    script = lua_post(json.dumps(ROW), folder, "one")
    victims: list[int] = []

    def killer() -> None:
        time.sleep(duration / 2)
        workers = live_workers(process.pid)
        victims.extend(workers if group else workers[:1])
        for pid in [*victims, *([process.pid] if group else [])]:
            os.kill(pid, signal.SIGKILL)

    thread = threading.Thread(target=killer)
    thread.start()
    result = run_wrk(wrk, f"{url}/predict", script, CONNECTIONS, duration)
    thread.join()
    answered = result.requests - result.non_2xx
    if group:
        process.wait(timeout=10)
        process, url = start_serve(env, folder, extra)
    stop(process)
    stored = stored_rows(folder, env["CHURNOPS_MODEL_NAME"])
    return {
        "case": "kill the group" if group else "kill one worker",
        "spool": spool,
        "answered_rows": answered,
        "stored_rows": stored,
        "lost_rows": answered - stored,
        "lost_share": round((answered - stored) / answered, 5) if answered else None,
        "requests_per_s": result.requests_per_s,
        "socket_errors": result.socket_errors,
    }


def unwritable_case(
    wrk: str, env: dict[str, str], work: Path, duration: int, buffer_rows: int
) -> dict[str, Any]:
    figures: dict[str, Any] = {"max_buffer_rows": buffer_rows}
    for name, broken in (("writable", False), ("unwritable", True)):
        folder = work / f"store-{name}"
        folder.mkdir()
        if broken:
            (folder / "store").write_text("a file where the store's folder should be")
        extra = {
            "CHURNOPS_STORE_MAX_BUFFER_ROWS": str(buffer_rows),
            "CHURNOPS_STORE_FLUSH_SECONDS": "1",
        }
        process, url = start_serve(env, folder, extra)
        script = lua_post(json.dumps(ROW), folder, "one")
        result = run_wrk(wrk, f"{url}/predict", script, CONNECTIONS, duration)
        rss = sum(tree_rss_mib(process.pid).values())
        metrics = httpx.get(f"{url}/metrics").text
        dropped = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith('churnops_store_rows_total{outcome="dropped"}')
        )
        stop(process)
        log = (folder / "serve.log").read_text()
        figures[name] = {
            "requests_per_s": result.requests_per_s,
            "p99_ms": result.p99_ms,
            "rss_mib": round(rss, 1),
            "dropped_rows": int(dropped),
            "warning_lines": log.count("could not write"),
            "seconds": duration,
        }
    figures["throughput_ratio"] = round(
        figures["unwritable"]["requests_per_s"] / figures["writable"]["requests_per_s"], 3
    )
    return figures


def spool_cost(wrk: str, env: dict[str, str], work: Path, pairs: int) -> dict[str, Any]:
    """Single-row throughput and p99 at 64 connections with the spool on and off (the store on
    in both), in interleaved pairs of 5 s: the spool's price on the request path."""
    servers = {
        spool: start_serve(env, work / f"cost-{spool}", {"CHURNOPS_STORE_SPOOL": spool})
        for spool in ("true", "false")
    }
    script = lua_post(json.dumps(ROW), work, "cost")
    runs: dict[str, list[Any]] = {"true": [], "false": []}
    try:
        for spool in ("true", "false"):
            run_wrk(wrk, f"{servers[spool][1]}/predict", script, 4, 2)  # warm-up
        for _ in range(pairs):
            for spool in ("true", "false"):
                runs[spool].append(run_wrk(wrk, f"{servers[spool][1]}/predict", script, 64, 5))
    finally:
        for process, _ in servers.values():
            stop(process)
    ratios = [a.requests_per_s / b.requests_per_s for a, b in zip(*runs.values(), strict=True)]
    p99 = [a.p99_ms / b.p99_ms for a, b in zip(*runs.values(), strict=True)]
    return {
        "pairs": pairs,
        "spool_on_rps": [r.requests_per_s for r in runs["true"]],
        "spool_off_rps": [r.requests_per_s for r in runs["false"]],
        "median_throughput_ratio": round(sorted(ratios)[len(ratios) // 2], 3),
        "median_p99_ratio": round(sorted(p99)[len(p99) // 2], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8, help="Seconds per wrk run.")
    parser.add_argument("--buffer-rows", type=int, default=5_000, help="Unwritable case's cap.")
    parser.add_argument("--pairs", type=int, default=5, help="Spool on/off pairs of 5 s.")
    parser.add_argument("--out", type=Path, default=Path("bench/results/crash.json"))
    args = parser.parse_args()
    wrk = ensure_wrk()
    with promoted_model("churnops-crash-") as (_, env, work):
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        cases = []
        for group in (False, True):
            for spool in (True, False):
                folder = work / f"kill-{'group' if group else 'one'}-{'spool' if spool else 'no'}"
                cases.append(kill_case(wrk, env, folder, args.duration, group, spool))
        unwritable = unwritable_case(wrk, env, work, args.duration, args.buffer_rows)
        cost = spool_cost(wrk, env, work, args.pairs)
    print(f"{'case':<18}{'spool':>6}{'answered':>10}{'stored':>10}{'lost':>8}")
    for case in cases:
        print(
            f"{case['case']:<18}{'on' if case['spool'] else 'off':>6}{case['answered_rows']:>10}"
            f"{case['stored_rows']:>10}{case['lost_rows']:>8}"
        )
    for name in ("writable", "unwritable"):
        figures = unwritable[name]
        print(
            f"store {name:<11} {figures['requests_per_s']:>8.0f} req/s  p99 "
            f"{figures['p99_ms']:.1f} ms  RSS {figures['rss_mib']:.0f} MiB  dropped "
            f"{figures['dropped_rows']}  warning lines {figures['warning_lines']}"
        )
    print(f"unwritable / writable throughput: {unwritable['throughput_ratio']:.2f}x")
    print(
        f"spool on / off, 64 connections ({cost['pairs']} pairs): throughput "
        f"{cost['median_throughput_ratio']:.2f}x, p99 {cost['median_p99_ratio']:.2f}x"
    )
    write_results(
        args.out,
        {
            "duration_s": args.duration,
            "connections": CONNECTIONS,
            "kills": cases,
            "unwritable": unwritable,
            "spool_cost": cost,
        },
    )


if __name__ == "__main__":
    main()
