"""Trackers: a run's metrics mirrored to TensorBoard event files and to W&B in offline mode.

Chosen in the workspace (`loggers = ["tensorboard"]`); each is an optional extra. The
metric names are those of `metrics.jsonl`; the step is the epoch counted over the whole run
(stage after stage), so RCE and GRPO curves follow one another. Hyperparameters are the
resolved spec; evaluation accuracies per split and shot count (`eval/val/acc@1`) are logged
at the last step. Files go inside the run: `<run>/tensorboard/`, `<run>/wandb/`.
Epochs that were not trained live (a stage reused from another run) are logged from the run's
metrics before the next stage's first epoch, or when training ends.
"""

from __future__ import annotations

import time
from typing import Any

from lever.errors import LeverError
from lever.io import read_jsonl
from lever.spec import LoadedPlan, flatten
from lever.train.stage import Reporter

from .layout import RunDir

LOGGERS = ("tensorboard", "wandb")
EXTRA = {"tensorboard": "tensorboard", "wandb": "wandb"}


def _missing(name: str) -> LeverError:
    return LeverError(
        f"the workspace's loggers include '{name}', but the {EXTRA[name]} package is not installed",
        hint=f"pip install 'lever[{name}]', or remove '{name}' from loggers in the workspace file",
    )


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The numeric metrics of a metrics.jsonl row (not its stage and epoch)."""
    return {
        k: float(v)
        for k, v in row.items()
        if k not in ("stage", "epoch") and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def hyperparameters(lp: LoadedPlan) -> dict[str, Any]:
    """The resolved spec as flat key -> scalar (lists and empty values as text), as trackers take them."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(lp.spec_dict()).items()}


class _TensorBoard:
    """Event files written with torch's SummaryWriter (the tensorboard package's format).

    A process that logs into a run folder already holding events (a killed run resumed) opens its
    file with `purge_step` = the first step it logs: TensorBoard then hides the earlier files'
    events from that step on. A resumed process logs every epoch again in step order (the earlier
    stages, then the resumed stage's finished epochs: `Reporter.resumed`, then the new ones), so
    each step shows once, in order."""

    def __init__(self, run: RunDir, lp: LoadedPlan, first_step: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams
        except ImportError:
            raise _missing("tensorboard") from None
        folder = run.path / "tensorboard"
        names = [p.name.split(".") for p in folder.glob("events.out.tfevents.*")] if folder.is_dir() else []
        earlier = [int(n[3]) for n in names if n[3].isdigit()]
        if earlier:
            # TensorBoard reads a folder's files in name order, `events.out.tfevents.<second>.<host>.<pid>...`:
            # ours must come after the earlier ones, even when a quick resume falls in the same second.
            time.sleep(max(0.0, max(earlier) + 1 - time.time()))
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=first_step if earlier else None)
        for summary in hparams(hyperparameters(lp), {}):
            self.writer.file_writer.add_summary(summary)

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class _WandB:
    """A W&B run in offline mode (`wandb sync <run>/wandb/offline-run-*` uploads it later)."""

    def __init__(self, run: RunDir, lp: LoadedPlan, first_step: int):
        try:
            import wandb
        except ImportError:
            raise _missing("wandb") from None
        (run.path / "wandb").mkdir(parents=True, exist_ok=True)
        name = f"{lp.name}@{lp.hash}/seed-{run.seed}"
        self.run = wandb.init(
            mode="offline",
            dir=str(run.path),
            project="lever",
            name=name,
            group=lp.name,
            config=hyperparameters(lp),
            settings=wandb.Settings(silent=True, console="off"),  # lever's own output stays lever's
        )
        self.run.define_metric("lever/step")
        self.run.define_metric("*", step_metric="lever/step")  # epochs logged late (reused stages) keep their place

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log({**values, "lever/step": step})

    def close(self) -> None:
        self.run.finish()


BACKENDS = {"tensorboard": _TensorBoard, "wandb": _WandB}


class Trackers:
    """The workspace's loggers for one seed run, opened when the first value arrives."""

    def __init__(self, names: list[str], run: RunDir, lp: LoadedPlan):
        self.names, self.run, self.lp = list(names), run, lp
        self.backends: list[Any] | None = None
        self.offsets: dict[str, int] = {}
        total = 0
        for stage in lp.plan.stages():
            self.offsets[stage.name] = total
            total += stage.epochs
        self.last_step = total
        self.logged: set[tuple[str, int]] = set()
        self.caught_up: set[str] = set()

    def _log(self, values: dict[str, float], step: int) -> None:
        if self.backends is None:
            self.backends = [BACKENDS[n](self.run, self.lp, step) for n in self.names]
        for b in self.backends:
            b.log(values, step)

    def metrics(self, row: dict[str, Any]) -> None:
        """One metrics.jsonl row, at step (epochs of the stages before) + epoch."""
        key = (str(row["stage"]), int(row["epoch"]))
        if key not in self.logged:
            self.logged.add(key)
            self._log(scalars(row), self.offsets.get(key[0], 0) + key[1])

    def live(self, row: dict[str, Any]) -> None:
        """An epoch as it finishes; the earlier stages' rows not logged yet (a reused stage) go first, so steps
        stay in order (the run's metrics.jsonl holds every finished stage's rows)."""
        if row["stage"] not in self.caught_up:
            self.caught_up.add(row["stage"])
            before = self.offsets.get(row["stage"], 0)
            self.backfill([r for r in read_jsonl(self.run.metrics_file) if self.offsets.get(r.get("stage"), before) < before])
        self.metrics(row)

    def backfill(self, rows: list[dict[str, Any]]) -> None:
        """The rows of the run not logged live (a reused stage, epochs trained before a resume)."""
        for row in rows:
            self.metrics(row)

    def evaluation(self, summary: dict[str, Any]) -> None:
        """Accuracy per split and shot count (`eval/val/acc@2`), at the run's last step."""
        values = {
            f"eval/{split}/acc@{shots}": float(cell["accuracy"])
            for split, table in (summary.get("splits") or {}).items()
            for shots, cell in table.items()
        }
        if values:
            self._log(values, self.last_step)

    def wrap(self, inner: Reporter) -> Reporter:
        """A reporter that also logs each finished epoch."""
        return _Tracking(inner, self)

    def close(self) -> None:
        for b in self.backends or []:
            b.close()


class _Tracking:
    """Forwards everything to the inner reporter; each epoch's row also goes to the trackers."""

    def __init__(self, inner: Reporter, trackers: Trackers):
        self.inner, self.trackers = inner, trackers

    def info(self, message: str) -> None:
        self.inner.info(message)

    def resumed(self, stage: str, rows: list[dict[str, Any]]) -> None:
        self.inner.resumed(stage, rows)
        for row in rows:  # logged again, in order, into this process's file (see _TensorBoard)
            self.trackers.live({**row, "stage": stage})

    def epoch_start(self, stage: str, epoch: int, epochs: int, steps: int) -> None:
        self.inner.epoch_start(stage, epoch, epochs, steps)

    def step(self) -> None:
        self.inner.step()

    def epoch_end(self, stage: str, row: dict[str, Any]) -> None:
        self.inner.epoch_end(stage, row)
        self.trackers.live({**row, "stage": stage})
