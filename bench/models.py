"""Model benchmark: logreg, hgb and auto on the built-in data and on the real telecom table.

Each model is trained exactly as `churnops train --model KIND` trains it (seeded 75/25 stratified
split, seed 42, threshold tuned for F1 by 5-fold cross-validation on the training part) and
judged on the held-out part. The anchor is the course's logistic regression (logreg) on the same
data in the same run; ratios are F1 / logreg's F1. Training time is the whole of
`training.train` (cross-validation, threshold tuning, refit, ONNX export and its check), without
MLflow logging.

    .venv/bin/python bench/models.py [--shared-data DIR] [--out bench/results/models.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from churnops import data, training

KINDS: tuple[training.ModelKind, ...] = ("logreg", "hgb", "auto")


def telecom(shared: Path, folder: Path) -> Path:
    """The 80% and 20% files concatenated as text, as the issue defines the table."""
    head, *rows = (shared / "telecom-churn-bigml-80.csv").read_text().splitlines()
    rows += (shared / "telecom-churn-bigml-20.csv").read_text().splitlines()[1:]
    path = folder / "telecom-churn.csv"
    path.write_text("\n".join([head, *rows]) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared-data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=Path("bench/results/models.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        datasets = {
            "built-in (5,000 rows)": data.from_frame(data.generate(seed=args.seed)),
            "telecom 80+20 (3,328 rows)": data.load_table(
                telecom(args.shared_data, Path(tmp)), target="Churn"
            ),
        }
        rows = []
        for name, dataset in datasets.items():
            anchor_f1 = None
            for kind in KINDS:
                result = training.train(dataset, seed=args.seed, kind=kind)
                m = result.metrics
                anchor_f1 = m["f1"] if kind == "logreg" else anchor_f1
                rows.append(
                    {
                        "data": name,
                        "model": kind,
                        "chosen": result.kind,
                        "f1": m["f1"],
                        "roc_auc": m["roc_auc"],
                        "accuracy": m["accuracy"],
                        "precision": m["precision"],
                        "recall": m["recall"],
                        "threshold": result.threshold,
                        "cv_f1": result.cv_f1,
                        "train_seconds": result.seconds,
                        "f1_vs_logreg": m["f1"] / anchor_f1 if anchor_f1 else None,
                        "inference": "onnx" if result.export.onnx else "sklearn",
                    }
                )
    print(
        f"{'data':28} {'model':7} {'chosen':7} {'F1':>6} {'AUC':>6} {'acc':>6} "
        f"{'thr':>5} {'train s':>8} {'F1/logreg':>9}  inference"
    )
    for r in rows:
        print(
            f"{r['data']:28} {r['model']:7} {r['chosen']:7} {r['f1']:6.3f} {r['roc_auc']:6.3f} "
            f"{r['accuracy']:6.3f} {r['threshold']:5.2f} {r['train_seconds']:8.1f} "
            f"{r['f1_vs_logreg']:9.2f}  {r['inference']}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(),
                "machine": platform.platform(),
                "seed": args.seed,
                "rows": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
