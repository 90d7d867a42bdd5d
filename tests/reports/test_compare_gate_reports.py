"""Compare, gate and reports on real runs of the embedded Gemma; the HTML report in real headless Chromium."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.comparison.compare import MetricComparison, RunComparison, TaskComparison, compare_runs, mcnemar_p
from harness.comparison.gate import GateRule, check_rule
from harness.core.errors import HarnessError
from harness.core.record import RunResult
from reports.markdown import LIMIT, render_markdown
from tests.chromium import chromium_page

RULES = """alpha: 0.05
rules:
  - {task: plain_english, metric: chrf, max_drop: 5.0}
  - {task: plain_english, metric: rouge1, max_drop_relative: 0.2}
  - {task: factual_qa, metric: exact_match, min: 0.1}
"""


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [([0] * 5, [1] * 5, 0.0625), ([1] + [0] * 9, [0] + [1] * 9, 22 / 1024), ([1, 0], [1, 0], 1.0)],
)
def test_exact_mcnemar(a: list[int], b: list[int], expected: float) -> None:
    assert mcnemar_p(a, b) == pytest.approx(expected)


def test_a_run_against_itself_shows_no_difference(real_runs: dict[str, Path]) -> None:
    run = RunResult.read(real_runs["greedy"])
    comparison = compare_runs([run, run]).comparisons[0]
    for metric in (m for task in comparison.tasks.values() for m in task.metrics):
        assert metric.delta == 0 and metric.p_value == 1.0
        assert metric.ci_low == metric.ci_high == 0
    assert all(not task.improved and not task.regressed for task in comparison.tasks.values())


def test_greedy_vs_sampled_comparison(real_runs: dict[str, Path]) -> None:
    greedy, sampled = RunResult.read(real_runs["greedy"]), RunResult.read(real_runs["sampled"])
    comparison = compare_runs([greedy, sampled]).comparisons[0]
    chrf = next(m for m in comparison.tasks["plain_english"].metrics if m.metric == "chrf")
    assert chrf.baseline == pytest.approx(greedy.tasks["plain_english"].metrics["chrf"].value)
    assert chrf.candidate == pytest.approx(sampled.tasks["plain_english"].metrics["chrf"].value)
    assert chrf.ci_low <= chrf.delta <= chrf.ci_high  # type: ignore[operator]
    assert 0 < chrf.p_value <= 1 and chrf.mde > 0  # type: ignore[operator]
    exact = next(m for m in comparison.tasks["factual_qa"].metrics if m.metric == "exact_match")
    assert exact.test == "exact McNemar"
    assert comparison.tasks["plain_english"].n_shared == 8


def test_mismatched_data_is_refused(real_runs: dict[str, Path]) -> None:
    run = RunResult.read(real_runs["greedy"])
    other = run.model_copy(deep=True)
    other.spec.tasks[0].data_fingerprint = "0" * 64
    with pytest.raises(HarnessError, match="differs between the runs"):
        compare_runs([run, other])


def test_gate_fails_on_the_planted_regression_and_passes_without_it(real_runs: dict[str, Path], tmp_path: Path) -> None:
    rules = tmp_path / "gate.yaml"
    rules.write_text(RULES)
    runner = CliRunner()
    common = ["gate", "--baseline", str(real_runs["greedy"]), "--rules", str(rules)]
    clean = runner.invoke(
        app,
        [
            *common,
            "--candidate",
            str(real_runs["greedy"]),
            "--junit",
            str(tmp_path / "clean.xml"),
            "--out",
            str(tmp_path / "clean"),
        ],
    )
    assert clean.exit_code == 0, clean.output
    planted = runner.invoke(
        app,
        [
            *common,
            "--candidate",
            str(real_runs["regressed"]),
            "--junit",
            str(tmp_path / "planted.xml"),
            "--out",
            str(tmp_path / "planted"),
        ],
    )
    assert planted.exit_code == 1, planted.output
    suite = ET.parse(tmp_path / "planted.xml").getroot()
    assert int(suite.get("failures", "0")) >= 1
    failed = [case.get("name") for case in suite.iter("testcase") if case.find("failure") is not None]
    assert "chrf" in failed
    assert "Gate: ❌ failed" in (tmp_path / "planted" / "report.md").read_text()


@pytest.mark.parametrize(("candidate_errors", "passed"), [(5, True), (6, True), (7, False)])
def test_judge_error_rate_counts_the_candidates_samples(candidate_errors: int, passed: bool) -> None:
    """The judge's error rate is the candidate's unparsed verdicts over its samples, wherever the baseline's failed:
    the demo's 12 samples with 6 baseline and 5 candidate failures, 4 scored in both, are 5/12, not 5/(4 + 5)."""
    judged = MetricComparison(
        task="t", metric="general.relevance", higher_is_better=True, baseline=1.0, candidate=1.0, delta=0.0,
        test="paired permutation", n=4, baseline_errors=6, candidate_errors=candidate_errors,
    )  # fmt: skip
    task = TaskComparison(task="t", n_shared=12, metrics=[judged])
    runs = RunComparison(baseline="a", candidate="b", baseline_label="a", candidate_label="b", tasks={"t": task})
    outcome = check_rule(GateRule(task="t", metric="general.relevance", max_judge_error_rate=0.5), runs, 0.05)
    assert outcome.passed is passed
    assert passed or outcome.message == f"judge error rate {candidate_errors / 12:.2f} > 0.5"


def test_bad_gate_rules_name_file_line_and_field(real_runs: dict[str, Path], tmp_path: Path) -> None:
    rules = tmp_path / "gate.yaml"
    rules.write_text("rules:\n  - {task: t, metric: m, max_drop: -1}\n")
    result = CliRunner().invoke(
        app,
        [
            "gate",
            "--baseline",
            str(real_runs["greedy"]),
            "--candidate",
            str(real_runs["greedy"]),
            "--rules",
            str(rules),
        ],
    )
    assert result.exit_code == 2
    assert "gate.yaml:2: field 'rules.0.max_drop'" in " ".join(result.output.split())


def test_baseline_save_and_show(real_runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    assert runner.invoke(app, ["baseline", "save", "main", str(real_runs["greedy"])]).exit_code == 0
    assert RunResult.read(tmp_path / "baselines" / "main.json") == RunResult.read(real_runs["greedy"])
    shown = runner.invoke(app, ["baseline", "show", "main"])
    assert shown.exit_code == 0 and "chrf" in shown.output
    rules = tmp_path / "gate.yaml"
    rules.write_text(RULES)
    gated = runner.invoke(
        app, ["gate", "--baseline", "main", "--candidate", str(real_runs["greedy"]), "--rules", str(rules)]
    )
    assert gated.exit_code == 0, gated.output


def test_markdown_stays_under_the_comment_limit(real_runs: dict[str, Path]) -> None:
    run = RunResult.read(real_runs["greedy"])
    huge = run.model_copy(deep=True)
    for task in huge.tasks.values():
        for sample in task.samples:
            sample.output = "x " * 5000
            sample.scores = dict.fromkeys(sample.scores, 0.0)
    comparison = compare_runs([run, huge, huge, huge, huge, huge])
    text = render_markdown(comparison)
    assert len(text) < LIMIT
    assert text.index("| task | metric |") < text.index("<details>")  # headline first


def test_reports_render_in_headless_chromium(real_runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = CliRunner().invoke(
        app, ["compare", str(real_runs["greedy"]), str(real_runs["sampled"]), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["comparisons"][0]["tasks"]["plain_english"]["metrics"]
    html = (out / "report.html").read_text()
    assert "http://" not in html and "https://" not in html  # self-contained
    errors: list[str] = []
    with chromium_page(errors) as page:
        page.goto((out / "report.html").as_uri())
        assert page.locator("svg").count() >= 8  # metric charts
        rows = page.locator("#samples-0-1 tbody tr")
        total = rows.count()
        page.fill("input[data-table='samples-0-1']", "plain-001")
        visible = page.locator("#samples-0-1 tbody tr:visible").count()
        page.screenshot(path=str(out / "report.png"), full_page=True)
    assert errors == []
    assert total == 8 and visible == 1
    assert (out / "report.png").stat().st_size > 10_000


def test_exit_codes_tell_a_regression_from_bad_input_and_a_crash(
    real_runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1: a rule failed; 2: bad input (here a rule naming a metric the runs lack, listing theirs); 3: anything
    unexpected, with its traceback. (The crash is planted: no real input makes compare fail unexpectedly.)"""
    runner = CliRunner()
    common = ["gate", "--baseline", str(real_runs["greedy"]), "--out", str(tmp_path / "report"), "--rules"]
    rules = tmp_path / "gate.yaml"
    rules.write_text(RULES)
    assert runner.invoke(app, [*common, str(rules), "--candidate", str(real_runs["regressed"])]).exit_code == 1
    rules.write_text("rules:\n  - {task: plain_english, metric: bleuu, min: 1}\n")
    unknown = runner.invoke(app, [*common, str(rules), "--candidate", str(real_runs["regressed"])])
    assert unknown.exit_code == 2
    assert "has no metric 'bleuu'" in unknown.output and "chrf" in unknown.output

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("planted")

    monkeypatch.setattr("harness.comparison.compare.compare_runs", crash)
    crashed = runner.invoke(app, ["compare", str(real_runs["greedy"]), str(real_runs["regressed"])])
    assert crashed.exit_code == 3
    assert "RuntimeError: planted" in crashed.output and "internal error" in crashed.output


def test_pairwise_judging_against_a_dead_endpoint_fails(real_runs: dict[str, Path], tmp_path: Path) -> None:
    """Nothing listens at the URL: every call fails, and the command says so and exits 2 (it exited 0 with all-zero
    rates before)."""
    from judges.local_server import free_port

    result = CliRunner().invoke(
        app,
        [
            "judge", "pairwise", str(real_runs["greedy"]), str(real_runs["sampled"]),
            "--out", str(tmp_path / "pairwise.json"), "--judge-model", "m",
            "--judge-base-url", f"http://127.0.0.1:{free_port()}/v1", "--judge-timeout", "1",
            "--cache-path", str(tmp_path / "cache.sqlite"),
        ],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "no pair was judged" in " ".join(result.output.split())
    assert "APIConnectionError" in result.output


def test_markdown_escapes_html_in_sample_text(real_runs: dict[str, Path]) -> None:
    """report.md is posted as a PR comment: a model's output holding tags must show as text, not render (and a
    stray `</details>` must not break the collapsible sections)."""
    run = RunResult.read(real_runs["greedy"])
    hostile = run.model_copy(deep=True)
    for task in hostile.tasks.values():
        for sample in task.samples:
            sample.output = '<img src=x onerror="alert(1)"></details><script>alert(2)</script>'
            sample.scores = dict.fromkeys(sample.scores, 0.0)
    text = render_markdown(compare_runs([run, hostile]))
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in text and "&lt;img src=x" in text
    assert "<script>" not in text and "<img" not in text
    assert text.count("</details>") == text.count("<details>")


def test_a_truncated_results_file_is_an_error_with_its_reason(real_runs: dict[str, Path], tmp_path: Path) -> None:
    truncated = tmp_path / "results.json"
    truncated.write_text(real_runs["greedy"].read_text()[:500])
    result = CliRunner().invoke(app, ["compare", str(real_runs["greedy"]), str(truncated)])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert f"{truncated}: not a readable results.json: Invalid JSON: EOF" in text


def test_the_loss_chart_says_the_step_zero_loss_is_the_quantized_base() -> None:
    """Under QLoRA the trainer's step-0 eval loss is the NF4 base's, not the base `harness run` scored."""
    from reports.html import loss_chart

    curve = {"loss_curve": [{"step": 1, "loss": 2.0}], "eval_curve": [{"step": 0, "eval_loss": 2.5}]}
    assert "nf4-quantized" in loss_chart({**curve, "config": {"quant": "nf4"}})
    assert "quantized" not in loss_chart({**curve, "config": {"quant": "none"}})


def test_tables_in_a_log_keep_every_name_and_number_whole(real_runs: dict[str, Path], tmp_path: Path) -> None:
    """Not a terminal (a CI log): rich cut tables to 80 columns ("baseli…", "0.000…"); now each row is whole, and
    a small p-value is in scientific notation."""
    from reports.markdown import format_p_value

    result = CliRunner().invoke(
        app, ["compare", str(real_runs["greedy"]), str(real_runs["regressed"]), "--out", str(tmp_path)]
    )
    assert result.exit_code == 0
    assert "…" not in result.output and "baseline" in result.output and "candidate" in result.output
    rows = [line for line in result.output.splitlines() if "plain_english" in line and "rougeLsum" in line]
    assert len(rows) == 1
    assert [format_p_value(p) for p in (0.5, 0.0123, 0.00049, None)] == ["0.500", "0.012", "4.9e-04", "–"]


def test_json_output_of_run_compare_and_gate_is_one_parseable_document(
    real_runs: dict[str, Path], tmp_path: Path
) -> None:
    """--json prints the headline numbers as JSON on stdout instead of tables, for scripts."""
    rules = tmp_path / "gate.yaml"
    rules.write_text(RULES)
    runner = CliRunner()
    baseline, regressed = str(real_runs["greedy"]), str(real_runs["regressed"])
    compared = runner.invoke(app, ["compare", baseline, regressed, "--out", str(tmp_path / "c"), "--json"])
    assert compared.exit_code == 0, compared.output
    document = json.loads(compared.stdout)
    (pair,) = document["comparisons"]
    assert all("delta" in values for task in pair["tasks"].values() for values in task.values())
    args = ["gate", "--baseline", baseline, "--candidate", regressed, "--rules", str(rules), "--json"]
    gated = runner.invoke(app, [*args, "--out", str(tmp_path / "g")])
    assert gated.exit_code == 1
    verdict = json.loads(gated.stdout)
    assert verdict["passed"] is False and any(not rule["passed"] for rule in verdict["rules"])


def test_data_findings_say_what_the_checks_found_and_did() -> None:
    from reports.markdown import data_findings

    manifest = {
        "train_rows": 9,
        "eval_rows": 3,
        "config": {"drop_duplicates": True, "drop_leaked": False, "max_seq_len": 256},
        "data_report": {"exact_duplicates": 6, "normalized_duplicates": 0, "over_long": 1, "leaked": 2},
    }
    assert data_findings(manifest) == [
        "9 training and 3 eval rows",
        "6 exact duplicate rows (dropped)",
        "2 rows leaked into eval tasks (kept)",
        "1 row over max_seq_len 256 (truncated)",
    ]
    clean = {**manifest, "data_report": {}}
    assert data_findings(clean)[1] == "no duplicate, leaked, over-long or malformed rows"
