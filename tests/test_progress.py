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
        bar.update(150, 1000)  # t=110: the first rate, printed at once: 50 in 10 s = 5/s, 850 left -> 170 s
        bar.update(200, 1000)  # t=120: 10 s since the last line < 15: no line
        bar.update(300, 1000)  # t=125: 15 s since the last line: 200 in 25 s = 8/s, 700 left -> 87.5 s
        bar.update(1000, 1000)  # t=130: the end always prints: 900 in 30 s
    lines = out.getvalue().splitlines()
    assert lines == [
        "evaluating plan5 seed 0: 100/1000 answers, 10%",
        "evaluating plan5 seed 0: 150/1000 answers, 15%, 5.0/s, 2m50s left",
        "evaluating plan5 seed 0: 300/1000 answers, 30%, 8.0/s, 1m28s left",
        "evaluating plan5 seed 0: 1000/1000 answers, 100%, 30.0/s, 0s left",
    ]


def test_a_log_line_says_answers_of_questions_times_shot_counts(monkeypatch):
    """12 questions at 2 shot counts are 24 answers; the first batch of 8 answers in 2 s gives the rate at once."""
    clock = iter([0.0, 2.0, 3.0, 6.0])
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    with CountProgress(console, "evaluating plan5 seed 0", groups=(2, "questions", "shot counts")) as bar:
        bar.update(0, 24)  # t=0: the total is known before the first answer
        bar.update(8, 24)  # t=2: 8 in 2 s = 4/s, 16 left -> 4 s
        bar.update(16, 24)  # t=3: within every_s (30 s) of the last line: none
        bar.update(24, 24)  # t=6: the end: 24 in 6 s
    assert out.getvalue().splitlines() == [
        "evaluating plan5 seed 0: 0/24 answers (12 questions x 2 shot counts), 0%",
        "evaluating plan5 seed 0: 8/24 answers (12 questions x 2 shot counts), 33%, 4.0/s, 4s left",
        "evaluating plan5 seed 0: 24/24 answers (12 questions x 2 shot counts), 100%, 4.0/s, 0s left",
    ]


def test_the_terminal_bar_shows_answers_and_the_rate_from_the_first_report(monkeypatch):
    clock = iter([0.0, 2.0])
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: next(clock))
    console = Console(file=io.StringIO(), force_terminal=True, width=200)
    with CountProgress(console, "evaluating plan5 seed 0", groups=(2, "questions", "shot counts")) as bar:
        bar.update(0, 24)
        bar.update(8, 24)  # the first batch: 8 answers in 2 s
        shown = Console(file=io.StringIO(), width=200, no_color=True)
        shown.print(bar.progress.make_tasks_table(bar.progress.tasks))
    text = " ".join(shown.file.getvalue().split())
    assert "8/24 answers (12 questions x 2 shot counts) 4.0/s" in text and "4s left" in text


def test_groups_that_do_not_divide_the_total_are_left_out():
    bar = CountProgress(Console(file=io.StringIO()), "x", groups=(3, "questions", "shot counts"))
    assert bar.what(24) == "answers (8 questions x 3 shot counts)"
    assert bar.what(25) == "answers"  # (a share of the answers, say): no made-up breakdown


def test_disabled_progress_prints_nothing():
    out = io.StringIO()
    with CountProgress(Console(file=out, force_terminal=False), "x", enabled=False, every_s=0) as bar:
        bar.update(1, 2)
    assert out.getvalue() == ""


def test_the_first_progress_report_comes_after_one_batch_of_answers():
    from lever.eval.evaluate import chunk_bounds

    assert chunk_bounds(0, 8) == []
    assert chunk_bounds(5, 8) == [(0, 5)]
    assert chunk_bounds(50, 8) == [(0, 8), (8, 40), (40, 50)]  # one batch, then four batches at a time
    assert chunk_bounds(9, 1) == [(0, 1), (1, 5), (5, 9)]


def test_training_in_a_log_file_prints_one_line_per_epoch_with_the_stage_time_left():
    out = io.StringIO()
    reporter = progress_mod.RichReporter(Console(file=out, force_terminal=False, width=200))
    for stage, epochs, seconds in (("rce", 3, [2.0, 4.0, 3.0]), ("grpo", 4, [1.0, 3.0])):
        for epoch, s in enumerate(seconds, start=1):
            reporter.epoch_start(stage, epoch, epochs, steps=10)
            reporter.step()
            reporter.epoch_end(stage, {"epoch": epoch, "val/loss": 7.5, "time/epoch_s": s})
    # no bar redraws (no blank lines); time left = epochs left x the stage's mean epoch time so far
    assert out.getvalue().splitlines() == [
        "rce   1  val 7.5  s 2  1/3, 4s left",  # 2 left x 2 s
        "rce   2  val 7.5  s 4  2/3, 3s left",  # 1 left x 3 s
        "rce   3  val 7.5  s 3  3/3, 0s left",
        "grpo   1  val 7.5  s 1  1/4, 3s left",  # a new stage: its own times (3 left x 1 s)
        "grpo   2  val 7.5  s 3  2/4, 4s left",  # 2 left x 2 s
    ]
