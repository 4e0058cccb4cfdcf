"""Batch scoring's peak memory with the prediction store on and off: `churnops score` as a user
runs it, on a table of --rows rows (the built-in generator), measured by the kernel (GNU time's
maximum resident set size) for each setting, interleaved over --repeats pairs. The store's rows
stream through a staging folder, so "on" should cost a chunk's rows, not the table's.

    .venv/bin/python -m bench.score_memory [--rows 3000000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

from bench.common import promoted_model, write_results
from churnops import data


def peak_mib(env: dict[str, str], source: Path, out: Path, store: bool) -> float:
    done = subprocess.run(
        [
            *("/usr/bin/time", "-f", "%M", sys.executable, "-m", "churnops", "score"),
            *(str(source), str(out), "--json"),
        ],
        env={**env, "CHURNOPS_STORE_PREDICTIONS": "true" if store else "false"},
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stderr.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/score_memory.json"))
    args = parser.parse_args()
    with promoted_model("churnops-score-memory-") as (_, env, work):
        source = work / "customers.csv"
        data.generate(rows=args.rows, seed=3).drop(columns=["churn"]).to_csv(source, index=False)
        figures: dict[str, list[float]] = {"store on": [], "store off": []}
        for _ in range(args.repeats):
            figures["store on"].append(peak_mib(env, source, work / "on.csv", store=True))
            figures["store off"].append(peak_mib(env, source, work / "off.csv", store=False))
    on, off = statistics.median(figures["store on"]), statistics.median(figures["store off"])
    print(
        f"{args.rows:,} rows: peak RSS store on {on:.0f} MiB, off {off:.0f} MiB ({on / off:.2f}x)"
    )
    write_results(args.out, {"rows": args.rows, "peak_mib": figures, "ratio": round(on / off, 3)})


if __name__ == "__main__":
    main()
