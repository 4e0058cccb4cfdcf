"""The quality gate: a pure decision on a version's metrics, stored with it in the registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

DEFAULT_GATE_F1 = 0.60


@dataclass(frozen=True)
class GateVerdict:
    """Whether a version may ship, and why."""

    passed: bool
    f1: float
    baseline_f1: float
    gate_f1: float

    @property
    def reason(self) -> str:
        """One line that explains the verdict."""
        if self.f1 < self.gate_f1:
            return f"f1 {self.f1:.4f} is below the gate {self.gate_f1:.2f}"
        if self.f1 <= self.baseline_f1:
            return f"f1 {self.f1:.4f} does not beat the trivial baseline's {self.baseline_f1:.4f}"
        return f"f1 {self.f1:.4f} >= gate {self.gate_f1:.2f} and > baseline {self.baseline_f1:.4f}"


def decide(f1: float, baseline_f1: float, gate_f1: float = DEFAULT_GATE_F1) -> GateVerdict:
    """Pass a version when its F1 reaches the gate and beats the trivial baseline."""
    return GateVerdict(
        passed=f1 >= gate_f1 and f1 > baseline_f1, f1=f1, baseline_f1=baseline_f1, gate_f1=gate_f1
    )


DEFAULT_TOLERANCE = 0.01


class Criteria(StrEnum):
    """The name of each criterion a gate report can hold, as its JSON and text show it: what
    --force may override is decided by these, so a name is typed once, here."""

    HELD_OUT_F1 = "held-out f1"
    SMOKE_TEST = "smoke test"
    SIGNATURE = "signature compatible"
    CHAMPION = "champion vs challenger"
    INPUTS_SENT = "inputs clients send"
    LIVE_COMPARISON = "live comparison"


# NB: --force may override quality criteria with a reason, never these.
SAFETY_CRITERIA = frozenset({Criteria.SMOKE_TEST})
# NB: the champion criterion's value when the champion cannot score the candidate's rows.
NOT_COMPARABLE = "not comparable"

# NB: a column may widen (an integer column becomes a double) without breaking live clients.
_WIDENS_TO = {
    "integer": {"integer", "long", "float", "double"},
    "long": {"long", "double"},
    "float": {"float", "double"},
    "double": {"double"},
    "boolean": {"boolean"},
    "string": {"string"},
}


@dataclass(frozen=True)
class Criterion:
    """One line of the promotion gate report."""

    name: Criteria
    passed: bool
    value: str
    threshold: str
    detail: str = ""


@dataclass(frozen=True)
class GateReport:
    """Every criterion checked before an alias move; the move is allowed when all passed."""

    version: int
    criteria: tuple[Criterion, ...]
    # NB: sha256 of what was gated (model files, threshold), pinned in the ledger entry.
    digests: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when every criterion passed."""
        return all(c.passed for c in self.criteria)

    @property
    def failures(self) -> list[Criterion]:
        """The criteria that failed."""
        return [c for c in self.criteria if not c.passed]

    def render(self) -> str:
        """The report as a text table, one criterion a line, details indented below."""
        lines = [
            f"gate for version {self.version}:",
            f"  {'criterion':<22} {'result':<6} {'value':<24} threshold",
        ]
        for c in self.criteria:
            lines.append(
                f"  {c.name:<22} {'pass' if c.passed else 'FAIL':<6} {c.value:<24} {c.threshold}"
            )
            lines.extend(f"      {line}" for line in c.detail.splitlines() if line)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        """The report as JSON-ready data."""
        return {
            "version": self.version,
            "passed": self.passed,
            "criteria": [c.__dict__ | {"name": str(c.name)} for c in self.criteria],
            "digests": dict(self.digests),
        }


def check_quality(f1: float | None, baseline: float | None, gate_f1: float) -> Criterion:
    """The candidate's held-out F1 reaches its gate and beats the trivial baseline."""
    if f1 is None or baseline is None:
        return Criterion(
            Criteria.HELD_OUT_F1,
            False,
            "unknown",
            f">= {gate_f1:.2f}",
            "the version carries no metrics (registered outside churnops?)",
        )
    verdict = decide(f1, baseline, gate_f1)
    return Criterion(
        Criteria.HELD_OUT_F1,
        verdict.passed,
        f"{f1:.4f}",
        f">= {gate_f1:.2f} and > baseline {baseline:.4f}",
    )


def check_champion(
    candidate_f1: float, champion_f1: float, champion: int, tolerance: float
) -> Criterion:
    """The candidate is not worse than the champion by more than ``tolerance`` on the same data."""
    return Criterion(
        Criteria.CHAMPION,
        candidate_f1 >= champion_f1 - tolerance,
        f"{candidate_f1:.4f} vs v{champion} {champion_f1:.4f}",
        f">= champion - {tolerance:.2f}",
        "both scored on the candidate's held-out split",
    )


def check_signature(
    current: list[dict[str, str]] | None, candidate: list[dict[str, str]], champion: int
) -> Criterion:
    """The candidate accepts every input column the current version accepts, with a compatible
    type, so live API clients cannot break. ``current`` is None when the champion's signature
    cannot be read (a broken version), and then there is nothing to stay compatible with."""
    if current is None:
        return Criterion(
            Criteria.SIGNATURE,
            True,
            "not compared",
            f"accepts every input of v{champion}",
            f"v{champion}'s signature cannot be read",
        )
    offered = {c["name"]: c["type"] for c in candidate}
    problems = []
    for column in current:
        name, kind = column["name"], column["type"]
        if name not in offered:
            problems.append(f"- {name} ({kind}): dropped by the candidate")
        elif offered[name] not in _WIDENS_TO.get(kind, {kind}):
            problems.append(f"~ {name}: {kind} -> {offered[name]}")
    added = [
        f"+ {n} ({t}): new in the candidate"
        for n, t in offered.items()
        if n not in {c["name"] for c in current}
    ]
    return Criterion(
        Criteria.SIGNATURE,
        not problems,
        "compatible" if not problems else f"{len(problems)} incompatible",
        f"accepts every input of v{champion}",
        "\n".join(problems + added),
    )


def check_inputs_sent(
    production: list[dict[str, str]] | None, challenger: list[dict[str, str]], version: int
) -> Criterion:
    """A challenger reads only columns production's clients send: it scores their requests
    (shadow) or answers them (canary), validated against production's fields."""
    threshold = f"reads only inputs v{version} accepts"
    if production is None:
        return Criterion(
            Criteria.INPUTS_SENT,
            False,
            "unknown",
            threshold,
            f"v{version}'s signature cannot be read",
        )
    sent = {c["name"] for c in production}
    missing = [f"+ {c['name']} ({c['type']})" for c in challenger if c["name"] not in sent]
    return Criterion(
        Criteria.INPUTS_SENT,
        not missing,
        "all sent" if not missing else f"{len(missing)} not sent",
        threshold,
        "\n".join(f"{m}: not in production's requests" for m in missing),
    )


def schema_change_only(report: GateReport) -> bool:
    """True when what fails is only that the candidate reads another table: its signature, and
    a champion that cannot score its rows. `--allow-schema-change` overrides exactly that."""
    return bool(report.failures) and all(
        c.name == Criteria.SIGNATURE or (c.name == Criteria.CHAMPION and c.value == NOT_COMPARABLE)
        for c in report.failures
    )
