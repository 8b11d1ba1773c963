"""Rich rendering of training progress: a bar per epoch and a one-line summary after it."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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
    """Implements lever.train.stage.Reporter on a rich console (stderr)."""

    def __init__(self, console: Console):
        self.console = console
        self.progress: Progress | None = None
        self.task = None

    def info(self, message: str) -> None:
        self.console.print(message, highlight=False)

    def epoch_start(self, stage: str, epoch: int, epochs: int, steps: int) -> None:
        self._close()
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
        self.console.print(f"[bold]{stage}[/] {row['epoch']:>3}  " + "  ".join(parts), highlight=False)

    def _close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
