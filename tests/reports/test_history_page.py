"""`harness history --html`: one self-contained page of every run (two loop runs and plain runs of the real
embedded Gemma), a table and trend plots whose points link each run's report, checked in headless Chromium."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote, urlparse

from typer.testing import CliRunner

from harness.cli import app
from harness.core.record import RunResult
from tests.chromium import chromium_page


def _loop_workdir(real_runs: dict[str, Path], workdir: Path) -> list[RunResult]:
    """Two loop runs laid out as `harness loop` lays them out: base and tuned results under runs/, a report folder
    per loop run (made by `harness compare`) and a history.jsonl line each."""
    entries, written = [], []
    start = RunResult.read(real_runs["greedy"]).created_at
    for number, tuned_name in enumerate(("sampled", "regressed")):
        runs = {}
        for offset, (role, name) in enumerate((("base", "greedy"), ("tuned", tuned_name))):
            run = RunResult.read(real_runs[name])
            run = run.model_copy(
                update={
                    "run_id": f"loop{number}-{role}",
                    "created_at": start + timedelta(hours=number, minutes=offset),
                }
            )
            run.write(workdir / "runs" / run.run_id / "results.json")
            runs[role] = run
            written.append(run)
        report = workdir / "reports" / f"loop-{number}"
        result = CliRunner().invoke(
            app,
            [
                "compare",
                str(workdir / "runs" / runs["base"].run_id / "results.json"),
                str(workdir / "runs" / runs["tuned"].run_id / "results.json"),
                "--out",
                str(report),
            ],
        )
        assert result.exit_code == 0, result.output
        entries.append(
            {
                "loop_id": report.name,
                "created_at": runs["tuned"].created_at.isoformat(),
                "data": "data/train.jsonl",
                "data_fingerprint": f"{number:064d}",
                "adapter": str(workdir / "adapters" / f"a{number}"),
                "training_steps": 2,
                "model_calls": 8,
                "base_run": runs["base"].run_id,
                "tuned_run": runs["tuned"].run_id,
                "report": str(report),
                "gate_passed": True,
                "headline": {},
            }
        )
    (workdir / "history.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    return written


def test_the_history_page_tables_every_run_and_plots_trends_linking_reports(
    real_runs: dict[str, Path], tmp_path: Path
) -> None:
    workdir = tmp_path / "loop"
    loop_runs = _loop_workdir(real_runs, workdir)
    plain_runs_dir = real_runs["greedy"].parent.parent  # greedy/, sampled/, regressed/ results.json
    page_path = tmp_path / "site" / "history.html"
    result = CliRunner().invoke(
        app, ["history", "--workdir", str(workdir), "--html", str(page_path), "--runs", str(plain_runs_dir)]
    )
    assert result.exit_code == 0, result.output
    assert f"history page: {page_path} (7 runs)" in " ".join(result.output.split())  # 4 loop runs + 3 plain
    html = page_path.read_text()
    assert "http://" not in html and "https://" not in html  # self-contained

    pairs = {(task, metric) for run in loop_runs for task, r in run.tasks.items() for metric in r.metrics}
    rows_expected = 4 * 2 + 3 * 2  # every run has factual_qa and plain_english
    errors: list[str] = []
    with chromium_page(errors) as page:
        page.goto(page_path.as_uri())
        charts = page.locator(".chart")
        assert charts.count() == len(pairs)
        first = charts.filter(has_text="factual_qa / exact_match")
        assert first.locator("polyline").count() == 3  # base, tuned, and the plain runs' model
        assert first.locator("circle").count() == 7
        links = [page.locator("a").nth(i).get_attribute("href") for i in range(page.locator("a").count())]
        assert page.locator("#runs tbody tr").count() == rows_expected
        page.fill("input[data-table='runs']", "loop1-tuned")
        visible = page.locator("#runs tbody tr:visible").count()
        page.screenshot(path=str(tmp_path / "history.png"), full_page=True)
        first.locator("a").first.click()
        page.wait_for_load_state()
        landed = Path(unquote(urlparse(page.url).path))
    assert errors == []
    assert visible == 2  # loop1's tuned run: its two tasks
    assert all((page_path.parent / link).resolve().is_file() for link in links if link)  # every link resolves
    assert landed == workdir / "reports" / "loop-0" / "report.html"  # the first point: loop 0's base, its report
    assert "loop-0" in " ".join(result.output.split())  # the console table still lists the loop runs
