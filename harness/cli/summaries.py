"""`--json` output of run, compare and gate: the headline numbers as one JSON document on stdout, so that scripts
need not parse tables. The full records stay in the files each command writes (results.json, comparison.json)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from harness.comparison.compare import Comparison
from harness.comparison.gate import RuleOutcome
from harness.core.record import RunResult


def _number(value: float | None) -> float | None:
    """JSON has no NaN: a value over no samples is null."""
    return None if value is None or math.isnan(value) else value


def run_summary(run: RunResult, results_path: Path) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "results": str(results_path),
        "model": run.spec.model.name,
        "backend": run.spec.model.backend,
        "adapter": run.spec.model.adapter_path,
        "tasks": {
            name: {
                "n_samples": task.n_samples,
                "n_cached": task.n_cached,
                "n_errors": task.n_errors,
                "metrics": {key: _number(value.value) for key, value in task.metrics.items()},
            }
            for name, task in run.tasks.items()
        },
    }


def comparison_summary(comparison: Comparison, out: Path) -> dict[str, Any]:
    return {
        "reports": str(out),
        "comparisons": [
            {
                "baseline": pair.baseline,
                "candidate": pair.candidate,
                "tasks": {
                    name: {
                        m.metric: {
                            key: _number(getattr(m, key))
                            for key in ("baseline", "candidate", "delta", "ci_low", "ci_high", "p_value")
                        }
                        for m in task.metrics
                    }
                    for name, task in pair.tasks.items()
                },
            }
            for pair in comparison.comparisons
        ],
    }


def gate_summary(outcomes: list[RuleOutcome]) -> dict[str, Any]:
    return {
        "passed": all(outcome.passed for outcome in outcomes),
        "rules": [
            {"task": o.rule.task, "metric": o.rule.metric, "passed": o.passed, "detail": o.detail} for o in outcomes
        ],
    }


def dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, allow_nan=False)
