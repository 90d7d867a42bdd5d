"""Progress in a log (a console that is not a terminal): lines with count, rate and fields, not silence."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import Progress

from harness.core.progress import LogProgress, progress


def test_a_log_gets_periodic_lines_and_a_terminal_gets_bars() -> None:
    log = io.StringIO()
    console = Console(file=log, force_terminal=False, width=200)
    bars = progress("{task.description}", console=console)
    assert isinstance(bars, LogProgress)
    bars.interval = 0.0  # every update logs
    with bars:
        task = bars.add_task("train", total=4, loss=float("nan"))
        for step in range(4):
            bars.update(task, advance=1, loss=1.0 / (step + 1))
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("train 0/4 (0%)")
    assert lines[-1].startswith("train 4/4 (100%)") and "loss 0.25" in lines[-1]
    terminal = Console(file=io.StringIO(), force_terminal=True)
    assert type(progress(console=terminal)) is Progress


def test_a_quiet_log_prints_nothing_and_lines_wait_for_the_interval() -> None:
    log = io.StringIO()
    console = Console(file=log, force_terminal=False)
    with progress(console=console, disable=True) as quiet:
        quiet.advance(quiet.add_task("x", total=2), 2)
    assert log.getvalue() == ""
    with progress(console=console) as bars:
        task = bars.add_task("eval", total=10)
        bars.advance(task)  # within the interval after the start line: no line
    assert log.getvalue().splitlines() == ["eval 0/10 (0%)"]
