"""Progress of long work when output goes to a log file: plain lines with count, rate and time left."""

from __future__ import annotations

import io

from rich.console import Console

import lever_cli._progress as progress_mod
from lever_cli._progress import CountProgress


def test_log_file_gets_lines_with_rate_and_eta(monkeypatch):
    clock = iter([100.0, 110.0, 120.0, 125.0, 130.0])
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    with CountProgress(console, "evaluating plan5 seed 0", every_s=15) as bar:
        bar.update(100, 1000)  # t=100: resumed with 100 done; the rate starts here
        bar.update(150, 1000)  # t=110: 10 s since the last line < 15: no line
        bar.update(200, 1000)  # t=120: 100 in 20 s = 5/s, 800 left -> 160 s
        bar.update(300, 1000)  # t=125: too soon
        bar.update(1000, 1000)  # t=130: the end always prints
    lines = out.getvalue().splitlines()
    assert lines == [
        "evaluating plan5 seed 0: 100/1000 questions (10%)",
        "evaluating plan5 seed 0: 200/1000 questions (20%), 5.0/s, 2m40s left",
        "evaluating plan5 seed 0: 1000/1000 questions (100%), 30.0/s, 0s left",
    ]


def test_disabled_progress_prints_nothing():
    out = io.StringIO()
    with CountProgress(Console(file=out, force_terminal=False), "x", enabled=False, every_s=0) as bar:
        bar.update(1, 2)
    assert out.getvalue() == ""
