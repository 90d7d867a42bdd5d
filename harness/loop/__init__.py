"""Orchestration: `harness loop` (data -> train -> evaluate base and tuned -> compare -> report -> gate), its suite
and its history."""

from harness.loop.history import read_history
from harness.loop.pipeline import LoopOptions, LoopOutcome, run_loop
from harness.loop.suite import Suite, load_suite

__all__ = ["LoopOptions", "LoopOutcome", "Suite", "load_suite", "read_history", "run_loop"]
