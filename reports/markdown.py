"""Markdown for a pull-request comment: the headline table first, details collapsible, under 60k characters."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from harness.comparison.compare import Comparison, Flip, MetricComparison, RunComparison, TaskComparison
from harness.comparison.gate import RuleOutcome

LIMIT = 60_000
ALPHA = 0.05


def format_number(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.0f}"


def format_p_value(value: float | None) -> str:
    """A p-value readable at a glance: three decimals, or scientific notation below 0.001 (never 0.000...)."""
    if value is None:
        return "–"
    return f"{value:.1e}" if value < 1e-3 else f"{value:.3f}"


def significance_marker(metric: MetricComparison) -> str:
    if metric.p_value is None or metric.p_value >= ALPHA or metric.delta == 0:
        return "·"
    better = (metric.delta > 0) == metric.higher_is_better
    return "▲ better" if better else "▼ worse"


def headline(comparison: RunComparison, forgetting: Sequence[str] = ()) -> str:
    lines = [f"### {comparison.candidate_label} vs {comparison.baseline_label}", ""]
    lines += _metric_table([t for t in comparison.tasks.values() if t.task not in forgetting])
    panel = [t for t in comparison.tasks.values() if t.task in forgetting]
    if panel:
        lines += ["", "#### Forgetting (general-domain perplexity, lower is better)", "", *_metric_table(panel)]
    lines.append("")
    lines.append(
        f"▲/▼: p < {ALPHA} (paired permutation; exact McNemar for exact match). MDE: the smallest "
        "difference this sample size detects with 80% power."
    )
    return "\n".join(lines)


def _metric_table(tasks: Sequence[TaskComparison]) -> list[str]:
    lines = [
        "| task | metric | baseline | candidate | Δ | 95% CI of Δ | p | MDE | |",
        "|---|---|---:|---:|---:|---|---:|---:|---|",
    ]
    for task in tasks:
        for m in task.metrics:
            ci = f"[{format_number(m.ci_low)}, {format_number(m.ci_high)}]" if m.ci_low is not None else "–"
            errors = f" ({m.candidate_errors} judge errors)" if m.candidate_errors else ""
            lines.append(
                f"| {task.task} | {m.metric}{errors} | {format_number(m.baseline)} | {format_number(m.candidate)} | "
                f"{m.delta:+.4g} | {ci} | {format_p_value(m.p_value)} | {format_number(m.mde)} | "
                f"{significance_marker(m)} |"
            )
    return lines


def _clip(text: str | None, limit: int = 300) -> str:
    """Sample text as one table cell: clipped, its HTML escaped (report.md is posted as a PR comment, where raw
    tags from a model's output would render or break the page), on one line, pipes escaped."""
    text = text or ""
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return html.escape(text, quote=False).replace("\n", " ").replace("|", "\\|")


def _flip_table(title: str, flips: Sequence[Flip]) -> str:
    if not flips:
        return ""
    rows = [f"**{title}**", "", "| id | Δ | baseline output | candidate output | reference |", "|---|---:|---|---|---|"]
    rows += [
        f"| {_clip(f.id)} | {f.delta:+.3g} | {_clip(f.baseline_output)} | {_clip(f.candidate_output)} | "
        f"{_clip(' / '.join(f.references))} |"
        for f in flips
    ]
    return "\n".join(rows) + "\n"


def _pairwise(comparison: RunComparison) -> str:
    if not comparison.pairwise:
        return ""
    rows = ["| task | n | win | tie | loss | position consistency | errors |", "|---|---:|---:|---:|---:|---:|---:|"]
    for task in comparison.pairwise["tasks"].values():
        rows.append(
            f"| {task['task']} | {task['n']} | {task['win_rate']:.2f} | {task['tie_rate']:.2f} | "
            f"{task['loss_rate']:.2f} | {task['position_consistency']:.2f} | {task['n_errors']} |"
        )
    return (
        f"<details><summary>Pairwise judge ({comparison.pairwise['rubric']}, candidate vs baseline)</summary>"
        "\n\n" + "\n".join(rows) + "\n\n</details>"
    )


def gate_summary(outcomes: Sequence[RuleOutcome]) -> str:
    passed = all(o.passed for o in outcomes)
    lines = [f"### Gate: {'✅ passed' if passed else '❌ failed'}", "", "| rule | result | detail |", "|---|---|---|"]
    lines += [
        f"| {o.rule.task}/{o.rule.metric} | {'pass' if o.passed else '**FAIL**'} | {_clip(o.detail)} |"
        for o in outcomes
    ]
    return "\n".join(lines)


def data_findings(training: dict[str, Any]) -> list[str]:
    """What the training data checks found and what was done about it, from an adapter's manifest."""
    found = training.get("data_report", {})
    config = training.get("config", {})
    duplicates = "dropped" if config.get("drop_duplicates", True) else "kept"
    leaked = "dropped" if config.get("drop_leaked", True) else "kept"
    checks = [
        ("exact_duplicates", f"exact duplicate {{rows}} ({duplicates})"),
        ("normalized_duplicates", f"near-duplicate {{rows}} ({duplicates})"),
        ("leaked", f"{{rows}} leaked into eval tasks ({leaked})"),
        ("over_long", f"{{rows}} over max_seq_len {config.get('max_seq_len', '?')} (truncated)"),
        ("skipped_bad_rows", "malformed {rows} (skipped)"),
    ]
    findings = [
        f"{found[key]} " + what.format(rows="row" if found[key] == 1 else "rows")
        for key, what in checks
        if found.get(key)
    ]
    rows = f"{training.get('train_rows', '?')} training and {training.get('eval_rows', '?')} eval rows"
    return [rows, *(findings or ["no duplicate, leaked, over-long or malformed rows"])]


def render_markdown(comparison: Comparison, gate: Sequence[RuleOutcome] = ()) -> str:
    """The report; detail sections are dropped (and said so) once the text would pass 60k characters."""
    parts = [headline(c, comparison.forgetting) for c in comparison.comparisons]
    if comparison.training:
        parts.append("**Training data:** " + "; ".join(data_findings(comparison.training)))
    if gate:
        parts.insert(0, gate_summary(gate))
    details = []
    for run_comparison in comparison.comparisons:
        details.append(_pairwise(run_comparison))
        for task in run_comparison.tasks.values():
            body = _flip_table("Most improved", task.improved) + "\n" + _flip_table("Most regressed", task.regressed)
            if body.strip():
                details.append(
                    f"<details><summary>{task.task}: samples that changed most ({task.flip_score})"
                    f"</summary>\n\n{body}\n</details>"
                )
    text = "\n\n".join(parts)
    for index, section in enumerate(d for d in details if d):
        if len(text) + len(section) + 200 > LIMIT:
            text += f"\n\n_{len(details) - index} detail sections left out to stay under {LIMIT:,} characters._"
            break
        text += "\n\n" + section
    return text + "\n"
