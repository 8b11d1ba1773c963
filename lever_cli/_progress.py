"""Rich rendering of progress: training's bar per epoch and one-line summary after it; counted work (answers, a
comparison's paired tests)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ._console import err_console

# Metrics shown in the one-line epoch summary, in order, with their short labels.
SUMMARY = [
    ("val/loss", "val"),
    ("losses/rce", "rce"),
    ("rce/tau", "tau"),
    ("losses/ppo", "ppo"),
    ("kl/value", "kl"),
    ("kl/beta", "beta"),
    ("adv/std", "adv_std"),
    ("adv/max", "adv_max"),
    ("adv/zero_frac", "zero_adv"),
    ("policy/clip_frac", "clip"),
    ("optim/grad_norm", "gnorm"),
    ("optim/lr", "lr"),
    ("time/epoch_s", "s"),
]


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


class RichReporter:
    """Implements lever.train.stage.Reporter on a rich console (stderr).

    On a terminal: a bar per epoch, then the epoch's one-line summary. Elsewhere (a log file, a pipe, a batch
    job): the summary line alone, ending with the stage's count and time left from the epochs timed so far,
    e.g. `grpo  12  val 7.5  ...  s 1.8  12/50, 1m08s left` (no bars, whose redraws would leave blank lines)."""

    def __init__(self, console: Console):
        self.console = console
        self.progress: Progress | None = None
        self.task = None
        self.stage: tuple[str, int] | None = None  # (name, epoch count) of the stage being run
        self.epochs = 0  # its epoch count
        self.timed: list[float] = []  # the seconds of the stage's epochs run in this process

    def info(self, message: str) -> None:
        self.console.print(message, highlight=False)

    def resumed(self, stage: str, rows: list[dict[str, Any]]) -> None:  # "resuming after epoch N" says it
        pass

    def epoch_start(self, stage: str, epoch: int, epochs: int, steps: int) -> None:
        self._close()
        if (stage, epochs) != self.stage or epoch == 1:  # a new stage (or one started again)
            self.stage, self.epochs, self.timed = (stage, epochs), epochs, []
        if not self.console.is_terminal:
            return
        self.progress = Progress(
            TextColumn(f"{stage} epoch {epoch}/{epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task("steps", total=steps)

    def step(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)

    def epoch_end(self, stage: str, row: dict[str, Any]) -> None:
        self._close()
        parts = [f"{label} {fmt(row[key])}" for key, label in SUMMARY if key in row]
        line = f"[bold]{stage}[/] {row['epoch']:>3}  " + "  ".join(parts)
        if not self.console.is_terminal and isinstance(row.get("time/epoch_s"), (int, float)) and self.epochs:
            self.timed.append(float(row["time/epoch_s"]))
            left = (self.epochs - row["epoch"]) * sum(self.timed) / len(self.timed)
            line += f"  {row['epoch']}/{self.epochs}, {_duration(left)} left"
        self.console.print(line, highlight=False, soft_wrap=True)

    def _close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class CountProgress:
    """Progress of counted work (an evaluation's answers): `update(done, total)`.

    On a terminal: a bar with the count, what is counted, the rate and the time left. Elsewhere (a pipe, a log
    file, a batch job): one plain line at the start, as soon as the first work is done (so the rate shows from
    the first report on, not `every_s` later), then every `every_s` seconds, and at the end, e.g.
    `evaluating plan5 seed 0: 384/1600 answers (800 questions x 2 shot counts), 24%, 3.1/s, 6m32s left`.

    `groups` = (k, "questions", "shot counts") says what the total is made of: total / k of the first times k of
    the second (shown when k divides the total). The rate counts only the work done since this process started,
    so a resumed job does not look faster than it is.
    """

    def __init__(
        self,
        console: Console,
        label: str,
        unit: str = "answers",
        enabled: bool = True,
        every_s: float = 30.0,
        groups: tuple[int, str, str] | None = None,
    ):
        self.console, self.label, self.unit, self.enabled, self.every_s = console, label, unit, enabled, every_s
        self.groups = groups
        self.live = enabled and console.is_terminal
        self.progress: Progress | None = None
        self.start_t: float | None = None
        self.start_done = 0
        self.last_line = float("-inf")
        self.rate_shown = False

    def __enter__(self) -> CountProgress:
        """The progress itself; the live bar starts with the first report."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the live bar, if one started."""
        if self.progress is not None:
            self.progress.stop()

    def what(self, total: int) -> str:
        """What is counted: the unit, and the groups the total is made of when they divide it."""
        if self.groups is None or self.groups[0] < 1 or total % self.groups[0]:
            return self.unit
        k, inner, outer = self.groups
        return f"{self.unit} ({total // k} {inner} x {k} {outer})"

    def _start_bar(self) -> None:
        """The live bar starts with the first report, so bars drawn before it (training's) never overlap it."""
        self.progress = Progress(
            TextColumn(self.label),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[what]}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}"),
            console=self.console,
            transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task(self.unit, total=None, what=self.unit, rate="", eta="")

    def update(self, done: int, total: int) -> None:
        """Report `done` of `total`: redraw the bar, or print a line when one is due."""
        if not self.enabled:
            return
        now = time.monotonic()
        if self.start_t is None:
            self.start_t, self.start_done = now, done
        rate = (done - self.start_done) / max(now - self.start_t, 1e-9)
        eta = (total - done) / rate if rate > 0 else None
        rate_s = f"{rate:.1f}/s" if done > self.start_done else ""
        eta_s = f"{_duration(eta)} left" if eta is not None else ""
        what = self.what(total)
        if self.live:
            if self.progress is None:
                self._start_bar()
            self.progress.update(self.task, completed=done, total=total, what=what, rate=rate_s, eta=eta_s)
        elif now - self.last_line >= self.every_s or done >= total or (rate_s and not self.rate_shown):
            self.last_line, self.rate_shown = now, self.rate_shown or bool(rate_s)
            pct = f", {100 * done // max(total, 1)}%"
            extra = "".join(f", {x}" for x in (rate_s, eta_s) if x)
            self.console.print(f"{self.label}: {done}/{total} {what}{pct}{extra}", highlight=False, soft_wrap=True)


QUIET_S = 5.0  # a comparison shorter than this shows no progress: most are, and their output stays the table alone


@contextmanager
def tests_progress(quiet_s: float | None = None) -> Iterator[Callable[[int, int], None]]:
    """Progress of a comparison's paired tests on stderr (`lever compare`: a two-level bootstrap takes about half a
    second a test, so 13 plans x 5 rows run for minutes), shown once the work has taken `quiet_s` seconds, e.g.
    `comparing: 24/65 paired tests, 36%, 2.1/s, 19s left`."""
    start, quiet_s = time.monotonic(), QUIET_S if quiet_s is None else quiet_s
    with CountProgress(err_console, "comparing", unit="paired tests", every_s=15.0) as bar:

        def update(done: int, total: int) -> None:
            if time.monotonic() - start >= quiet_s:
                bar.update(done, total)

        yield update
