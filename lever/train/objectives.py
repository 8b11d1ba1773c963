"""What a stage trains: one objective per stage kind (SFT, RCE, GRPO), asked by the epoch loop for a loss and metrics.

The loop (`lever.train.stage.StageRunner`) owns what every stage shares: the optimiser and its schedule, the seeds,
the batches (a `lever.train.groups.Source`), gradient clipping, checkpoints, resume and selection. An objective owns
what its kind adds, and is asked, in this order:

    start()                      once, on the stage's start weights (before a resume loads its state)
    load_state(state)            on resume, with what `state()` returned after the last finished epoch
    begin_epoch(epoch)           before an epoch's first batch
    loss(batch, step)            per batch: (loss tensor, step metrics); keys starting with "_" are counts,
                                 summed over the epoch instead of averaged, and handed to end_epoch
    after_step(step, logs)       after optimiser step `step` (1-based, counted over the stage)
    end_epoch(row, counts)       the epoch row's own figures, from its step means and summed counts
    check(row)                   a guardrail on the finished row (raise RunFailed to stop the stage)
    state()                      what resume.pt keeps of it (tensors and numbers only)

`train_mode` says whether the model runs with dropout during the epochs; `metrics` are the row keys it always logs
besides the loop's own (COMMON_METRICS).
Each objective reads its options once, when it is built (`make_objective`).
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import Tensor

from lever.model import SelectorBase
from lever.spec.schema import RCESpec, Stage

from . import losses as L
from .checkpoint import State
from .groups import Batch, Groups
from .grpo import GRPOObjective

# Metrics every epoch row carries (`select.metric` must be one every stage logs).
COMMON_METRICS = ("val/loss", "train/loss", "optim/lr", "optim/grad_norm", "time/epoch_s")


class Objective(Protocol):
    """A stage kind's loss and metrics (the module docstring gives the order of the calls)."""

    metrics: tuple[str, ...]
    train_mode: bool

    def start(self) -> None: ...
    def state(self) -> dict[str, Any]: ...
    def load_state(self, state: dict[str, Any]) -> None: ...
    def begin_epoch(self, epoch: int) -> None: ...
    def loss(self, b: Batch, step: int) -> tuple[Tensor, dict[str, float]]: ...
    def after_step(self, step: int, logs: dict[str, float]) -> None: ...
    def end_epoch(self, row: dict[str, Any], counts: dict[str, float]) -> dict[str, Any]: ...
    def check(self, row: dict[str, Any]) -> None: ...


class _Supervised:
    """What SFT and RCE share: no state of their own, dropout on, nothing added to the row."""

    train_mode = True

    def start(self) -> None: ...
    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None: ...
    def begin_epoch(self, epoch: int) -> None: ...
    def after_step(self, step: int, logs: dict[str, float]) -> None: ...
    def end_epoch(self, row: dict[str, Any], counts: dict[str, float]) -> dict[str, Any]:
        return {}

    def check(self, row: dict[str, Any]) -> None: ...


class SFTObjective(_Supervised):
    """Plain CE on each group's best sequence (L.top1_ce_loss)."""

    metrics = ("losses/sft",)

    def __init__(self, model: SelectorBase):
        self.model = model

    def loss(self, b: Batch, step: int) -> tuple[Tensor, dict[str, float]]:
        logp = self.model.score_sequences(b.query, b.pool, b.pool_mask, b.pointers, b.mask)
        loss = L.top1_ce_loss(logp, b.raw, b.mask)
        value = loss.item()
        return loss, {"losses/sft": value, "train/loss": value}


def rce_rewards(b: Batch, kind: str, std_floor: float) -> Tensor:
    """The rewards RCE weights by (rce.rewards): "raw" = the clipped rewards before any
    normalisation, whatever reward.normalize says; "normalized" = their group z-score
    (floor reward.normalize_std_floor); "original" = their group z-score without a floor,
    clamped to +-3 (the original's default). [B, G]."""
    if kind == "raw":
        return b.raw
    if kind == "original":
        return L.group_zscore_clamped(b.raw, b.mask, 3.0)
    return L.group_advantages(b.raw, b.mask, "zscore", std_floor, clip=None)


class RCEObjective(_Supervised):
    """Reward-weighted CE with a temperature annealed linearly over the stage's steps (L.rce_loss), or plain CE on
    the best sequence (rce.target = "top1")."""

    metrics = ("losses/rce", "rce/tau")

    def __init__(self, opt: RCESpec, model: SelectorBase, total_steps: int, std_floor: float):
        self.model, self.total_steps, self.std_floor = model, total_steps, std_floor
        self.top1, self.rewards = opt.target == "top1", opt.rewards
        self.temp_start, self.temp_end = opt.temp_start, opt.temp_end

    def loss(self, b: Batch, step: int) -> tuple[Tensor, dict[str, float]]:
        logp = self.model.score_sequences(b.query, b.pool, b.pool_mask, b.pointers, b.mask)
        if self.top1:
            loss, tau = L.top1_ce_loss(logp, b.raw, b.mask), 0.0
        else:
            tau = L.linear_schedule(step, self.total_steps, self.temp_start, self.temp_end)
            loss = L.rce_loss(logp, rce_rewards(b, self.rewards, self.std_floor), b.mask, tau)
        value = loss.item()
        return loss, {"losses/rce": value, "rce/tau": tau, "train/loss": value}


# Metrics every epoch row carries, by stage kind.
STAGE_METRICS = {
    "sft": COMMON_METRICS + SFTObjective.metrics,
    "rce": COMMON_METRICS + RCEObjective.metrics,
    "grpo": COMMON_METRICS + GRPOObjective.metrics,
}


def make_objective(
    stage: Stage, model: SelectorBase, train: Groups, seed: int, total_steps: int, reference: State | None = None
) -> Objective:
    """The objective of `stage` (its kind's, with its options): `reference` is GRPO's frozen policy when it is not
    the stage's start (grpo.reference = "pre_rce"); `total_steps` the stage's optimiser steps (RCE's schedule)."""
    build = {
        "sft": lambda opt: SFTObjective(model),
        "rce": lambda opt: RCEObjective(opt, model, total_steps, stage.std_floor),
        "grpo": lambda opt: GRPOObjective(stage.name, opt, model, train, seed, reference),
    }
    return build[stage.kind](stage.opt)
