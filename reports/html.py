"""A self-contained HTML report (no network: styles, script and SVG plots inline): metric bars with CI error
bars, the training loss curve when the candidate came from training, and a filterable per-sample table."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from harness.comparison.compare import Comparison, MetricComparison, RunComparison, TaskComparison
from harness.comparison.gate import RuleOutcome
from reports.markdown import data_findings, format_number, format_p_value, significance_marker

STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}td,th{border:1px solid #ccc;padding:.3rem .5rem;
vertical-align:top}th{background:#f3f3f3}.better{color:#0a7d2c}.worse{color:#b3261e}.charts{display:flex;
flex-wrap:wrap;gap:1rem}.chart{border:1px solid #ddd;padding:.5rem}input{padding:.3rem;width:20rem}
.pass{color:#0a7d2c}.fail{color:#b3261e;font-weight:bold}td.text{max-width:28rem;white-space:pre-wrap}
"""
SCRIPT = """
document.querySelectorAll('input.filter').forEach(function (box) {
  box.addEventListener('input', function () {
    var needle = box.value.toLowerCase();
    document.querySelectorAll('#' + box.dataset.table + ' tbody tr').forEach(function (row) {
      row.style.display = row.textContent.toLowerCase().indexOf(needle) >= 0 ? '' : 'none';
    });
  });
});
"""


def metric_chart(metric: MetricComparison) -> str:
    """Two bars (baseline, candidate); the candidate's error bar is baseline + the delta's 95% CI."""
    width, height, top = 180, 140, 20
    low = metric.baseline + metric.ci_low if metric.ci_low is not None else metric.candidate
    high = metric.baseline + metric.ci_high if metric.ci_high is not None else metric.candidate
    peak = max(metric.baseline, metric.candidate, high, 1e-12)

    def y(value: float) -> float:
        return top + (height - top) * (1 - max(value, 0) / peak)

    bars = []
    for index, (label, value, colour) in enumerate(
        (("baseline", metric.baseline, "#9aa5b1"), ("candidate", metric.candidate, "#3b6fb6"))
    ):
        x = 30 + index * 75
        bars.append(
            f'<rect x="{x}" y="{y(value):.1f}" width="50" height="{height - y(value):.1f}" fill="{colour}"/>'
            f'<text x="{x + 25}" y="{height + 14}" font-size="11" text-anchor="middle">{label}</text>'
            f'<text x="{x + 25}" y="{min(y(value), y(high)) - 4:.1f}" font-size="10" text-anchor="middle">'
            f"{escape(format_number(value))}</text>"
        )
    whisker = (
        f'<line x1="130" x2="130" y1="{y(high):.1f}" y2="{y(low):.1f}" stroke="#111"/>'
        f'<line x1="124" x2="136" y1="{y(high):.1f}" y2="{y(high):.1f}" stroke="#111"/>'
        f'<line x1="124" x2="136" y1="{y(low):.1f}" y2="{y(low):.1f}" stroke="#111"/>'
    )
    title = f"{metric.metric} ({'higher' if metric.higher_is_better else 'lower'} is better)"
    return (
        f'<div class="chart"><div>{escape(title)}</div><svg width="{width}" height="{height + 20}" '
        f'role="img" aria-label="{escape(title)}">{"".join(bars)}{whisker}</svg></div>'
    )


def loss_chart(training: dict[str, Any]) -> str:
    train = [(p["step"], p["loss"]) for p in training.get("loss_curve", [])]
    held_out = [(p["step"], p["eval_loss"]) for p in training.get("eval_curve", [])]
    points = train + held_out
    if not points:
        return ""
    width, height, pad = 520, 220, 30
    max_step = max(step for step, _ in points) or 1
    max_loss = max(loss for _, loss in points) or 1

    def xy(step: float, loss: float) -> str:
        return (
            f"{pad + (width - 2 * pad) * step / max_step:.1f},{height - pad - (height - 2 * pad) * loss / max_loss:.1f}"
        )

    train_line = " ".join(xy(s, v) for s, v in train)
    eval_dots = "".join(
        f'<circle cx="{xy(s, v).split(",")[0]}" cy="{xy(s, v).split(",")[1]}" r="4" fill="#b3261e"/>'
        for s, v in held_out
    )
    return (
        f'<h2>Training</h2><svg width="{width}" height="{height}" role="img" aria-label="loss curve">'
        f'<polyline fill="none" stroke="#3b6fb6" stroke-width="2" points="{train_line}"/>{eval_dots}'
        f'<text x="{pad}" y="15" font-size="12">train loss (line), held-out eval loss (dots); max '
        f"{max_loss:.3g}, {max_step} steps</text></svg>{_step_zero_note(training)}"
    )


def _step_zero_note(training: dict[str, Any]) -> str:
    """The step-0 eval loss is the base as the trainer loads it: quantized under QLoRA, unlike the base that
    `harness run` evaluates by default, so the two need not agree."""
    quant = training.get("config", {}).get("quant", "none")
    if quant == "none" or not any(p["step"] == 0 for p in training.get("eval_curve", [])):
        return ""
    return (
        f'<p class="note">The step-0 eval loss is the base model as trained: {escape(quant)}-quantized, not the '
        "unquantized base the baseline run evaluated.</p>"
    )


def _metric_rows(task: TaskComparison) -> str:
    rows = []
    for m in task.metrics:
        marker = significance_marker(m)
        css = "better" if marker.startswith("▲") else "worse" if marker.startswith("▼") else ""
        rows.append(
            f"<tr><td>{escape(m.metric)}</td><td>{format_number(m.baseline)}</td><td>{format_number(m.candidate)}</td>"
            f'<td class="{css}">{m.delta:+.4g}</td><td>[{format_number(m.ci_low)}, {format_number(m.ci_high)}]</td>'
            f"<td>{format_p_value(m.p_value)}</td><td>{format_number(m.mde)}</td><td>{m.n}</td>"
            f'<td class="{css}">{escape(marker)}</td></tr>'
        )
    header = (
        "<tr><th>metric</th><th>baseline</th><th>candidate</th><th>Δ</th><th>95% CI of Δ</th><th>p</th>"
        "<th>MDE</th><th>n</th><th></th></tr>"
    )
    return f"<table><thead>{header}</thead><tbody>{''.join(rows)}</tbody></table>"


def _sample_table(task: TaskComparison, table_id: str) -> str:
    if not task.samples:
        return ""
    rows = "".join(
        f"<tr><td>{escape(s.id)}</td><td>{s.delta:+.3g}</td><td class='text'>{escape(s.baseline_output or '')}</td>"
        f"<td class='text'>{escape(s.candidate_output or '')}</td><td class='text'>{escape(' / '.join(s.references))}"
        f"</td></tr>"
        for s in task.samples
    )
    return (
        f'<p><input class="filter" data-table="{table_id}" placeholder="filter samples"></p>'
        f'<table id="{table_id}"><thead><tr><th>id</th><th>Δ {escape(task.flip_score or "")}</th>'
        f"<th>baseline output</th><th>candidate output</th><th>reference</th></tr></thead><tbody>{rows}</tbody>"
        "</table>"
    )


def _comparison_section(index: int, comparison: RunComparison, forgetting: Sequence[str]) -> str:
    parts = [f"<h2>{escape(comparison.candidate_label)} vs {escape(comparison.baseline_label)}</h2>"]
    ordered = sorted(comparison.tasks.values(), key=lambda t: t.task in forgetting)
    for task_index, task in enumerate(ordered):
        charts = "".join(metric_chart(m) for m in task.metrics)
        panel = "Forgetting panel: " if task.task in forgetting else ""
        parts.append(
            f"<h3>{panel}{escape(task.task)} ({task.n_shared} shared samples)</h3>{_metric_rows(task)}"
            f'<div class="charts">{charts}</div>{_sample_table(task, f"samples-{index}-{task_index}")}'
        )
    if comparison.pairwise:
        rows = "".join(
            f"<tr><td>{escape(t['task'])}</td><td>{t['win_rate']:.2f}</td><td>{t['tie_rate']:.2f}</td>"
            f"<td>{t['loss_rate']:.2f}</td><td>{t['position_consistency']:.2f}</td></tr>"
            for t in comparison.pairwise["tasks"].values()
        )
        parts.append(
            "<h3>Pairwise judge</h3><table><tr><th>task</th><th>win</th><th>tie</th><th>loss</th>"
            f"<th>position consistency</th></tr>{rows}</table>"
        )
    return "".join(parts)


def sparkline(values: Sequence[float]) -> str:
    if len(values) < 2:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    points = " ".join(
        f"{4 + 112 * i / (len(values) - 1):.1f},{26 - 22 * (v - low) / span:.1f}" for i, v in enumerate(values)
    )
    return f'<svg width="120" height="30"><polyline fill="none" stroke="#3b6fb6" points="{points}"/></svg>'


def trend_section(history: Sequence[dict[str, Any]], limit: int = 8) -> str:
    """Headline metrics of the tuned model across past loop runs (data versions), oldest first."""
    if len(history) < 2:
        return ""
    keys = list(history[-1]["headline"])[:limit]
    header = "".join(f"<th>{escape(k)}</th>" for k in keys)
    rows = "".join(
        f"<tr><td>{escape(entry['created_at'][:19])}</td><td>{escape(entry['data_fingerprint'][:10])}</td>"
        f"<td>{entry['training_steps']}</td>"
        + "".join(f"<td>{format_number(entry['headline'].get(k, {}).get('candidate'))}</td>" for k in keys)
        + "</tr>"
        for entry in history
    )
    lines = "".join(
        f"<td>{sparkline([e['headline'][k]['candidate'] for e in history if k in e['headline']])}</td>" for k in keys
    )
    return (
        f"<h2>Trend across data versions</h2><table><thead><tr><th>loop run</th><th>data</th><th>steps</th>"
        f"{header}</tr></thead><tbody>{rows}<tr><td colspan='3'>trend</td>{lines}</tr></tbody></table>"
    )


def render_html(
    comparison: Comparison, gate: Sequence[RuleOutcome] = (), history: Sequence[dict[str, Any]] = ()
) -> str:
    gate_html = ""
    if gate:
        items = "".join(
            f'<li class="{"pass" if o.passed else "fail"}">{escape(o.rule.task)}/{escape(o.rule.metric)}:'
            f" {escape(o.detail)}</li>"
            for o in gate
        )
        gate_html = f"<h2>Gate: {'passed' if all(o.passed for o in gate) else 'failed'}</h2><ul>{items}</ul>"
    sections = "".join(_comparison_section(i, c, comparison.forgetting) for i, c in enumerate(comparison.comparisons))
    training = ""
    if comparison.training:
        findings = "".join(f"<li>{escape(line)}</li>" for line in data_findings(comparison.training))
        training = f"<h2>Training data</h2><ul>{findings}</ul>{loss_chart(comparison.training)}"
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Evaluation report</title>'
        f"<style>{STYLE}</style></head><body><h1>Evaluation report</h1>"
        f"<p>{comparison.created_at:%Y-%m-%d %H:%M} UTC · seed {comparison.seed}</p>{gate_html}{sections}"
        f"{training}{trend_section(history)}<script>{SCRIPT}</script></body></html>"
    )
