"""The typed results the CLI prints (monitor, compare, challenger status, reproduce): their JSON
keeps the keys, order and values `--json` has always printed, and their text the lines the
commands have always printed. Built by hand, no servers."""

from __future__ import annotations

import json

from click.testing import CliRunner

from churnops import ledger
from churnops.challenger import SlotStatus
from churnops.cli import main
from churnops.monitoring import compare, findings
from churnops.monitoring.drift import ColumnDrift
from churnops.monitoring.paired import Difference
from churnops.monitoring.realised import Interval
from churnops.reproduce import MetricCheck, Reproduction
from churnops.serving.routing import Slot

UNTIL = "2026-06-01T00:00:00+00:00"


def _comparison(run_id: str | None = None) -> compare.Comparison:
    f1 = Difference(0.70, 0.74, 0.04, 0.01, 0.07, 0.015, 0.01, "bootstrap, paired")
    auc = Difference(0.80, 0.83, 0.03, 0.01, 0.05, 0.01, 0.002, "DeLong, paired")
    shadow = compare.Shadow(
        rows=1000,
        agreement=0.9,
        rank_correlation=0.95,
        predicted_churn=compare.Sides(0.25, 0.3),
        labelled=400,
        f1=f1,
        mcnemar={"a_only": 10, "b_only": 25, "p_value": 0.01},
        roc_auc=auc,
    )
    canary = compare.Canary(
        rows=compare.Sides(900, 100),
        predicted_churn=compare.Sides(0.25, None),
        labelled=compare.Sides(0, 0),
    )
    verdict = compare.Verdict(
        "better", "paired, shadow rows", 400, "challenger F1 ...", 0, True, 0.04, 0.01, 0.07
    )
    latency = compare.Latency(200, {"v1": compare.Timing("onnx", 0.1, 0.25)})
    return compare.Comparison(
        "churn_model", 2, UNTIL, [1], shadow, canary, verdict, latency, run_id
    )


def test_a_comparison_prints_the_keys_compare_json_always_had_in_their_order() -> None:
    document = _comparison().to_dict()
    assert list(document) == [
        "model",
        "challenger",
        "until",
        "production_versions",
        "shadow",
        "canary",
        "verdict",
        "latency",
    ]
    assert list(document["shadow"]) == [
        "rows",
        "agreement",
        "rank_correlation",
        "predicted_churn",
        "labelled",
        "f1",
        "mcnemar",
        "roc_auc",
    ]
    # NB: the canary has no outcomes on one side, so it has no tests yet.
    assert document["canary"] == {
        "rows": {"production": 900, "challenger": 100},
        "predicted_churn": {"production": 0.25, "challenger": None},
        "labelled": {"production": 0, "challenger": 0},
    }
    assert list(document["verdict"]) == [
        "result",
        "basis",
        "labelled",
        "f1_difference",
        "low",
        "high",
        "rows_needed",
        "message",
    ]
    assert document["latency"] == {
        "rows": 200,
        "versions": {"v1": {"engine": "onnx", "p50_ms": 0.1, "p99_ms": 0.25}},
    }
    assert json.loads(json.dumps(document)) == document
    assert _comparison("abc").to_dict()["run_id"] == "abc"


def test_a_verdict_before_any_measured_difference_has_no_difference_keys() -> None:
    verdict = compare.Verdict("no evidence yet", "shadow", 0, "no labelled rows yet", None)
    assert verdict.to_dict() == {
        "result": "no evidence yet",
        "basis": "shadow",
        "labelled": 0,
        "message": "no labelled rows yet",
        "rows_needed": None,
    }
    assert list(verdict.to_dict()) == ["result", "basis", "labelled", "message", "rows_needed"]


def test_a_comparison_renders_the_lines_compare_prints() -> None:
    assert _comparison("abc").render().splitlines() == [
        "churn_model: challenger v2 vs production v1",
        "shadow: 1000 paired rows; labels agree on 90.00%; rank correlation 0.95; predicted "
        "churn 25.00% (production) vs 30.00%; 400 labelled",
        "  McNemar: right only by production 10, only by the challenger 25, p=0.01",
        "  ROC AUC challenger v2 0.8300 vs production 0.8000: challenger minus production "
        "+0.0300 (+0.0100 to +0.0500), DeLong p=0.002",
        "canary: 100 rows answered by the challenger, 900 by production over the same period; "
        "predicted churn - vs 25.00%; labelled 0 / 0",
        "latency per single-row call, measured here on 200 rows: v1 (onnx) p50 0.100 ms, "
        "p99 0.250 ms",
        "verdict: better: challenger F1 ...",
        "logged as run abc in churn_model-monitoring",
    ]


def _version() -> findings.VersionReport:
    drifted = ColumnDrift("tenure_months", "numeric", "ks", 0.001, 0.05, True, 0.3, 500)
    steady = ColumnDrift("plan_type", "categorical", "chi2", 0.4, 0.05, False, 0.01, 500)
    window = findings.Window(
        UNTIL, "2026-06-02T00:00:00+00:00", 500, 100, 3, True, 0.7, 0.65, 0.75, 0.72,
        findings.Band(0.74, 0.7, 0.78), "",
    )  # fmt: skip
    return findings.VersionReport(
        version=2,
        rows=500,
        labelled=100,
        immature=3,
        coverage=0.2,
        first=UNTIL,
        last=UNTIL,
        gate_f1=0.75,
        gate_f1_sd=0.02,
        realised={"f1": Interval(0.7, 0.65, 0.75)},
        estimated={"f1": 0.72},
        estimate_error=0.02,
        band=findings.Band(0.74, 0.7, 0.78),
        calibrated=True,
        drift=findings.Drift((drifted, steady), True, None),
        windows=(window,),
    )


def _report(**extra: object) -> findings.MonitorReport:
    serving = findings.Quality(2, 0.7, 0.65, 0.75)
    previous = findings.Quality(1, 0.8, 0.77, 0.83)
    advice = findings.Advice(1, "realised", serving, previous, "why", "churnops rollback", "go")
    return findings.MonitorReport(
        model="churn_model",
        alias="production",
        since=None,
        until=UNTIL,
        window="1 day, 0:00:00",
        horizon_days=30.0,
        horizon=findings.Horizon(30.0, {"2": 30.0}, [], ""),
        serving_version=2,
        previous_version=1,
        rows=500,
        label_conflicts=0,
        immature=3,
        versions=(_version(),),
        alerts=(findings.Alert("dataset_drift", 2, "v2: dataset drift", {"drifted": 1}),),
        advice=advice,
        moves=(findings.Move(UNTIL, "promote", 1, 2),),
        **extra,  # type: ignore[arg-type]
    )


def test_a_monitor_report_prints_the_keys_monitor_json_always_had_and_the_auc_bound() -> None:
    document = _report().to_dict()
    assert list(document) == [
        "model",
        "alias",
        "since",
        "until",
        "window",
        "horizon_days",
        "horizon",
        "serving_version",
        "previous_version",
        "rows",
        "label_conflicts",
        "immature",
        "versions",
        "alerts",
        "advice",
        "moves",
    ]
    [version] = document["versions"]
    assert list(version) == [
        "version",
        "rows",
        "labelled",
        "immature",
        "coverage",
        "first",
        "last",
        "gate_f1",
        "gate_f1_sd",
        "realised",
        "estimated",
        "estimate_error",
        "band",
        "calibrated",
        "drift",
        "windows",
        "roc_auc_within",
    ]
    assert version["realised"] == {"f1": {"value": 0.7, "low": 0.65, "high": 0.75}}
    assert version["drift"]["dataset_drift"] is True and "note" not in version["drift"]
    assert version["windows"][0]["band"] == {"reference_f1": 0.74, "low": 0.7, "high": 0.78}
    assert document["advice"]["serving"] == {"version": 2, "f1": 0.7, "low": 0.65, "high": 0.75}
    assert document["moves"] == [
        {"time": UNTIL, "action": "promote", "from_version": 1, "to_version": 2}
    ]
    assert document["horizon"] == {
        "in_force_days": 30.0,
        "recorded_days": {"2": 30.0},
        "changed": [],
        "note": "",
    }
    assert json.loads(json.dumps(document)) == document
    done = _report(rolled_back=findings.RolledBack(2, 1, True), run_id="r1").to_dict()
    assert list(done)[-2:] == ["rolled_back", "run_id"]
    assert done["rolled_back"] == {"from_version": 2, "to_version": 1, "changed": True}
    assert findings.Drift((), None, None, note="no reference").to_dict()["note"] == "no reference"


def test_a_monitor_report_renders_the_lines_monitor_prints() -> None:
    refused = findings.RolledBack(2, 1, False, refused="production moved meanwhile")
    assert _report(rolled_back=refused, run_id="r1").render().splitlines() == [
        "churn_model@production: serving v2; 500 stored predictions from the start to "
        f"{UNTIL} (3 with an immature 'retained' outcome)",
        "version      rows  labelled  realised f1 (95% interval)    estimated f1  gate f1  drift",
        "      2       500       100  0.7000 (0.6500-0.7500)              0.7200   0.7500  "
        "tenure_months",
        "ALERT: v2: dataset drift",
        "advice: go",
        "auto-rollback refused: production moved meanwhile",
        "logged as run r1 in churn_model-monitoring",
    ]
    healthy = findings.MonitorReport(
        "m", "production", None, UNTIL, "1 day", 30.0, findings.Horizon(30.0, {}, [], ""),
        None, None, 0, 0, 0, (), (), None, (),
    )  # fmt: skip
    assert healthy.healthy and not _report().healthy
    assert healthy.render().splitlines()[2:] == [
        "no stored predictions of m@production in this range: serve traffic (`churnops "
        "serve`, `churnops score`), or try `churnops simulate`",
        "no alerts",
    ]


def test_the_challenger_status_prints_its_slot_beside_production() -> None:
    entry = ledger.Entry(3, UNTIL, "ana", "challenger", "challenger-set", 1, 2, "", False, None)
    empty = SlotStatus("churn_model", "challenger", 1, None, None, None)
    assert empty.render() == "churn_model@challenger: not set (`churnops challenger set N`)"
    assert empty.to_dict() == {
        "model": "churn_model",
        "alias": "challenger",
        "production_version": 1,
        "challenger": None,
        "since": None,
        "last_move": None,
    }
    shadow = SlotStatus("churn_model", "challenger", 1, Slot(2, "shadow", 100.0), UNTIL, entry)
    assert shadow.render() == (
        f"churn_model@challenger: v2 as a shadow on 100% of rows, beside production v1 "
        f"(since {UNTIL})"
    )
    assert shadow.to_dict()["challenger"] == {"version": 2, "mode": "shadow", "percent": 100.0}
    assert shadow.to_dict()["last_move"] == entry.to_dict()
    promoted = SlotStatus("churn_model", "challenger", 2, Slot(2, "canary", 10.0), None, entry)
    assert promoted.render().endswith(
        "v2 as a canary on 10% of customers, beside production v2; it is production now, so "
        "the API does not use it: clear it or set another"
    )


def test_a_reproduction_renders_what_differs_and_its_json_says_whether_it_is_identical() -> None:
    found = Reproduction(
        "r1", "churn.csv", "d0", "d1", [MetricCheck("f1", 0.5, 0.6)], 250, False, 0.25, ["w"]
    )
    assert found.render().splitlines() == [
        "run r1: re-trained from what it recorded: NOT identical",
        "  data      DIFFERENT: recorded d0, now d1",
        "  f1          DIFFERENT: recorded 0.500000, now 0.600000",
        "  held-out probabilities DIFFERENT on 250 rows (largest difference 0.25)",
        "  warning: w",
    ]
    document = found.to_dict()
    assert document["identical"] is False and document["data_identical"] is False
    assert document["metrics"] == [
        {"name": "f1", "recorded": 0.5, "reproduced": 0.6, "identical": False}
    ]


def test_serve_help_names_the_model_setting_not_one_model() -> None:
    result = CliRunner().invoke(main, ["serve", "--help"], env={"CHURNOPS_MODEL_NAME": "other"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "models:/churn_model" not in text
    assert "Serve models:/MODEL@ALIAS over HTTP" in text
    assert "MODEL is CHURNOPS_MODEL_NAME and ALIAS is CHURNOPS_ALIAS" in text


def test_the_status_table_shows_the_live_column_once_a_version_is_monitored() -> None:
    from datetime import UTC, datetime

    from churnops.lifecycle import Status
    from churnops.registry.versions import VersionInfo

    created = datetime(2026, 6, 1, 9, 30, tzinfo=UTC)
    tags = {"monitor.label_coverage": "0.5", "monitor.rows": "400", "monitor.realised_f1": "0.7"}
    versions = [
        VersionInfo(1, created, "r1", True, {"f1": 0.75}, ("production",), tags),
        VersionInfo(2, created, "r2", False, {}, (), {}),
    ]
    found = Status("http://127.0.0.1:5000", "churn_model", "production", 1, versions)
    assert found.render().splitlines() == [
        "tracking URI: http://127.0.0.1:5000 (answering)",
        "churn_model@production: v1",
        "version  created (UTC)            f1  gate  live f1 (realised/estimated, coverage)"
        + " " * 10
        + "aliases",
        "      1  2026-06-01 09:30:00  0.7500  pass  0.7/-, 50% of 400 rows"
        + " " * 26
        + "production",
        "      2  2026-06-01 09:30:00       -  FAIL  -",
    ]
    document = found.to_dict()
    assert document["reachable"] is True and document["production_version"] == 1
    assert document["versions"][0]["monitor"] == {
        "label_coverage": "0.5",
        "rows": "400",
        "realised_f1": "0.7",
    }
    assert document["versions"][1] == {
        "version": 2,
        "created": created.isoformat(),
        "f1": None,
        "gate_passed": False,
        "aliases": [],
        "run_id": "r2",
        "monitor": {},
    }
    empty = Status("http://x", "churn_model", "production", None, [])
    assert empty.render().splitlines()[1:] == [
        "churn_model@production: not set",
        "no versions yet: run `churnops train`",
    ]


def test_score_and_labels_reports_render_the_lines_their_commands_print() -> None:
    from churnops.monitoring.labels import AddReport
    from churnops.scoring import ScoreReport

    scored = ScoreReport(
        "in.csv", "out.csv", "out.rejects.csv", 3, None, 1000, 990, 10, 0.5, "onnx"
    )
    assert scored.render("churn_model").splitlines() == [
        "scored 990 of 1000 rows of in.csv with churn_model v3 (onnx) in 0.50 s: 2,000 rows/s",
        "output:  out.csv",
        "rejects: out.rejects.csv (10 rows)",
    ]
    added = AddReport("o.csv", "prediction_id", 50, 12, True, 2, 5, "store/labels")
    assert added.render().splitlines() == [
        "added 50 outcomes (12 churned) keyed by prediction_id from o.csv",
        "  2 key(s) have conflicting outcomes in this file: the last wins",
        "  5 prediction_id value(s) match no stored prediction (yet): kept, not counted",
    ]
    again = AddReport("o.csv", "customer_id", 50, 12, False, 0, 0, "store/labels")
    assert again.render() == "o.csv: these 50 outcomes were already added; nothing changed"


def test_a_train_report_prints_the_json_and_lines_train_prints() -> None:
    from churnops.data import DataReport
    from churnops.gate import GateVerdict
    from churnops.lifecycle import TrainReport

    table = DataReport("churn.csv", "churned", 100, 0, 100, {"tenure": "numeric"}, {}, 0.25, {})
    verdict = GateVerdict(True, 0.75, 0.4, 0.6)
    report = TrainReport(
        "r1", 3, {"f1": 0.75, "recall": 0.8}, verdict, table, "logreg", 0.4, {"logreg": 0.7}, 1.25
    )
    assert report.render("churn_model").splitlines()[-6:] == [
        "model: logreg (cross-validated f1 on the training split: logreg=0.7000); threshold "
        "0.4000; fitted in 1.2 s",
        "run r1",
        "registered churn_model version 3",
        "held-out metrics: f1=0.7500  recall=0.8000",
        f"gate: PASS ({verdict.reason})",
        "reproduce: churnops reproduce r1",
    ]
    assert report.render("churn_model").startswith(table.render() + "\n")
    document = report.to_dict()
    assert list(document) == [
        "run_id",
        "version",
        "metrics",
        "gate_passed",
        "gate_reason",
        "model_type",
        "threshold",
        "cv_f1",
        "fit_seconds",
        "data_report",
    ]
    assert document["gate_passed"] is True and document["data_report"] == table.to_dict()


def test_a_diagnosis_is_printed_and_in_the_json_only_when_there_is_one() -> None:
    diagnosis = findings.Diagnosis(
        "concept drift", "no input column of 5 drifted", "churnops train --from-store", "why"
    )
    document = _report(diagnosis=diagnosis).to_dict()
    assert document["diagnosis"]["kind"] == "concept drift"
    assert "diagnosis: why" in _report(diagnosis=diagnosis).render()
    assert "diagnosis" not in _report().to_dict()
    assert "diagnosis:" not in _report().render()
