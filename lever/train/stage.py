"""One training stage (SFT, RCE, GRPO, or a curriculum phase): the epoch loop.

`StageRunner` runs a stage's epochs into its folder (`lever.train.folder`: records, checkpoints, resume state) and
knows nothing of any stage kind: each step it takes a batch from its source (`lever.train.groups.Source`), asks the
stage's objective (`lever.train.objectives`) for the loss, and steps the optimiser; each epoch it asks the objective
for the row's own figures, adds the validation loss and the optimiser's, and saves the epoch.

Killed at any moment, the stage resumes from `resume.pt`: epochs are seeded by (seed, stage, epoch), so the resumed
run's metrics equal an uninterrupted one's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from lever.errors import BudgetSpent, DamagedState, RunFailed
from lever.io import write_jsonl
from lever.model import SelectorBase
from lever.spec.schema import OptimSpec, SelectSpec, Stage
from lever.threads import threads_for_batch

from .checkpoint import State, save_resume, save_weights, state_of
from .folder import checkpoint_path, pick, read_resume, write_selection
from .groups import Groups, OfflineSource, Source, derive_seed
from .objectives import STAGE_METRICS, make_objective
from .passes import validation_loss

__all__ = ["STAGE_METRICS", "Reporter", "SilentReporter", "StageResult", "StageRunner", "checkpoint_path", "derive_seed", "pick"]


class Reporter(Protocol):
    """What the loop tells the outside world (the CLI draws progress bars from it)."""

    def info(self, message: str) -> None: ...
    def resumed(self, stage: str, rows: list[dict[str, Any]]) -> None:
        """The epochs a resumed stage finished before it was stopped, in order, before any new epoch."""

    def epoch_start(self, stage: str, epoch: int, epochs: int, steps: int) -> None: ...
    def step(self) -> None: ...
    def epoch_end(self, stage: str, row: dict[str, Any]) -> None: ...


Validator = Callable[[SelectorBase], dict[str, float]]  # the model after an epoch -> more validation metrics


class SilentReporter:
    def info(self, message: str) -> None: ...
    def resumed(self, stage: str, rows: list[dict[str, Any]]) -> None: ...
    def epoch_start(self, stage: str, epoch: int, epochs: int, steps: int) -> None: ...
    def step(self) -> None: ...
    def epoch_end(self, stage: str, row: dict[str, Any]) -> None: ...


@dataclass
class StageResult:
    name: str
    dir: Path
    selected_epoch: int
    selected_value: float
    reason: str
    checkpoint: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    reused: bool = False


def lr_at(step: int, total: int, opt: OptimSpec, peak: float) -> float:
    """Learning rate at optimiser step `step` (0-based) of `total`: linear warm-up, then
    constant, cosine (peak -> 0) or linear (peak -> 0) decay over the remaining steps."""
    if opt.warmup_steps and step < opt.warmup_steps:
        return peak * (step + 1) / opt.warmup_steps
    if opt.schedule == "constant":
        return peak
    span = max(total - opt.warmup_steps, 1)
    progress = min(max(step - opt.warmup_steps, 0) / span, 1.0)
    if opt.schedule == "cosine":
        return peak * 0.5 * (1 + math.cos(math.pi * progress))
    return peak * (1 - progress)


def lr_scale(opt: OptimSpec) -> float:
    """Factor on the plan's learning rate for its batch size (optim lr_scaling):
    none = 1, sqrt = sqrt(batch_size), linear = batch_size (the plan's lr is a batch-1 rate)."""
    if opt.lr_scaling == "sqrt":
        return math.sqrt(opt.batch_size)
    if opt.lr_scaling == "linear":
        return float(opt.batch_size)
    return 1.0


def _check_finite(value: float, what: str, stage: str, epoch: int, step: int) -> None:
    if not math.isfinite(value):
        raise RunFailed(f"{stage} epoch {epoch} step {step}: {what} is {value}; stopped, the last good checkpoint is kept")


class StageRunner:
    """Runs one stage's epochs into its directory, resuming where a killed run stopped.

    `train` is the stage's training groups; the batches come from `source` (default: the groups themselves, shuffled
    per epoch, `OfflineSource`). `reference` is GRPO's frozen policy when it is not the stage's start; `validate`
    adds validation metrics to each epoch's row; `key` is the stage's content key, which its records hold."""

    def __init__(
        self,
        stage: Stage,
        stage_dir: Path,
        model: SelectorBase,
        train: Groups,
        val: Groups,
        seed: int,
        select: SelectSpec,
        reporter: Reporter,
        pin_epoch: int | None = None,
        reference: State | None = None,
        validate: Validator | None = None,
        source: Source | None = None,
        key: str | None = None,
    ):
        self.s, self.dir, self.model, self.train, self.val = stage, stage_dir, model, train, val
        self.validate = validate  # more validation metrics per epoch (val/reward: lever.eval.rollout)
        self.key = key  # the stage's content key: recorded in resume.pt and selected.json, checked on resume
        self.seed, self.select, self.rep, self.pin = seed, select, reporter, pin_epoch
        opt = stage.opt
        model.set_backbone_frozen(opt.freeze_backbone)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.peak_lr = opt.lr * lr_scale(opt)
        # fused: one kernel per step instead of one per tensor op (5x faster at batch 1 on CPU)
        self.optim = torch.optim.AdamW(self.params, lr=self.peak_lr, weight_decay=opt.weight_decay, fused=True)
        self.source = source or OfflineSource(train, opt.batch_size, seed, stage.name)
        self.steps_per_epoch = self.source.steps_per_epoch
        self.total_steps = self.steps_per_epoch * stage.epochs
        self.step = 0
        self.objective = make_objective(stage, model, train, seed, self.total_steps, reference)
        bind = getattr(self.source, "bind", None)  # a source that samples tells the objective of each new batch
        if bind is not None:
            bind(self.objective)

    def run(self) -> StageResult:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.objective.start()  # from the stage's start weights, so before a resume replaces them
        first, rows = self._resume()
        for epoch in range(first, self.s.epochs + 1):
            try:
                row = self._epoch(epoch)
            except BudgetSpent as err:  # the epoch is done again on resume (its answers come from the cache)
                err.where = f"in {self.s.name} epoch {epoch} of {self.s.epochs}: the stage resumes after epoch {epoch - 1}"
                raise
            self.objective.check(row)
            rows.append(row)
            # Order matters for resume: weights, then metrics, then the resume marker.
            save_weights(
                checkpoint_path(self.dir, epoch), state_of(self.model), {"stage": self.s.name, "epoch": epoch, "metrics": row}
            )
            write_jsonl(self.dir / "metrics.jsonl", rows)
            save_resume(
                self.dir / "resume.pt",
                {
                    "model": self.model.state_dict(),
                    "optim": self.optim.state_dict(),
                    "step": self.step,
                    "epoch": epoch,
                    **({"key": self.key} if self.key is not None else {}),
                    **self.objective.state(),
                },
            )
            self.rep.epoch_end(self.s.name, row)
        sel = write_selection(self.dir, self.s.name, rows, self.select, self.pin, self.key)
        ckpt = checkpoint_path(self.dir, sel.epoch)
        return StageResult(
            self.s.name, self.dir, sel.epoch, sel.value if sel.value is not None else float("nan"), sel.reason, ckpt, rows
        )

    def _resume(self) -> tuple[int, list[dict[str, Any]]]:
        found = read_resume(self.dir, self.key)
        if found is None:
            return 1, []
        state, rows = found
        try:
            self.model.load_state_dict(state["model"])
            self.optim.load_state_dict(state["optim"])
            self.step = int(state["step"])
            self.objective.load_state(state)
        except Exception as err:  # cut, foreign or edited: never guess where training stood
            raise DamagedState(f"{self.dir / 'resume.pt'} is damaged ({type(err).__name__}: {err})") from None
        done = len(rows)
        self.rep.info(f"{self.s.name}: resuming after epoch {done} of {self.s.epochs}")
        self.rep.resumed(self.s.name, rows)
        return done + 1, rows

    def _epoch(self, epoch: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        torch.manual_seed(derive_seed(self.seed, self.s.name, epoch, "dropout"))
        self.model.train(self.objective.train_mode)
        self.rep.epoch_start(self.s.name, epoch, self.s.epochs, self.steps_per_epoch)
        self.objective.begin_epoch(epoch)
        opt = self.s.opt
        acc: dict[str, float] = {}
        norms: list[float] = []
        with threads_for_batch(opt.batch_size):  # batch 1: one thread is faster (lever.threads)
            for i, batch in enumerate(self.source.batches(epoch), start=1):
                lr = lr_at(self.step, self.total_steps, opt, self.peak_lr)
                for g in self.optim.param_groups:
                    g["lr"] = lr
                loss, logs = self.objective.loss(batch, self.step)
                _check_finite(logs["train/loss"], "the loss", self.s.name, epoch, i)
                self.optim.zero_grad(set_to_none=True)
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(self.params, opt.grad_clip if opt.grad_clip > 0 else float("inf"))
                norms.append(float(norm))
                _check_finite(norms[-1], "the gradient norm", self.s.name, epoch, i)
                self.optim.step()
                self.step += 1
                self.objective.after_step(self.step, logs)
                for k, v in logs.items():
                    acc[k] = acc.get(k, 0.0) + v
                self.rep.step()
        n = max(len(norms), 1)
        counts = {k: acc.pop(k) for k in [k for k in acc if k.startswith("_")]}  # summed, not averaged
        row: dict[str, Any] = {"stage": self.s.name, "epoch": epoch}
        row.update({k: v / n for k, v in acc.items()})
        row.update(self.objective.end_epoch(row, counts))
        row.update(getattr(self.source, "epoch_metrics", dict)())  # a sampling source's rollout statistics
        row["val/loss"] = validation_loss(self.model, self.val)
        if self.validate is not None:
            row.update(self.validate(self.model))
        row["optim/lr"] = lr_at(self.step - 1, self.total_steps, opt, self.peak_lr)
        row["optim/grad_norm"] = sum(norms) / n
        row["time/epoch_s"] = time.perf_counter() - t0
        return row
