"""The run history page (`harness history --html`): one self-contained HTML file over every recorded run, a table
(date, model, adapter, task, metrics, content hashes) and a trend plot per task and metric across runs, each
point linking the run's report. Filterable like the comparison report; no network."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from harness.core.record import RunResult
from reports.html import SCRIPT, STYLE
from reports.markdown import format_number

PALETTE = ("#3b6fb6", "#9aa5b1", "#c2571a", "#0a7d2c", "#7b3fa0", "#b3261e")
WIDTH, HEIGHT, PAD = 360, 170, 34


@dataclass(frozen=True)
class HistoryRun:
    run: RunResult
    series: str  # its line in the trend plots: "base" / "tuned" for a loop's runs, else the model (+ adapter)
    link: str  # its report (or results.json), relative to the page
    loop_id: str | None = None


def _model_label(run: RunResult) -> tuple[str, str]:
    model = run.spec.model
    adapter = model.adapter_path.rstrip("/").rsplit("/", 1)[-1] if model.adapter_path else "–"
    return model.name, adapter


def _metrics_cell(run: RunResult, task: str) -> str:
    return "<br>".join(
        f"{escape(name)} {escape(format_number(value.value))}" for name, value in run.tasks[task].metrics.items()
    )


def _table(runs: Sequence[HistoryRun]) -> str:
    rows = []
    for item in runs:
        run = item.run
        model, adapter = _model_label(run)
        specs = {spec.name: spec for spec in run.spec.tasks}
        for task in run.tasks:
            spec = specs.get(task)
            hashes = (
                f"model {run.spec.model.fingerprint[:10]}<br>task {spec.fingerprint[:10]}<br>"
                f"data {spec.data_fingerprint[:10]}"
                if spec
                else f"model {run.spec.model.fingerprint[:10]}"
            )
            rows.append(
                f"<tr><td>{run.created_at:%Y-%m-%d %H:%M}</td>"
                f'<td><a href="{escape(item.link)}">{escape(run.run_id)}</a></td><td>{escape(item.series)}</td>'
                f"<td>{escape(model)}</td><td>{escape(adapter)}</td><td>{escape(task)}</td>"
                f"<td>{_metrics_cell(run, task)}</td><td><code>{hashes}</code></td></tr>"
            )
    return (
        '<input class="filter" data-table="runs" placeholder="filter runs (model, task, date ...)">'
        '<table id="runs"><thead><tr><th>date</th><th>run</th><th>series</th><th>model</th><th>adapter</th>'
        f"<th>task</th><th>metrics</th><th>content hashes</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def trend_chart(task: str, metric: str, runs: Sequence[HistoryRun]) -> str:
    """One task-metric across runs in date order: a line per series, each point a link to its run's report."""
    points = [(i, r) for i, r in enumerate(runs) if task in r.run.tasks and metric in r.run.tasks[task].metrics]
    values = [r.run.tasks[task].metrics[metric].value for _, r in points]
    low, high = min(values), max(values)
    span = (high - low) or abs(high) or 1.0
    low, high = low - 0.1 * span, high + 0.1 * span
    last = max(len(runs) - 1, 1)

    def xy(index: int, value: float) -> tuple[float, float]:
        x = PAD + (WIDTH - 2 * PAD + 20) * index / last
        return x, 10 + (HEIGHT - 40) * (1 - (value - low) / (high - low))

    series = list(dict.fromkeys(r.series for _, r in points))
    parts, legend = [], []
    for number, name in enumerate(series):
        colour = PALETTE[number % len(PALETTE)]
        mine = [(xy(i, r.run.tasks[task].metrics[metric].value), r) for i, r in points if r.series == name]
        path = " ".join(f"{x:.1f},{y:.1f}" for (x, y), _ in mine)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        for (x, y), r in mine:
            value = r.run.tasks[task].metrics[metric].value
            tip = f"{r.run.run_id} ({r.run.created_at:%Y-%m-%d %H:%M}, {name}): {format_number(value)}"
            parts.append(
                f'<a href="{escape(r.link)}"><circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{colour}">'
                f"<title>{escape(tip)}</title></circle></a>"
            )
        legend.append(f'<tspan fill="{colour}">■ {escape(name)}</tspan> ')
    axis = (
        f'<text x="2" y="16" font-size="10">{escape(format_number(high))}</text>'
        f'<text x="2" y="{HEIGHT - 30}" font-size="10">{escape(format_number(low))}</text>'
        f'<text x="{PAD}" y="{HEIGHT - 8}" font-size="10">{"".join(legend)}</text>'
    )
    return (
        f'<div class="chart"><div>{escape(task)} / {escape(metric)}</div>'
        f'<svg width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(task)} {escape(metric)} trend">'
        f"{axis}{''.join(parts)}</svg></div>"
    )


def render_history(runs: Sequence[HistoryRun], title: str = "Run history") -> str:
    """The page for `runs` (any order: they are shown by date)."""
    ordered = sorted(runs, key=lambda r: r.run.created_at)
    keys = dict.fromkeys(
        (task, metric) for item in ordered for task, result in item.run.tasks.items() for metric in result.metrics
    )
    charts = "".join(trend_chart(task, metric, ordered) for task, metric in keys)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title><style>{STYLE}</style>"
        f"</head><body><h1>{escape(title)}</h1><p>{len(ordered)} runs, oldest first. Each point links its run's "
        f"report.</p><h2>Trends</h2><div class='charts'>{charts}</div><h2>Runs</h2>{_table(ordered)}"
        f"<script>{SCRIPT}</script></body></html>"
    )
