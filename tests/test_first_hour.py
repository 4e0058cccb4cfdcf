"""A new user's first hour, as it went on 2026-11-30: each stumble, now a test against real
servers (the switch to another table, one-line errors, names and files that say what they are).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from click.testing import Result

from churnops import data, ledger
from churnops.config import Settings
from churnops.registry import versions
from tests.conftest import ok, run_churnops, start_api, stop_api, train_version

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
    assert versions.alias_version(settings) == 1

    moved = ok(cli("promote", "--allow-schema-change", "--reason", "the CRM export", "--json"))
    assert (moved["from_version"], moved["to_version"], moved["override"]) == (1, 2, True)
    entry = ledger.entries(settings)[-1]
    assert entry.reason == "schema change: the CRM export" and entry.override

    back = cli("rollback", "--json")
    assert back.exit_code == 1 and "--allow-schema-change" in back.stderr
    ok(cli("rollback", "--allow-schema-change", "--reason", "back to the built-in table", "--json"))
    assert versions.alias_version(settings) == 1


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
    assert versions.alias_version(settings) == 1


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    [line] = [x for x in stderr.splitlines() if x.startswith("error:")]
    return line


def test_writing_to_a_place_that_cannot_be_written_is_one_error_line_before_any_work(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    refused = cli("data", "generate", "--out", "/proc/churn.csv")
    assert refused.exit_code == 1
    assert "cannot write /proc/churn.csv" in _one_error_line(refused.stderr)
    table = tmp_path / "in.csv"
    data.write_generated(table, rows=100)
    scored = cli("score", str(table), "/proc/scores.csv")
    assert scored.exit_code == 1
    assert "cannot write /proc/scores.csv" in _one_error_line(scored.stderr)
    parquet_out = cli("score", str(table), str(tmp_path / "scores.parquet"))
    assert parquet_out.exit_code == 1 and "writes CSV" in _one_error_line(parquet_out.stderr)


def test_data_generate_writes_parquet_for_a_parquet_name_and_says_it_made_the_folder(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    out = tmp_path / "new" / "folder" / "churn.parquet"
    done = cli("data", "generate", "--rows", "200", "--out", str(out))
    assert done.exit_code == 0
    assert len(pd.read_parquet(out)) == 200  # Parquet, not CSV under a .parquet name
    assert f"created the folder {out.parent}" in done.stderr


def test_a_tracking_uri_that_is_not_an_address_is_one_error_line(
    env: dict[str, str],
) -> None:
    done = run_churnops("status", env={**env, "MLFLOW_TRACKING_URI": "notaurl"})
    assert done.returncode == 1
    assert "MLFLOW_TRACKING_URI ('notaurl') is not an address" in _one_error_line(done.stderr)


def test_the_prediction_api_given_as_the_tracking_uri_is_named_for_what_it_is(
    env: dict[str, str], tmp_path: Path
) -> None:
    api = start_api(env, tmp_path / "serve.log", "--workers", "1")
    try:
        done = run_churnops("status", env={**env, "MLFLOW_TRACKING_URI": api.url})
    finally:
        stop_api(api)
    assert done.returncode == 1
    assert "is the churnops prediction API, not an MLflow tracking server" in _one_error_line(
        done.stderr
    )
    # Not a terminal: the API logged JSON lines only, without uvicorn's ANSI color_message.
    logged = api.log.read_text().splitlines()
    assert logged[0].startswith("churnops API: ")  # the banner, on stdout
    lines = [json.loads(line) for line in logged[1:] if line.strip()]
    assert any(line["logger"] == "uvicorn.error" for line in lines)
    assert not any("color_message" in line for line in lines)


def test_a_configuration_error_names_the_setting_but_never_echoes_the_token(
    env: dict[str, str],
) -> None:
    done = run_churnops("status", env={**env, "CHURNOPS_API_TOKEN": "short-secret"})
    assert done.returncode == 1
    line = _one_error_line(done.stderr)
    assert "api_token" in line and "at least 16 characters" in line
    assert "short-secret" not in done.stderr


def test_a_usage_error_exits_64_not_2_which_means_the_server_is_down(
    cli: Callable[..., Result],
) -> None:
    assert cli("promote", "--no-such-option").exit_code == 64
    assert cli("--help").exit_code == 0


def test_logs_are_json_lines_off_a_terminal_and_text_lines_when_asked(
    env: dict[str, str],
) -> None:
    trained = run_churnops("train", "--seed", "3", env=env)
    assert trained.returncode == 0, trained.stderr
    records = [json.loads(x) for x in trained.stderr.splitlines() if x.startswith("{")]
    fitting = [r for r in records if r["message"].startswith("fitting Logistic regression")]
    assert fitting and fitting[0]["logger"] == "churnops.training"  # progress while it fits
    assert "View run" not in trained.stdout + trained.stderr
    text = run_churnops("--log-format", "text", "train", "--seed", "3", env=env)
    assert re.search(r"^\d\d:\d\d:\d\d INFO churnops.training: fitting", text.stderr, re.MULTILINE)
    assert not any(x.startswith('{"time"') for x in text.stderr.splitlines())


def test_up_and_serve_on_a_taken_port_fail_before_training_or_printing_an_address(
    env: dict[str, str], settings: Settings
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        up = run_churnops("up", "--port", port, env=env)
        serve = run_churnops("serve", "--port", port, env=env)
    assert up.returncode == 1 and f"127.0.0.1:{port} is already in use" in up.stderr
    assert versions.list_versions(settings) == []  # nothing was trained or promoted
    assert serve.returncode == 1 and "churnops API:" not in serve.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--data", "/no/such.csv"],
        ["score", "/no/such.csv", "out.csv"],
        ["labels", "add", "/no/such.csv"],
    ],
)
def test_a_missing_input_file_is_refused_before_mlflow_is_even_imported(args: list[str]) -> None:
    script = (
        "import sys\n"
        "from churnops.cli import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit as exc:\n"
        "    print(exc.code, 'mlflow' in sys.modules, 'sklearn' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.split() == ["1", "False", "False"], done.stderr
    assert "error: data file /no/such.csv does not exist" in done.stderr
