"""A new user's first hour, as it went on 2026-11-30: each stumble, now a test against real
servers (the switch to another table, one-line errors, names and files that say what they are).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from click.testing import Result

from churnops import data, ledger, registry
from churnops.config import Settings
from tests.conftest import ok, train_version

RENAMED = {
    "tenure_months": "months_as_customer",
    "num_complaints": "complaints",
    "avg_session_minutes": "minutes_per_session",
    "plan_type": "plan",
    "region": "area",
}


def _other_table(folder: Path, name: str = "other.csv") -> Path:
    path = folder / name
    data.generate(rows=1500, seed=9).rename(columns=RENAMED).to_csv(path, index=False)
    return path


def _criteria(result: Result) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads(result.stdout)["gate"]["criteria"]}


def test_switching_production_to_another_table_is_a_deliberate_recorded_step_both_ways(
    cli: Callable[..., Result], settings: Settings, tmp_path: Path
) -> None:
    train_version(cli, "--seed", "1")
    ok(cli("promote", "--json"))
    train_version(cli, "--data", str(_other_table(tmp_path)), "--model", "logreg")

    refused = cli("promote", "--json")
    assert refused.exit_code == 1
    criteria = _criteria(refused)
    assert criteria["signature compatible"]["passed"] is False
    champion = criteria["champion vs challenger"]
    # Not "0.8092 vs v1 0.0000 pass": v1 cannot score rows that lack all its inputs.
    assert (champion["passed"], champion["value"]) == (False, "not comparable")
    assert "needs 5 input(s) v2's table lacks" in champion["detail"]
    assert "--allow-schema-change --reason" in refused.stderr
    assert "needs --reason" in cli("promote", "--allow-schema-change").stderr
    assert registry.alias_version(settings) == 1

    moved = ok(cli("promote", "--allow-schema-change", "--reason", "the CRM export", "--json"))
    assert (moved["from_version"], moved["to_version"], moved["override"]) == (1, 2, True)
    entry = ledger.entries(settings)[-1]
    assert entry.reason == "schema change: the CRM export" and entry.override

    back = cli("rollback", "--json")
    assert back.exit_code == 1 and "--allow-schema-change" in back.stderr
    ok(cli("rollback", "--allow-schema-change", "--reason", "back to the built-in table", "--json"))
    assert registry.alias_version(settings) == 1


def test_allow_schema_change_never_lets_a_version_below_the_f1_gate_through(
    cli: Callable[..., Result], settings: Settings, tmp_path: Path
) -> None:
    train_version(cli, "--seed", "1")
    ok(cli("promote", "--json"))
    table = _other_table(tmp_path)
    train_version(cli, "--data", str(table), "--model", "logreg", "--gate-f1", "0.99")
    refused = cli("promote", "--allow-schema-change", "--reason", "try", "--json")
    assert refused.exit_code == 1
    assert _criteria(refused)["held-out f1"]["passed"] is False
    assert "Pass --force --reason TEXT" in refused.stderr
    assert registry.alias_version(settings) == 1
