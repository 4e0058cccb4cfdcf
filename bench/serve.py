"""Serving benchmark: `churnops serve` against `mlflow models serve`, side by side, in one run.

Starts a tracking server, trains two versions and promotes the first, starts both servers on the
same version, load-tests both with wrk (1 and 64 connections with single-row bodies, 8 connections
with 1,000-row bodies), then moves the alias 20 times under a 16-connection load and records how
long every churnops worker takes to serve the new version. Prints a table with the churnops/anchor
ratios and writes the figures as JSON.

    .venv/bin/python bench/serve.py [--duration 10] [--moves 20] [--out bench/results/serve.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from churnops import data, lifecycle, tracking_server
from churnops.config import Settings, apply_mlflow_client_limits
from churnops.monitoring import store
from churnops.registry import loading, versions

ROW = {
    "tenure_months": 3,
    "num_complaints": 4,
    "avg_session_minutes": 12.5,
    "plan_type": "basic",
    "region": "EU",
}
FEATURES = list(ROW)
STORE_PAIRS = 3
STORE_PAIR_SECONDS = 5
SHADOW_PAIR_SECONDS = 5
CANARY_PERCENT = 10.0
CANARY_REQUESTS = 100_000


@dataclass
class WrkResult:
    """One wrk run's figures."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int


def predictions_counted(api: str) -> int:
    """Rows scored, from the API's churnops_predictions counter (summed over workers)."""
    text = httpx.get(f"{api}/metrics").text
    return int(
        sum(
            float(v) for v in re.findall(r"^churnops_predictions_total\{[^}]*\} (\S+)$", text, re.M)
        )
    )


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk not found: installing it from Debian (apt-get install wrk)", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
    return shutil.which("wrk") or "wrk"


def lua_post(body: str, folder: Path, name: str) -> Path:
    """A wrk script that POSTs ``body`` as JSON."""
    path = folder / f"{name}.lua"
    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(body)}\n"
    )
    return path


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def parse_wrk(output: str) -> WrkResult:
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", output, re.MULTILINE))
    total = re.search(r"(\d+) requests in", output)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return WrkResult(
        requests_per_s=float(rps.group(1)) if rps else 0.0,
        p50_ms=_ms(latency["50"]) if "50" in latency else float("nan"),
        p99_ms=_ms(latency["99"]) if "99" in latency else float("nan"),
        requests=int(total.group(1)) if total else 0,
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=sum(map(int, errors.groups())) if errors else 0,
    )


def run_wrk(wrk: str, url: str, script: Path, connections: int, duration: int) -> WrkResult:
    threads = min(connections, 2)
    done = subprocess.run(
        [
            wrk,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    )
    return parse_wrk(done.stdout)


def wait_http(
    url: str, proc: subprocess.Popen, timeout: float, method: str = "GET", body: object = None
) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            response = httpx.request(method, url, json=body, timeout=5)
            if response.status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def tree_rss_mib(pid: int) -> dict[int, float]:
    """RSS of ``pid`` and all its descendants, in MiB."""
    found: dict[int, float] = {}
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except FileNotFoundError:
            continue
        rss = re.search(r"VmRSS:\s+(\d+) kB", status)
        found[current] = int(rss.group(1)) / 1024 if rss else 0.0
        pending.extend(int(c) for c in children)
    return found


def worker_versions(client: httpx.Client) -> dict[str, float]:
    """The version each live worker reports in /metrics (pid label -> version)."""
    text = client.get("/metrics").text
    found = re.findall(r'^churnops_model_version\{pid="(\d+)"\} ([\d.]+)$', text, re.MULTILINE)
    if not found:
        single = re.search(r"^churnops_model_version ([\d.]+)$", text, re.MULTILINE)
        return {"main": float(single.group(1))} if single else {}
    return {pid: float(v) for pid, v in found}


def follow_time(api: str, target: int, workers: int, timeout: float = 30.0) -> float:
    """Seconds until every worker serves ``target``, then a check that responses carry it.

    NB: each worker sets its /metrics version gauge in the same step that swaps the model in,
    so polling /metrics on one kept-alive connection times the swap to within ~10 ms.
    """
    start = time.monotonic()
    elapsed = float("inf")
    with httpx.Client(base_url=api, timeout=5) as client:
        while time.monotonic() - start < timeout:
            live = [v for v in worker_versions(client).values() if v > 0]
            if len(live) >= workers and all(v == target for v in live):
                elapsed = time.monotonic() - start
                break
            time.sleep(0.005)
    headers = set()
    for _ in range(4 * workers):
        with httpx.Client(base_url=api, timeout=5) as fresh:
            headers.add(fresh.post("/predict", json=ROW).headers["X-Model-Version"])
    if headers != {str(target)}:
        raise AssertionError(f"after the move to v{target}, responses carried {headers}")
    return elapsed


def challenger_versions(client: httpx.Client) -> list[float]:
    """The challenger version each live worker follows (0: none), from /metrics."""
    text = client.get("/metrics").text
    found = re.findall(r"^churnops_challenger_version(?:\{[^}]*\})? ([\d.]+)$", text, re.M)
    return [float(v) for v in found]


def wait_challenger(api: str, version: int, workers: int, timeout: float = 60.0) -> None:
    """Wait until every worker follows challenger ``version`` (0: none)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=api, timeout=5) as client:
        while time.monotonic() < deadline:
            found = challenger_versions(client)
            if len(found) >= workers and all(v == version for v in found):
                return
            time.sleep(0.1)
    raise RuntimeError(f"the API's workers did not follow challenger v{version} in {timeout} s")


def counter(api: str, name: str, labels: str = "") -> float:
    """A Prometheus counter's total over workers (samples whose labels contain ``labels``)."""
    text = httpx.get(f"{api}/metrics").text
    pattern = rf"^{name}_total(?:\{{([^}}]*)\}})? (\S+)$"
    return sum(float(v) for found, v in re.findall(pattern, text, re.M) if labels in found)


CANARY_LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
count = 0
function request()
  count = count + 1
  local body = string.format('%s, "customer_id": "t%d-%d"}', PREFIX, tid, count % CUSTOMERS)
  return wrk.format(nil, nil, nil, body)
end
"""


def challenger_runs(
    wrk: str, settings: Settings, api: str, work: Path, challenger: int, workers: int
) -> dict[str, object]:
    """Shadow's cost (interleaved pairs: shadow on every row vs no challenger, same API) and a
    canary's share and stickiness over at least 100,000 single-row requests."""
    from churnops import challenger as slot

    script = lua_post(json.dumps(ROW), work, "shadow_one")
    pairs = []
    dropped_before = counter(api, "churnops_shadow_dropped_rows")
    shadowed_before = counter(api, "churnops_predictions", 'role="shadow"')
    for _ in range(STORE_PAIRS):
        slot.set_challenger(settings, challenger, "shadow")
        wait_challenger(api, challenger, workers)
        with_shadow = run_wrk(wrk, f"{api}/predict", script, 64, SHADOW_PAIR_SECONDS)
        slot.clear(settings)
        wait_challenger(api, 0, workers)
        without = run_wrk(wrk, f"{api}/predict", script, 64, SHADOW_PAIR_SECONDS)
        pairs.append((with_shadow, without))
    shadow = {
        "pairs": [[asdict(a), asdict(b)] for a, b in pairs],
        "shadowed_rows": counter(api, "churnops_predictions", 'role="shadow"') - shadowed_before,
        "dropped_rows": counter(api, "churnops_shadow_dropped_rows") - dropped_before,
        "answered_with_shadow": sum(a.requests for a, _ in pairs),
    }
    percent = CANARY_PERCENT
    slot.set_challenger(settings, challenger, "canary", percent)
    wait_challenger(api, challenger, workers)
    prefix = json.dumps(ROW)[:-1]
    lua = work / "canary.lua"
    lua.write_text(
        CANARY_LUA.replace("PREFIX", json.dumps(prefix)).replace(
            "CUSTOMERS", str(CANARY_REQUESTS // 4)
        )
    )
    rate = max(1.0, pairs[0][1].requests_per_s)
    duration = int(CANARY_REQUESTS / rate * 1.4) + 3
    before = {
        role: counter(api, "churnops_predictions", f'role="{role}"')
        for role in ("production", "canary")
    }
    canary_run = run_wrk(wrk, f"{api}/predict", lua, 64, duration)
    answered = {
        role: counter(api, "churnops_predictions", f'role="{role}"') - before[role]
        for role in ("production", "canary")
    }
    slot.clear(settings)
    return {
        "shadow": shadow,
        "canary": {
            "percent": percent,
            "requests": canary_run.requests,
            "non_2xx": canary_run.non_2xx,
            "answered": answered,
            "share": answered["canary"] / max(1.0, sum(answered.values())),
        },
    }


def canary_sticky(settings: Settings, challenger: int) -> dict[str, int]:
    """From the store: customers of the canary run and how many met more than one version."""
    rows = store.read_predictions(
        store.settings_store(settings),
        settings.model_name,
        columns=["customer_id", "version", "role", "model", "time"],
    ).to_pandas()
    rows = rows[rows["customer_id"].fillna("").str.match(r"t\d+-\d+$")]
    versions = rows.groupby("customer_id")["version"].nunique()
    return {
        "customers": len(versions),
        "rows": len(rows),
        "customers_with_two_versions": int((versions > 1).sum()),
        "customers_on_the_challenger": int(
            rows.loc[rows["version"] == challenger, "customer_id"].nunique()
        ),
    }


def anchor_serves(anchor: str, frame: pd.DataFrame, settings: Settings, old: int, new: int) -> bool:
    """Whether `mlflow models serve` answers like ``new`` (not ``old``) on 1,000 rows."""
    answered = httpx.post(
        f"{anchor}/invocations",
        timeout=30,
        json={"dataframe_split": frame.to_dict(orient="split") | {"index": None}},
    ).json()["predictions"]
    labels = {
        v: loading.load_version(settings, v).engine.predict_frame(frame).label for v in (old, new)
    }
    assert not np.array_equal(labels[old], labels[new]), "the two versions agree on every row"
    return bool(np.array_equal(np.asarray(answered, dtype=int), labels[new]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="Seconds per wrk run.")
    parser.add_argument("--moves", type=int, default=20, help="Alias moves under load.")
    parser.add_argument("--workers", type=int, default=None, help="churnops serve workers.")
    parser.add_argument("--out", type=Path, default=Path("bench/results/serve.json"))
    args = parser.parse_args()
    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="churnops-bench-"))
    port = free_port()
    settings = Settings(tracking_uri=f"http://127.0.0.1:{port}", data_dir=work)
    apply_mlflow_client_limits(settings)
    env = {
        **os.environ,
        **settings.as_environment(),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("CHURNOPS_WORKERS", None)
    if args.workers:
        env["CHURNOPS_WORKERS"] = str(args.workers)
    procs: list[subprocess.Popen] = []
    server = tracking_server.start(settings, port=port, quiet=True)
    try:
        v1 = lifecycle.train(settings, data_file=None, version_label="v1", seed=1, gate_f1=0.6)
        v2 = lifecycle.train(settings, data_file=None, version_label="v2", seed=2, gate_f1=0.6)
        lifecycle.promote(settings, v1.version)

        api_port, mlflow_port = free_port(), free_port()
        api, anchor = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{mlflow_port}"
        log_dir = work / "logs"
        log_dir.mkdir(exist_ok=True)
        ours = subprocess.Popen(
            [sys.executable, "-m", "churnops", "serve", "--port", str(api_port)],
            env=env,
            stdout=(log_dir / "churnops.log").open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(ours)
        # NB: the same API without the prediction store, for the store's cost in the same run.
        bare_port = free_port()
        bare_api = f"http://127.0.0.1:{bare_port}"
        bare = subprocess.Popen(
            [sys.executable, "-m", "churnops", "serve", "--port", str(bare_port), "--no-store"],
            env=env,
            stdout=(log_dir / "churnops-no-store.log").open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(bare)
        theirs = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "models",
                "serve",
                "-m",
                f"models:/{settings.model_name}@{settings.alias}",
                "--env-manager",
                "local",
                "--host",
                "127.0.0.1",
                "--port",
                str(mlflow_port),
            ],
            env=env,
            stdout=(log_dir / "mlflow-serve.log").open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(theirs)
        wait_http(f"{api}/ready", ours, 120)
        wait_http(f"{bare_api}/ready", bare, 120)
        records = {"dataframe_records": [ROW]}
        wait_http(f"{anchor}/invocations", theirs, 120, "POST", records)
        workers = len(worker_versions(httpx.Client(base_url=api)))
        ours_workers = int(env.get("CHURNOPS_WORKERS", min(os.cpu_count() or 1, 4)))

        frame = data.generate(rows=1000, seed=11)[FEATURES]
        batch_rows = frame.to_dict(orient="records")
        scripts = {
            "ours_one": lua_post(json.dumps(ROW), work, "ours_one"),
            "anchor_one": lua_post(json.dumps(records), work, "anchor_one"),
            "ours_batch": lua_post(json.dumps({"customers": batch_rows}), work, "ours_batch"),
            "anchor_batch": lua_post(
                json.dumps({"dataframe_split": frame.to_dict(orient="split") | {"index": None}}),
                work,
                "anchor_batch",
            ),
        }
        ours_one, anchor_one = f"{api}/predict", f"{anchor}/invocations"
        # Warm both up before measuring.
        run_wrk(wrk, ours_one, scripts["ours_one"], 4, 2)
        run_wrk(wrk, anchor_one, scripts["anchor_one"], 4, 2)
        results: dict[str, dict[str, WrkResult]] = {}
        for name, conns, ours_url, anchor_url, key in (
            ("single row, 1 connection", 1, ours_one, anchor_one, "one"),
            ("single row, 64 connections", 64, ours_one, anchor_one, "one"),
            ("1,000-row batch, 8 connections", 8, f"{api}/predict/batch", anchor_one, "batch"),
        ):
            print(f"measuring {name} ...", file=sys.stderr)
            results[name] = {
                "churnops": run_wrk(wrk, ours_url, scripts[f"ours_{key}"], conns, args.duration),
                "mlflow": run_wrk(wrk, anchor_url, scripts[f"anchor_{key}"], conns, args.duration),
            }
        rss = {"churnops": tree_rss_mib(ours.pid), "mlflow": tree_rss_mib(theirs.pid)}
        print("measuring the store's cost (same API, --no-store) ...", file=sys.stderr)
        run_wrk(wrk, f"{bare_api}/predict", scripts["ours_one"], 4, 2)
        # NB: interleaved pairs (with, without, with, ...): this shared machine drifts by 20-30%
        # within a run, which a single pair would report as the store's cost.
        store_cost: dict[str, list[tuple[WrkResult, WrkResult]]] = {}
        for name, path, key, conns in (
            ("single row, 64 connections", "/predict", "ours_one", 64),
            ("1,000-row batch, 8 connections", "/predict/batch", "ours_batch", 8),
        ):
            store_cost[name] = [
                (
                    run_wrk(wrk, f"{api}{path}", scripts[key], conns, STORE_PAIR_SECONDS),
                    run_wrk(wrk, f"{bare_api}{path}", scripts[key], conns, STORE_PAIR_SECONDS),
                )
                for _ in range(STORE_PAIRS)
            ]
        os.killpg(bare.pid, signal.SIGTERM)
        bare.wait(timeout=60)

        print(f"moving the alias {args.moves} times under 16-connection load ...", file=sys.stderr)
        load = subprocess.Popen(
            [
                wrk,
                "-t2",
                "-c16",
                f"-d{args.moves * 10 + 60}s",
                "--timeout",
                "10s",
                "--latency",
                "-s",
                str(scripts["ours_one"]),
                ours_one,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(1)
        follow: list[float] = []
        anchor_follows = None
        for i in range(args.moves):
            if i % 2 == 0:
                lifecycle.promote(settings, v2.version)
                target = v2.version
            else:
                lifecycle.rollback(settings, v1.version)
                target = v1.version
            follow.append(follow_time(api, target, max(workers, ours_workers)))
            if i == 0:
                anchor_follows = anchor_serves(anchor, frame, settings, v1.version, v2.version)
        load.send_signal(signal.SIGINT)
        under_load = parse_wrk(load.communicate(timeout=60)[0])
        print("measuring a shadow's cost and a canary's share ...", file=sys.stderr)
        production = versions.alias_version(settings)
        other = v2.version if production == v1.version else v1.version
        live = challenger_runs(wrk, settings, api, work, other, max(workers, ours_workers))
        # Rows the API scored (its own counter, summed over workers), then, after a graceful
        # stop, rows in the prediction store: the two must be equal.
        scored_rows = predictions_counted(api)
        # NB: rows a worker dropped because its buffer was full (counted, by design) are not
        # losses of the guarantee; anything else missing would be.
        dropped_rows = int(counter(api, "churnops_store_rows", 'outcome="dropped"'))
        os.killpg(ours.pid, signal.SIGTERM)
        ours.wait(timeout=60)
        stored_rows = store.read_predictions(
            store.settings_store(settings), settings.model_name, columns=["model", "time"]
        ).num_rows
        live["canary"]["sticky"] = canary_sticky(settings, other)  # type: ignore[index]
    finally:
        for proc in procs:
            if proc.poll() is not None:
                continue
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        server.stop()

    report_table(results, rss, follow, under_load, bool(anchor_follows), args, workers)
    print(
        f"prediction store: {stored_rows} rows stored of {scored_rows} scored "
        f"({scored_rows - stored_rows} missing, of which {dropped_rows} dropped and counted "
        "because a worker's buffer was full)"
    )
    print(
        f"\nthe store's cost: churnops with the store (default) vs the same with --no-store, "
        f"{STORE_PAIRS} interleaved pairs of {STORE_PAIR_SECONDS} s"
    )
    for name, pairs in store_cost.items():
        ratios = [a.requests_per_s / b.requests_per_s for a, b in pairs]
        print(
            f"  {name}: req/s with/without "
            + ", ".join(f"{a.requests_per_s:.0f}/{b.requests_per_s:.0f}" for a, b in pairs)
            + f"; median ratio {float(np.median(ratios)):.1%}; p99 ms with/without "
            + ", ".join(f"{a.p99_ms:.0f}/{b.p99_ms:.0f}" for a, b in pairs)
        )
    report_challenger(live)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(),
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                },
                "churnops_workers": workers,
                "load": {k: {side: asdict(r) for side, r in v.items()} for k, v in results.items()},
                "rss_mib": {
                    side: {str(k): round(v, 1) for k, v in procs_.items()}
                    for side, procs_ in rss.items()
                },
                "store": {
                    "scored_rows": scored_rows,
                    "stored_rows": stored_rows,
                    "dropped_rows": dropped_rows,
                    "cost": {
                        k: [[asdict(a), asdict(b)] for a, b in pairs]
                        for k, pairs in store_cost.items()
                    },
                },
                "challenger": live,
                "alias_moves": {
                    "follow_seconds": follow,
                    "worst": max(follow),
                    "under_load": asdict(under_load),
                    "mlflow_models_serve_follows": anchor_follows,
                },
            },
            indent=2,
        )
    )
    print(f"\nwrote {args.out}", file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)


def report_challenger(live: dict[str, Any]) -> None:
    shadow, canary = live["shadow"], live["canary"]
    pairs = [(WrkResult(**a), WrkResult(**b)) for a, b in shadow["pairs"]]
    ratios = [a.requests_per_s / b.requests_per_s for a, b in pairs]
    p99 = [a.p99_ms / b.p99_ms for a, b in pairs]
    print(
        f"\nshadow on every row vs no challenger, single row, 64 connections, {len(pairs)} "
        f"interleaved pairs of {SHADOW_PAIR_SECONDS} s (target: >= 90% throughput, <= +20% p99)"
    )
    print(
        "  req/s with/without "
        + ", ".join(f"{a.requests_per_s:.0f}/{b.requests_per_s:.0f}" for a, b in pairs)
        + f"; median ratio {float(np.median(ratios)):.1%}"
    )
    print(
        "  p99 ms with/without "
        + ", ".join(f"{a.p99_ms:.1f}/{b.p99_ms:.1f}" for a, b in pairs)
        + f"; median ratio {float(np.median(p99)):.1%}"
    )
    print(
        f"  rows shadowed {shadow['shadowed_rows']:.0f} of {shadow['answered_with_shadow']} "
        f"answered; dropped (queue full) {shadow['dropped_rows']:.0f}; non-2xx "
        f"{sum(a.non_2xx for a, _ in pairs)}"
    )
    sticky = canary["sticky"]
    print(
        f"canary at {canary['percent']:g}%: {canary['requests']} requests, share answered by the "
        f"challenger {canary['share']:.2%} (target within 1 pp); {sticky['customers']} customers, "
        f"{sticky['customers_with_two_versions']} answered by two versions (target 0)"
    )


def report_table(
    results: dict[str, dict[str, WrkResult]],
    rss: dict[str, dict[int, float]],
    follow: list[float],
    under_load: WrkResult,
    anchor_follows: bool,
    args: argparse.Namespace,
    workers: int,
) -> None:
    rows = []
    for name, pair in results.items():
        ours, theirs = pair["churnops"], pair["mlflow"]
        rows_per_request = 1000 if "batch" in name else 1
        rows.append(
            (
                f"{name}: rows/s" if rows_per_request > 1 else f"{name}: req/s",
                ours.requests_per_s * rows_per_request,
                theirs.requests_per_s * rows_per_request,
                ours.requests_per_s / theirs.requests_per_s if theirs.requests_per_s else 0,
            )
        )
        rows.append((f"{name}: p50 ms", ours.p50_ms, theirs.p50_ms, ours.p50_ms / theirs.p50_ms))
        rows.append((f"{name}: p99 ms", ours.p99_ms, theirs.p99_ms, ours.p99_ms / theirs.p99_ms))
        rows.append((f"{name}: non-2xx", ours.non_2xx, theirs.non_2xx, float("nan")))
    ours_rss, theirs_rss = max(rss["churnops"].values()), max(rss["mlflow"].values())
    rows.append(
        ("RSS of the largest serving process, MiB", ours_rss, theirs_rss, ours_rss / theirs_rss)
    )
    print(
        f"\nchurnops serve ({workers} workers) vs mlflow models serve, {args.duration} s per run\n"
    )
    print(f"| {'measure':<46} | {'churnops':>10} | {'mlflow':>10} | {'ratio':>7} |")
    print(f"|{'-' * 48}|{'-' * 12}|{'-' * 12}|{'-' * 9}|")
    for label, ours_v, theirs_v, ratio in rows:
        print(f"| {label:<46} | {ours_v:>10.1f} | {theirs_v:>10.1f} | {ratio:>7.3f} |")
    print(
        f"\nRSS per process, MiB: churnops {sorted(round(v) for v in rss['churnops'].values())}; "
        f"mlflow {sorted(round(v) for v in rss['mlflow'].values())}"
    )
    print(
        f"\nalias moves: {len(follow)}; time from the command's return until every worker serves "
        f"the new version: median {np.median(follow):.3f} s, worst {max(follow):.3f} s"
    )
    print(
        f"under 16-connection load during the moves: {under_load.requests} requests, "
        f"{under_load.non_2xx} non-2xx, {under_load.socket_errors} socket errors, "
        f"p99 {under_load.p99_ms:.1f} ms"
    )
    print(
        "mlflow models serve followed the first move (v1 -> v2) once churnops had: "
        f"{'yes' if anchor_follows else 'no, it still serves the version it started with'}"
    )


if __name__ == "__main__":
    main()
