"""The gate's pure criteria, without servers: the quality floor, the signature check, and which
criteria --force may override."""

from __future__ import annotations

from churnops import gate


def test_the_quality_criterion_uses_the_threshold_it_is_given_and_the_baseline() -> None:
    assert gate.check_quality(0.70, 0.40, 0.60).passed
    assert not gate.check_quality(0.70, 0.40, 0.75).passed
    assert not gate.check_quality(0.45, 0.50, 0.0).passed  # no better than always-churn
    assert not gate.check_quality(None, None, 0.60).passed


def test_the_signature_check_allows_widening_and_new_columns_but_not_drops_or_narrowing() -> None:
    current = [{"name": "tenure", "type": "long"}, {"name": "plan", "type": "string"}]
    widened = [{"name": "tenure", "type": "double"}, {"name": "plan", "type": "string"}]
    added = [*current, {"name": "region", "type": "string"}]
    dropped = [{"name": "tenure", "type": "long"}]
    narrowed = [{"name": "tenure", "type": "integer"}, {"name": "plan", "type": "string"}]
    assert gate.check_signature(current, widened, 1).passed
    assert gate.check_signature(current, added, 1).passed
    refused = gate.check_signature(current, dropped, 1)
    assert not refused.passed and "- plan (string): dropped by the candidate" in refused.detail
    assert not gate.check_signature(current, narrowed, 1).passed


def test_only_quality_criteria_may_be_forced() -> None:
    report = gate.GateReport(
        3,
        (
            gate.Criterion(gate.Criteria.HELD_OUT_F1, False, "0.5", ">= 0.60"),
            gate.Criterion(
                gate.Criteria.SMOKE_TEST, False, "failed", "loads and predicts its example"
            ),
        ),
    )
    assert [c.name for c in report.failures if c.name in gate.SAFETY_CRITERIA] == ["smoke test"]
    assert report.to_dict()["digests"] == {}
