"""A/B of the API's request path: two `churnops serve` variants on the same registered version,
loaded in interleaved pairs by wrk (single-row bodies), with the ratio of each pair.

Variants are given as ``name=EXTRA ARGS`` with an optional ``@PYTHONPATH`` prefix so the same
script compares store on/off, shadow on/off, or two checkouts of the code:

    .venv/bin/python -m bench.ab --pairs 5 --seconds 5 'store=' 'bare=--no-store'
    .venv/bin/python -m bench.ab 'new=' 'old=@/work/main/src'
    .venv/bin/python -m bench.ab --shadow 'shadow=' 'store='

With ``--shadow`` the first variant runs with a challenger in shadow mode on every row (the
second with none); both variants are separate APIs so neither waits for the other's slot.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.common import promoted_model
from bench.serve import (
    ROW,
    WrkResult,
    ensure_wrk,
    free_port,
    lua_post,
    run_wrk,
    tree_rss_mib,
    wait_http,
)
from churnops import lifecycle
from churnops.config import Settings


def start_api(
    name: str, spec: str, env: dict[str, str], work: Path, port: int
) -> subprocess.Popen[bytes]:
    """One `churnops serve` variant: ``[@PYTHONPATH] extra args``."""
    path, _, args = spec.partition(" ") if spec.startswith("@") else ("", "", spec)
    variant_env = dict(env)
    if path:
        variant_env["PYTHONPATH"] = path[1:]
    # NB: each variant keeps its own store and spool, so neither writes the other's files.
    variant_env["CHURNOPS_PREDICTION_STORE"] = str(work / f"store-{name}")
    return subprocess.Popen(
        [sys.executable, "-m", "churnops", "serve", "--port", str(port), *args.split()],
        env=variant_env,
        stdout=(work / f"{name}.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants (live ones) so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for one in tree_rss_mib(pid):
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def measured(
    wrk: str, url: str, proc: subprocess.Popen[bytes], script: Path, args: argparse.Namespace
) -> tuple[WrkResult, float]:
    """One wrk run, and the API group's CPU microseconds per answered request during it."""
    before = cpu_seconds(proc.pid)
    result = run_wrk(wrk, f"{url}/predict", script, args.connections, args.seconds)
    spent = cpu_seconds(proc.pid) - before
    return result, 1e6 * spent / max(1, result.requests)


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of ``pid`` by its Python name (py-spy dump names them)."""
    dump = subprocess.run(
        [str(Path(sys.executable).parent / "py-spy"), "dump", "--pid", str(pid), "--nonblocking"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    names = dict(re.findall(r"^Thread (\d+) \([^)]*\): \"?([^\"\n]+)", dump, re.M))
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[str, float] = {}
    for tid, name in names.items():
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rpartition(")")[2].split()
            found[name] = found.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return found


def thread_split(
    wrk: str,
    apis: dict[str, tuple[str, subprocess.Popen[bytes]]],
    script: Path,
    args: argparse.Namespace,
) -> None:
    """Each variant's worker CPU by thread during one more load run: microseconds per request."""
    for name, (url, proc) in apis.items():
        workers = [pid for pid in tree_rss_mib(proc.pid) if pid != proc.pid]
        before = {pid: thread_cpu(pid) for pid in workers}
        result = run_wrk(wrk, f"{url}/predict", script, args.connections, args.seconds)
        after = {pid: thread_cpu(pid) for pid in workers}
        split: dict[str, float] = {}
        for pid in workers:
            for thread, seconds in after[pid].items():
                spent = seconds - before[pid].get(thread, 0.0)
                split[thread] = split.get(thread, 0.0) + spent
        per_request = {k: round(1e6 * v / max(1, result.requests), 1) for k, v in split.items()}
        print(f"{name}: CPU us per request by thread {per_request}", flush=True)


def profile(
    wrk: str,
    apis: dict[str, tuple[str, subprocess.Popen[bytes]]],
    script: Path,
    args: argparse.Namespace,
) -> None:
    """py-spy (folded stacks, one line per thread and stack) of every worker of each variant
    during one more load run of that variant."""
    args.profile.mkdir(parents=True, exist_ok=True)
    for name, (url, proc) in apis.items():
        workers = [pid for pid in tree_rss_mib(proc.pid) if pid != proc.pid]
        spies = [
            subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "--pid",
                    str(pid),
                    "--duration",
                    str(args.seconds),
                    "--rate",
                    "200",
                    "--threads",
                    "--nonblocking",
                    "--format",
                    "raw",
                    "--output",
                    str(args.profile / f"{name}-{pid}.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for pid in workers
        ]
        run_wrk(wrk, f"{url}/predict", script, args.connections, args.seconds)
        for spy in spies:
            spy.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs=2, help="name=[@PYTHONPATH ]extra serve args")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--shadow", action="store_true", help="challenger shadows the first")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--threads", action="store_true", help="CPU per request by thread")
    parser.add_argument(
        "--profile", type=Path, default=None, help="py-spy folded stacks of each variant's workers"
    )
    args = parser.parse_args()
    wrk = ensure_wrk()
    with promoted_model("churnops-ab-") as (settings, env, work):
        v2 = lifecycle.train(settings, data_file=None, version_label="v2", seed=2, gate_f1=0.6)
        compare(args, wrk, settings, env, work, v2.version)


def compare(
    args: argparse.Namespace,
    wrk: str,
    settings: Settings,
    env: dict[str, str],
    work: Path,
    other: int,
) -> None:
    """Start both variants, load them in interleaved pairs, print and write the figures."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        apis: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}
        for variant in args.variants:
            name, _, spec = variant.partition("=")
            api_port = free_port()
            if args.shadow and not apis:
                # NB: the first variant follows the challenger alias; the second another one.
                env_first = {**env}
                procs.append(start_api(name, spec, env_first, work, api_port))
            else:
                env_second = {**env, "CHURNOPS_CHALLENGER_ALIAS": "nobody"}
                procs.append(start_api(name, spec, env_second, work, api_port))
            apis[name] = (f"http://127.0.0.1:{api_port}", procs[-1])
        for url, proc in apis.values():
            wait_http(f"{url}/ready", proc, 180)
        if args.shadow:
            from churnops import challenger

            challenger.set_challenger(settings, other, "shadow")
            first = next(iter(apis.values()))[0]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                state = httpx.get(f"{first}/model").json().get("challenger") or {}
                if state.get("active"):
                    break
                time.sleep(0.2)
            else:
                raise RuntimeError(f"the challenger never became active on {first}")
        script = lua_post(json.dumps(ROW), work, "one")
        for url, _ in apis.values():
            run_wrk(wrk, f"{url}/predict", script, 4, 2)
        pairs = []
        names = list(apis)
        cpu: list[dict[str, float]] = []
        for i in range(args.pairs):
            # NB: the order alternates, so neither variant always runs on a warmer machine.
            order = names if i % 2 == 0 else names[::-1]
            runs = {n: measured(wrk, apis[n][0], apis[n][1], script, args) for n in order}
            result = {n: r for n, (r, _) in runs.items()}
            cpu.append({n: us for n, (_, us) in runs.items()})
            pairs.append(result)
            a, b = (result[n] for n in names)
            print(
                f"pair {i + 1}: {names[0]} {a.requests_per_s:.0f} req/s p99 {a.p99_ms:.1f} ms "
                f"{cpu[-1][names[0]]:.0f} us CPU/req | "
                f"{names[1]} {b.requests_per_s:.0f} req/s p99 {b.p99_ms:.1f} ms "
                f"{cpu[-1][names[1]]:.0f} us CPU/req | "
                f"ratio {a.requests_per_s / b.requests_per_s:.3f} p99 {a.p99_ms / b.p99_ms:.3f}",
                flush=True,
            )
        if args.profile:
            profile(wrk, apis, script, args)
        if args.threads:
            thread_split(wrk, apis, script, args)
        ratios = [p[names[0]].requests_per_s / p[names[1]].requests_per_s for p in pairs]
        p99s = [p[names[0]].p99_ms / p[names[1]].p99_ms for p in pairs]
        rss = {n: round(sum(tree_rss_mib(apis[n][1].pid).values()), 1) for n in names}
        print(
            f"median throughput {names[0]}/{names[1]} {statistics.median(ratios):.3f}, "
            f"median p99 ratio {statistics.median(p99s):.3f}; median CPU us/request "
            f"{ {n: round(statistics.median(c[n] for c in cpu)) for n in names} }; "
            f"group RSS MiB {rss}"
        )
        if args.out:
            args.out.write_text(
                json.dumps(
                    {
                        "pairs": [{n: vars(r) for n, r in p.items()} for p in pairs],
                        "ratios": ratios,
                        "p99_ratios": p99s,
                        "cpu_us_per_request": cpu,
                        "rss_mib": rss,
                    },
                    indent=2,
                )
            )
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
        for proc in procs:
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
