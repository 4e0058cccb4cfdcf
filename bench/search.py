"""Search benchmark: churnops `auto`, `--search 60s` / `300s` and FLAML at the same budgets, on
the same train/test files, judged on the held-out file.

Tables: the BigML telecom files as shipped (80% to train, 20% to test) and a bank-churn export
generated here with a known signal (RowNumber, CustomerId and a Surname of thousands of values
beside the usual columns; 10,000 rows split 75/25 stratified). churnops trains exactly as
`churnops train --data TRAIN [--search BUDGET]` does (its own 75/25 split of TRAIN for the
gate, threshold tuned for F1 by 5-fold cross-validation) and is scored at its tuned threshold;
FLAML runs in the bench-only venv (.venv-peers, bench/peers_search.py) at its 0.5 threshold,
on the same columns less the identifiers. Time is the wall clock of the search (churnops) or of
AutoML.fit (FLAML). Ratios are churnops / FLAML at the same budget. Both get the same compute
threads (--threads, default 1: on a shared 2-core machine OpenMP's spinning threads made one
gradient-boosting fit several times slower).

`--encoding` adds the measurement behind the high-cardinality rule: `auto` on the bank table
with its Surname as an ordinary category (before: one-hot for logreg, ordinal codes for hgb),
target-encoded, or dropped, and the same on a variant whose 1,500-value Branch column carries
signal.

    .venv/bin/python -m bench.search [--budgets 60,300] [--tables telecom,bank] [--encoding]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

from bench.common import write_results
from churnops import data, training

PEERS_PYTHON = Path(".venv-peers/bin/python")
SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ber", "dan", "gor", "hol", "lin")


def _names(count: int, rng: np.random.Generator, suffix: str = "") -> list[str]:
    """``count`` distinct made-up surnames."""
    found: set[str] = set()
    while len(found) < count:
        parts = rng.choice(SYLLABLES, size=rng.integers(2, 5))
        found.add("".join(parts).capitalize() + suffix)
    return sorted(found)


def bank_table(rows: int = 10_000, seed: int = 7, branch_signal: bool = False) -> pd.DataFrame:
    """A bank-churn export with a known churn model: age (a hump near 55), Germany, women,
    inactive members (more so past 45), product count (2 protects, 3-4 leave), a balance and
    credit score; Surname (~2,900 values, Zipf-like) and the ids carry none. With
    ``branch_signal``, a Branch column of 1,500 values shifts each branch's churn odds."""
    rng = np.random.default_rng(seed)
    geography = rng.choice(["France", "Germany", "Spain"], size=rows, p=[0.5, 0.25, 0.25])
    gender = rng.choice(["Male", "Female"], size=rows, p=[0.55, 0.45])
    age = np.clip(np.round(rng.gamma(9.0, 4.3, size=rows)), 18, 92).astype(int)
    tenure = rng.integers(0, 11, size=rows)
    balance = np.where(rng.random(rows) < 0.36, 0.0, rng.normal(119_800, 30_000, size=rows))
    balance = np.clip(balance, 0, None).round(2)
    products = rng.choice([1, 2, 3, 4], size=rows, p=[0.508, 0.459, 0.027, 0.006])
    card = (rng.random(rows) < 0.7).astype(int)
    active = (rng.random(rows) < 0.515).astype(int)
    credit = np.clip(np.round(rng.normal(650, 96.6, size=rows)), 350, 850).astype(int)
    salary = rng.uniform(11.58, 199_992.48, size=rows).round(2)
    pool = _names(2_900, rng)
    weights = 1.0 / np.arange(1, len(pool) + 1) ** 0.6
    surname = rng.choice(pool, size=rows, p=weights / weights.sum())
    logit = (
        -2.1
        + 2.2 * np.exp(-(((age - 55) / 11.0) ** 2))
        + 0.8 * (geography == "Germany")
        + 0.45 * (gender == "Female")
        - 0.9 * active
        + 0.6 * ((active == 0) & (age > 45))
        + np.select([products == 2, products == 3, products == 4], [-1.5, 2.3, 4.0], 0.0)
        + 0.25 * (balance > 0)
        - 0.0015 * (credit - 650)
        + rng.normal(0.0, 0.4, size=rows)
    )
    frame = pd.DataFrame(
        {
            "RowNumber": np.arange(1, rows + 1),
            "CustomerId": rng.permutation(np.arange(15_565_701, 15_565_701 + 3 * rows))[:rows],
            "Surname": surname,
            "CreditScore": credit,
            "Geography": geography,
            "Gender": gender,
            "Age": age,
            "Tenure": tenure,
            "Balance": balance,
            "NumOfProducts": products,
            "HasCrCard": card,
            "IsActiveMember": active,
            "EstimatedSalary": salary,
        }
    )
    if branch_signal:
        branches = np.array([f"BR{i:04d}" for i in range(1_500)])
        effect = rng.normal(0.0, 1.0, size=len(branches))
        chosen = rng.integers(0, len(branches), size=rows)
        frame.insert(3, "Branch", branches[chosen])
        logit = logit + effect[chosen]
    frame["Exited"] = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(int)
    return frame


def split_files(frame: pd.DataFrame, target: str, folder: Path, name: str) -> tuple[Path, Path]:
    """``frame`` split 75/25 stratified (seed 42) into NAME-train.csv and NAME-test.csv."""
    train, test = train_test_split(frame, test_size=0.25, stratify=frame[target], random_state=42)
    paths = folder / f"{name}-train.csv", folder / f"{name}-test.csv"
    train.to_csv(paths[0], index=False)
    test.to_csv(paths[1], index=False)
    return paths


def held_out(path: Path, target: str, dataset: data.Dataset) -> tuple[pd.DataFrame, np.ndarray]:
    """The test file's rows in the columns and types training used, and their 0/1 labels."""
    frame = pd.read_csv(path, keep_default_na=False, na_values=list(data.MISSING_MARKERS))
    y = data.normalise_target(frame[target], target).astype(int).to_numpy()
    X = frame[list(dataset.features.columns)].copy()
    for column in dataset.categorical + dataset.encoded:
        values = X[column]
        X[column] = values.astype(str).where(values.notna(), np.nan).astype(object)
    for column in dataset.numeric:
        X[column] = pd.to_numeric(X[column], errors="coerce")
    return X, y


def churnops_row(
    dataset: data.Dataset, test: tuple[pd.DataFrame, np.ndarray], budget: float | None
) -> dict[str, Any]:
    result = training.train(dataset, seed=42, kind="auto", search_budget=budget)
    X, y = test
    probability = result.model.predict_proba(X)[:, 1]
    search = result.search
    return {
        "f1": float(f1_score(y, result.model.predict(X))),
        "roc_auc": float(roc_auc_score(y, probability)),
        "seconds": search.seconds if search else result.seconds,
        "train_seconds": result.seconds,
        "chosen": result.kind,
        "trials": search.completed if search else len(result.cv_f1),
        "best_params": search.best.params if search else {},
        "cv_f1": result.cv_f1,
        "inference": "onnx" if result.export.onnx else "sklearn",
    }


def flaml_row(
    train: Path, test: Path, target: str, budget: float, threads: int, drop: list[str]
) -> dict:
    arguments = [str(train), str(test), target, str(budget), str(threads), ",".join(drop)]
    done = subprocess.run(
        [str(PEERS_PYTHON), "bench/peers_search.py", *arguments],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"FLAML failed (make bench-peers?): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def encoding_study(folder: Path) -> list[dict[str, Any]]:
    """`auto` with each high-cardinality column as a category, target-encoded or dropped."""
    rows = []
    for name, column, frame in (
        ("bank", "Surname", bank_table()),
        ("bank+branch", "Branch", bank_table(branch_signal=True)),
    ):
        train, test = split_files(frame, "Exited", folder, f"study-{name}")
        loaded = data.load_table(train, target="Exited")
        kept = [c for c in loaded.categorical if c != column]
        features = pd.read_csv(train)[column].astype(str)
        variants = {
            "category (before)": dataclasses.replace(
                loaded,
                features=loaded.features.assign(**{column: features}),
                categorical=(*kept, column),
                encoded=(),
            ),
            "target-encoded": dataclasses.replace(
                loaded,
                features=loaded.features.assign(**{column: features}),
                categorical=tuple(kept),
                encoded=(column,),
            ),
            "dropped": dataclasses.replace(
                loaded,
                features=loaded.features.drop(columns=[column], errors="ignore"),
                categorical=tuple(kept),
                encoded=(),
            ),
        }
        rule = "target-encoded" if column in loaded.encoded else "dropped"
        why = loaded.report.columns.get(column) or loaded.report.dropped_columns[column]
        for variant, dataset in variants.items():
            row = churnops_row(dataset, held_out(test, "Exited", dataset), None)
            rows.append({"table": name, "column": column, "variant": variant, "rule": rule})
            rows[-1] |= {"why": why, **row}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared-data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--budgets", default="60,300")
    parser.add_argument("--tables", default="telecom,bank")
    parser.add_argument("--encoding", action="store_true")
    parser.add_argument("--no-flaml", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/search.json"))
    args = parser.parse_args()
    budgets = [float(b) for b in args.budgets.split(",") if b]
    threadpool_limits(limits=args.threads)
    results: dict[str, Any] = {"budgets": budgets, "threads": args.threads, "tables": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        bank = split_files(bank_table(), "Exited", folder, "bank")
        tables = {
            "telecom": (
                args.shared_data / "telecom-churn-bigml-80.csv",
                args.shared_data / "telecom-churn-bigml-20.csv",
                "Churn",
                [],
            ),
            "bank": (*bank, "Exited", ["RowNumber", "CustomerId"]),
        }
        for name in args.tables.split(","):
            train, test, target, ids = tables[name]
            dataset = data.load_table(train, target=target)
            held = held_out(test, target, dataset)
            rows = {"auto": churnops_row(dataset, held, None)}
            print(name, "auto", rows["auto"], flush=True)
            for budget in budgets:
                rows[f"search {budget:.0f}s"] = churnops_row(dataset, held, budget)
                print(name, budget, rows[f"search {budget:.0f}s"], flush=True)
                if not args.no_flaml:
                    rows[f"flaml {budget:.0f}s"] = flaml_row(
                        train, test, target, budget, args.threads, ids
                    )
                    print(name, "flaml", budget, rows[f"flaml {budget:.0f}s"], flush=True)
            results["tables"][name] = {
                "train_rows": len(dataset.target),
                "data_report": dataset.report.render(),
                "id_column": dataset.id_column,
                "rows": rows,
            }
        if args.encoding:
            results["encoding"] = encoding_study(folder)
    print(
        f"\n{'table':8} {'run':12} {'F1':>6} {'AUC':>6} {'secs':>6} {'F1/FLAML':>8} "
        f"{'AUC/FLAML':>9}  chosen"
    )
    for name, table in results["tables"].items():
        for run, r in table["rows"].items():
            peer = (
                table["rows"].get(f"flaml {run.split()[-1]}") if run.startswith("search") else None
            )
            ratios = (
                f"{r['f1'] / peer['f1']:8.3f} {r['roc_auc'] / peer['roc_auc']:9.3f}"
                if peer
                else f"{'':8} {'':9}"
            )
            chosen = r.get("chosen") or r.get("best_learner")
            print(
                f"{name:8} {run:12} {r['f1']:6.3f} {r['roc_auc']:6.3f} {r['seconds']:6.1f} "
                f"{ratios}  {chosen}"
            )
    for r in results.get("encoding", []):
        print(
            f"encoding {r['table']:12} {r['column']:8} {r['variant']:17} F1 {r['f1']:.3f} "
            f"AUC {r['roc_auc']:.3f}  (rule: {r['rule']}: {r['why']})"
        )
    write_results(args.out, results)


if __name__ == "__main__":
    main()
