"""Layer 2: paired comparison of RunResults (bootstrap CIs, McNemar, flips) and the gate's rules over it."""

from harness.comparison.compare import Comparison, RunComparison, compare_runs
from harness.comparison.gate import GateRules, RuleOutcome, load_rules, run_gate

__all__ = ["Comparison", "GateRules", "RuleOutcome", "RunComparison", "compare_runs", "load_rules", "run_gate"]
