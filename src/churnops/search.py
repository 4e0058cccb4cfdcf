"""`churnops train --search BUDGET`: model families and their hyper-parameters searched by
cross-validation on the training split within a wall-clock budget, the default models first.

Why Optuna rather than scikit-learn's successive halving: the budget is seconds, and a study
stops on a timeout and lets each trial be skipped before it starts when its predicted cost would
pass the deadline, so the search ends within a trial's noise of the budget; successive halving
sizes its rounds in samples or iterations, so its wall clock is known only after it ran (and
one halving search covers one estimator's grid, not a choice of families with their own
spaces, which Optuna's define-by-run trials express directly). Its TPE sampler also spends the
later trials near the good ones, where a fixed random grid would not.

Every trial is scored exactly as `--model auto` scores its candidates (F1 at the threshold
tuned by the same 5 stratified folds), and the defaults (`auto`'s candidates) are the first
trials, so the chosen model is never worse on cross-validation than the default.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# NB: below this the default candidates alone would not fit in the budget on most tables.
MIN_BUDGET_SECONDS = 5.0
MAX_BUDGET_SECONDS = 24 * 3600.0
# NB: a trial is skipped when its predicted seconds times this would pass the deadline: fit
# times varied by up to ~40% between equal fits on this shared 2-core machine.
COST_MARGIN = 1.5
# NB: a family not yet fitted is predicted at this multiple of the dearest rate seen.
UNSEEN_FAMILY = 2.0
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
_BUDGET = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$", re.IGNORECASE)


def parse_budget(text: str) -> float | None:
    """Seconds of a budget written as ``90``, ``60s``, ``5m`` or ``1h``; None for ``auto``
    (no search: the fast default). ValueError says what is accepted."""
    if text.strip().lower() == "auto":
        return None
    match = _BUDGET.match(text)
    if not match:
        raise ValueError(
            f"{text!r} is not a time budget: give seconds or minutes such as 60s, 5m or 1h "
            "(or auto for the fast default without a search)"
        )
    seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not MIN_BUDGET_SECONDS <= seconds <= MAX_BUDGET_SECONDS:
        raise ValueError(
            f"a search budget must be between {MIN_BUDGET_SECONDS:.0f}s and "
            f"{MAX_BUDGET_SECONDS / 3600:.0f}h (got {text!r})"
        )
    return seconds


@dataclass(frozen=True)
class Trial:
    """One configuration fitted: its family, parameters (empty for a default), cross-validated
    F1 at its tuned threshold and seconds."""

    number: int
    family: str
    params: dict[str, Any]
    cv_f1: float
    seconds: float
    default: bool = False


@dataclass(frozen=True)
class SearchRecord:
    """What a search did: its budget, the time it used and every trial."""

    budget_seconds: float
    seconds: float
    trials: tuple[Trial, ...]
    best: Trial
    default_cv_f1: float
    notes: list[str] = field(default_factory=list)

    @property
    def completed(self) -> int:
        """How many configurations were fitted (defaults included)."""
        return len(self.trials)

    def to_dict(self) -> dict[str, Any]:
        """The record as the run's search/trials.json keeps it."""
        return {
            "budget_seconds": self.budget_seconds,
            "seconds": self.seconds,
            "completed_trials": self.completed,
            "best": asdict(self.best),
            "default_cv_f1": self.default_cv_f1,
            "notes": self.notes,
            "trials": [asdict(t) for t in self.trials],
        }

    def params(self) -> dict[str, Any]:
        """The run parameters that name the search and its choice (what `reproduce` refits)."""
        return {
            "search_budget_seconds": self.budget_seconds,
            "search_seconds": round(self.seconds, 3),
            "search_trials": self.completed,
            "search_best_family": self.best.family,
            "search_best_params": json.dumps(self.best.params, sort_keys=True),
            "search_best_cv_f1": self.best.cv_f1,
            "search_default_cv_f1": self.default_cv_f1,
        }


def _suggest(trial: Any, family: str) -> dict[str, Any]:
    """The hyper-parameters of ``family`` for one trial (ranges around scikit-learn's defaults,
    bounded so that no one fit costs more than a few default fits)."""
    if family == "logreg":
        return {
            "C": trial.suggest_float("logreg_C", 1e-3, 100.0, log=True),
            "class_weight": trial.suggest_categorical("logreg_class_weight", ["balanced", None]),
        }
    if family == "hgb":
        return {
            "learning_rate": trial.suggest_float("hgb_learning_rate", 0.01, 0.3, log=True),
            "max_iter": trial.suggest_int("hgb_max_iter", 50, 400, log=True),
            "max_leaf_nodes": trial.suggest_int("hgb_max_leaf_nodes", 4, 64, log=True),
            "min_samples_leaf": trial.suggest_int("hgb_min_samples_leaf", 5, 200, log=True),
            "l2_regularization": trial.suggest_float("hgb_l2_regularization", 1e-4, 10.0, log=True),
            "max_features": trial.suggest_float("hgb_max_features", 0.3, 1.0),
        }
    if family == "rf":
        return {
            "n_estimators": trial.suggest_int("rf_n_estimators", 50, 300, log=True),
            "max_features": trial.suggest_float("rf_max_features", 0.1, 0.9),
            "min_samples_leaf": trial.suggest_int("rf_min_samples_leaf", 2, 50, log=True),
            "class_weight": trial.suggest_categorical(
                "rf_class_weight", ["balanced_subsample", None]
            ),
        }
    raise ValueError(f"no search space for family {family!r}")


def _complexity(family: str, params: dict[str, Any]) -> float:
    """A fit's relative cost within its family (1 for its defaults), for predicting seconds."""
    if family == "hgb":
        leaves = params.get("max_leaf_nodes", 31)
        return params.get("max_iter", 100) / 100 * math.sqrt(leaves / 31)
    if family == "rf":
        # NB: its default tries sqrt(n) features per split, ~0.3 of a churn table's columns.
        return (
            params.get("n_estimators", 200) / 200 * max(params.get("max_features", 0.3), 0.3) / 0.3
        )
    return 1.0


class _Costs:
    """Seconds per unit of complexity seen so far, per family, to predict a trial's time."""

    def __init__(self) -> None:
        self._rate: dict[str, float] = {}
        self.cheapest = math.inf

    def add(self, family: str, params: dict[str, Any], seconds: float) -> None:
        rate = seconds / _complexity(family, params)
        self._rate[family] = max(self._rate.get(family, 0.0), rate)
        self.cheapest = min(self.cheapest, seconds)

    def predict(self, family: str, params: dict[str, Any]) -> float:
        rate = self._rate.get(family, UNSEEN_FAMILY * max(self._rate.values(), default=0.0))
        return rate * _complexity(family, params)


Fit = Callable[[str, dict[str, Any]], Any]


def run(
    fit: Fit,
    families: Sequence[str],
    defaults: Sequence[str],
    budget: float,
    seed: int,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[Any, SearchRecord]:
    """Fit each of ``defaults`` with its default parameters, then Optuna trials over
    ``families`` until ``budget`` seconds have passed since the call; the best fitted model
    (``fit``'s result, whose ``best_score_`` is its cross-validated F1) and the record.

    Ties go to the earlier trial, so a default is kept unless something beats it.
    """
    import optuna
    from threadpoolctl import threadpool_limits

    # NB: one compute thread per fit: with OpenMP's threads on a loaded 2-core machine one
    # gradient-boosting tuning on 7,500 rows took 241 s instead of 3.6 s, and a fit time that
    # can swing 60-fold cannot be predicted against a deadline. Models are unchanged by it.
    with threadpool_limits(limits=1):
        return _run(fit, families, defaults, budget, seed, clock, optuna)


def _run(
    fit: Fit,
    families: Sequence[str],
    defaults: Sequence[str],
    budget: float,
    seed: int,
    clock: Callable[[], float],
    optuna: Any,
) -> tuple[Any, SearchRecord]:
    start = clock()
    deadline = start + budget
    trials: list[Trial] = []
    skipped = 0
    costs = _Costs()
    best: tuple[Any, Trial] | None = None

    def attempt(family: str, params: dict[str, Any], default: bool) -> float:
        nonlocal best
        began = clock()
        model = fit(family, params)
        seconds = clock() - began
        costs.add(family, params, seconds)
        score = float(model.best_score_)
        tried = Trial(len(trials), family, params, score, seconds, default)
        trials.append(tried)
        log.info(
            "trial %d: %s %s: cv f1 %.4f in %.1f s", tried.number, family, params, score, seconds
        )
        if best is None or score > best[1].cv_f1:
            best = (model, tried)
        return score

    for family in defaults:
        attempt(family, {}, default=True)
    default_cv_f1 = max(t.cv_f1 for t in trials)
    notes = []
    if clock() > deadline:
        notes.append(
            f"the default models alone took {clock() - start:.1f} s, over the budget of "
            f"{budget:.0f} s: nothing else was tried"
        )

    def objective(trial: Any) -> float:
        family = trial.suggest_categorical("family", list(families))
        params = _suggest(trial, family)
        predicted = costs.predict(family, params)
        if clock() + COST_MARGIN * predicted > deadline:
            nonlocal skipped
            skipped += 1
            raise optuna.TrialPruned(f"predicted {predicted:.1f} s would pass the deadline")
        return attempt(family, params, default=False)

    def stop_when_nothing_fits(study: Any, _: Any) -> None:
        if deadline - clock() < COST_MARGIN * costs.cheapest:
            study.stop()

    remaining = deadline - clock()
    if remaining > COST_MARGIN * costs.cheapest:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        # NB: a configuration scikit-learn refuses fails its trial, not the search.
        study.optimize(
            objective, timeout=remaining, callbacks=[stop_when_nothing_fits], catch=(ValueError,)
        )
        failed = sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials)
        if failed:
            notes.append(f"{failed} trials failed to fit and were left out")
    if skipped:
        notes.append(f"{skipped} sampled configurations were not fitted: predicted past the budget")
    assert best is not None, "at least one default is always fitted"
    model, chosen = best
    used = clock() - start
    if used < budget:
        notes.append(
            f"stopped {budget - used:.1f} s before the budget: no trial was predicted to fit "
            f"(the cheapest took {costs.cheapest:.1f} s)"
        )
    record = SearchRecord(budget, used, tuple(trials), chosen, default_cv_f1, notes)
    return model, record
