"""The quality gate: a pure decision on a version's metrics, stored with it in the registry."""

from __future__ import annotations

from dataclasses import dataclass

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
