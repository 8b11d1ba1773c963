"""One training stage (RCE, GRPO, or a curriculum phase): setup, the epoch loop, checkpoints, selection.

A stage lives in its own directory:

    metrics.jsonl              one row per finished epoch
    ckpt/epoch-NNN.safetensors weights after epoch N (+ .json with the epoch's metrics)
    resume.pt                  optimiser, counters and beta after the last finished epoch
    selected.json              the stage's result, written last (its presence = stage done)

Killed at any moment, the stage resumes from `resume.pt`: epochs are seeded by
(seed, stage, epoch), so the resumed run's metrics equal an uninterrupted one's.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from lever.errors import DamagedState, RunFailed
from lever.io import check_rows, read_rows, read_state, rows_record, rows_text, write_json, write_jsonl
from lever.model import SelectorBase
from lever.records import RowsRecord, StageSelection, parse, to_json
from lever.spec.schema import GRPOSpec, OptimSpec, RCESpec, SelectSpec, Stage
from lever.threads import threads_for_batch

from . import losses as L
from .checkpoint import State, epoch_digest, load_resume, load_verified, save_resume, save_weights, state_of
from .groups import Batch, Groups


def checkpoint_path(stage_dir: Path, epoch: int) -> Path:
    """The weights a stage saved after `epoch`."""
    return stage_dir / "ckpt" / f"epoch-{epoch:03d}.safetensors"


def checkpoint_epochs(stage_dir: Path) -> list[int]:
    """The epochs a stage holds weights of, in order."""
    return sorted(int(p.stem.split("-")[1]) for p in (stage_dir / "ckpt").glob("epoch-*.safetensors"))


def stage_rows(stage_dir: Path) -> list[dict[str, Any]]:
    """A stage's metric rows; a cut line, or a row without its epoch, is a DamagedState."""
    path = stage_dir / "metrics.jsonl"
    rows = read_rows(path, fix="")
    for i, r in enumerate(rows, start=1):
        if not isinstance(r.get("epoch"), int):
            raise DamagedState(f"{path} is damaged: line {i} has no epoch")
    return rows


def read_result(
    stage_dir: Path, select: SelectSpec | None, pin: int | None = None
) -> tuple[StageSelection, list[dict[str, Any]]] | None:
    """A finished stage's selection and metric rows (None when it has not finished), verified: the record
    whole, the metrics its row count and digest, the selection the one its rows and `select` (`pin`) give
    (without `select`: its value that of its epoch's row), and the selected checkpoint's recorded digest.
    Damage is a DamagedState naming the file."""
    if not stage_dir.is_dir():
        return None
    where = stage_dir / "selected.json"
    data = read_state(where, fix="")
    if data is None:
        return None
    sel = parse(StageSelection, data, where, "")
    check_rows(stage_dir / "metrics.jsonl", to_json(sel.metrics), fix="")
    rows = stage_rows(stage_dir)
    if [r["epoch"] for r in rows] != list(range(1, len(rows) + 1)) or not rows:
        raise DamagedState(f"{stage_dir / 'metrics.jsonl'} is damaged: its epochs do not run 1..N")
    row = next((r for r in rows if r["epoch"] == sel.epoch), None)
    if row is None or not _same(row.get(sel.metric), sel.value):
        raise DamagedState(f"{where} names epoch {sel.epoch} with {sel.metric} {sel.value}, which its metrics do not hold")
    if select is not None:
        best, reason = pick(rows, select, pin)
        if (sel.epoch, sel.metric, sel.mode, sel.reason) != (best["epoch"], select.metric, select.mode, reason):
            raise DamagedState(
                f"{where} names epoch {sel.epoch} ({sel.reason}), but the stage's metrics select epoch {best['epoch']} ({reason})"
            )
    if epoch_digest(checkpoint_path(stage_dir, sel.epoch), sel.epoch) != sel.sha256:
        raise DamagedState(f"{where}: its checkpoint digest differs from the one recorded beside the checkpoint")
    return sel, rows


def _same(a: Any, b: Any) -> bool:
    """Equal values, NaN equal to NaN (a stage without validation queries logs val/loss NaN)."""
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


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


# Metrics every epoch row carries, by stage kind (`select.metric` must be one every stage logs).
COMMON_METRICS = ("val/loss", "train/loss", "optim/lr", "optim/grad_norm", "time/epoch_s")
STAGE_METRICS = {
    "sft": COMMON_METRICS + ("losses/sft",),
    "rce": COMMON_METRICS + ("losses/rce", "rce/tau"),
    "grpo": COMMON_METRICS
    + (
        "losses/ppo",
        "losses/kl",
        "kl/value",
        "kl/beta",
        "adv/mean",
        "adv/std",
        "adv/max",
        "adv/zero_frac",
        "policy/clip_frac",
        "policy/clip_frac_pos",
        "policy/ratio_mean",
        "policy/first_step_ratio",
        "policy/start_ratio",
    ),
}


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


def handoff_checkpoint(stage_dir: Path, selected: StageSelection, rows: list[dict[str, Any]], handoff: str) -> State:
    """The verified weights the next stage starts from: the stage's selected epoch, or its last
    epoch (grpo.handoff = "last", the original)."""
    if handoff == "last":
        last = max(r["epoch"] for r in rows)
        path = checkpoint_path(stage_dir, last)
        return load_verified(path, epoch_digest(path, last))
    return load_verified(checkpoint_path(stage_dir, selected.epoch), selected.sha256)


# A GRPO stage whose mean ratio before its first step (policy/start_ratio, over all training
# sequences) lies outside [1 / FAR_RATIO, FAR_RATIO] is flagged: the reference is not the policy
# being trained, so clipped terms carry no gradient from the start.
FAR_RATIO = 1.25
CLIPPED_POS_MOST = 0.5  # an epoch with more than this share of A > 0 terms clipped is flagged


def grpo_flags(stage: str, rows: list[dict[str, Any]]) -> list[str]:
    """Warnings about a GRPO stage's ratio diagnostics (its epoch rows, in order)."""
    flags = []
    first = rows[0].get("policy/start_ratio") if rows else None
    if first is not None and not (1 / FAR_RATIO <= first <= FAR_RATIO):
        flags.append(
            f"{stage}: first-step PPO ratio {first:.2f} is far from 1: the reference is not the policy being trained; "
            "clipped terms carry no gradient"
        )
    most = [r["epoch"] for r in rows if r.get("policy/clip_frac_pos", 0.0) > CLIPPED_POS_MOST]
    if most:
        flags.append(
            f"{stage}: in {len(most)} of {len(rows)} epochs most positive-advantage terms were clipped to no gradient "
            f"(first: epoch {most[0]})"
        )
    return flags


def derive_seed(seed: int, *parts: object) -> int:
    """A stable 31-bit seed from the run seed and a path of names (stage, epoch)."""
    return zlib.crc32(":".join(map(str, (seed, *parts))).encode()) & 0x7FFFFFFF


def pick(rows: list[dict[str, Any]], select: SelectSpec, pin: int | None) -> tuple[dict[str, Any], str]:
    """The selected epoch's row and why. Ties go to the earliest epoch."""
    if pin is not None:
        row = next((r for r in rows if r["epoch"] == pin), None)
        if row is None:
            raise RunFailed(f"select.epoch = {pin} but the stage has only {len(rows)} epochs")
        return row, f"epoch {pin} pinned by select.epoch"
    values = [r.get(select.metric) for r in rows]
    if any(v is None for v in values):
        raise RunFailed(f"select.metric '{select.metric}' is not logged by this stage; logged: {', '.join(sorted(rows[0]))}")
    if select.mode == "min":
        best = min(range(len(rows)), key=lambda i: (values[i], i))
    else:
        best = max(range(len(rows)), key=lambda i: (values[i], -i))
    word = "lowest" if select.mode == "min" else "highest"
    return rows[best], f"{word} {select.metric} ({values[best]:.5f}) of {len(rows)} epochs"


@torch.no_grad()
def validation_loss(model: SelectorBase, val: Groups, batch_size: int = 256) -> float:
    """The log's validation loss: RCE at tau = 1 on raw rewards over held-out queries."""
    if val.num_queries == 0:
        return float("nan")
    was = model.training
    model.eval()
    total, n = 0.0, 0
    for b in val.batches(torch.arange(val.num_queries), batch_size):
        logp = model.score_sequences(b.query, b.pool, b.pool_mask, b.pointers, b.mask)
        total += float(L.rce_loss(logp, b.raw, b.mask, 1.0)) * b.mask.shape[0]
        n += b.mask.shape[0]
    model.train(was)
    return total / n


# Sequences encoded at once by a pass with one dropout mask per sequence (train mode, model.dropout_mask =
# "sequence"): each is its own encoding of the query and its pool, so 256 queries x 24 sequences x 64 candidates
# held 2.4 GB at hidden 256; 240 sequences (10 such queries) hold about 100 MB, near the original trainer's peak.
SEQUENCE_CHUNK = 240


def pass_batch(model: SelectorBase, groups: Groups, batch_size: int, train: bool) -> int:
    """Queries per batch of a no-grad pass: `batch_size`, or fewer when every sequence is encoded on its own
    (train mode with per-sequence dropout masks), so at most SEQUENCE_CHUNK sequences are encoded at once.
    Eval mode and per-group masks encode each query once, and keep `batch_size`."""
    if not (train and model.dropout_mask == "sequence"):
        return batch_size
    group = int(groups.data.group_sizes().max()) if groups.num_queries else 1
    return max(1, min(batch_size, SEQUENCE_CHUNK // max(group, 1)))


@torch.no_grad()
def all_logprobs(model: SelectorBase, groups: Groups, batch_size: int = 256, train: bool = False) -> Tensor:
    """Log-probability of every sequence of `groups` under `model`: [S]. Eval mode (no
    dropout) unless `train`; a train-mode pass with per-sequence dropout masks goes in
    chunks of at most SEQUENCE_CHUNK sequences (`pass_batch`)."""
    was = model.training
    model.train(train)
    out = torch.zeros(groups.data.num_sequences, device=groups.features.device)
    for b in groups.batches(torch.arange(groups.num_queries), pass_batch(model, groups, batch_size, train)):
        logp = model.score_sequences(b.query, b.pool, b.pool_mask, b.pointers, b.mask)
        out[b.seq[b.mask]] = logp[b.mask]
    model.train(was)
    return out


@torch.no_grad()
def all_pick_logprobs(model: SelectorBase, groups: Groups, batch_size: int = 256) -> Tensor:
    """log p of every pick of every sequence of `groups` under `model`, eval mode: [S, L] (rows sum to
    `all_logprobs`'s values). For GRPO's per-pick ratio (grpo.ratio_level = "token")."""
    was = model.training
    model.eval()
    out = torch.zeros(groups.data.num_sequences, groups.data.pointers.shape[-1], device=groups.features.device)
    for b in groups.batches(torch.arange(groups.num_queries), batch_size):
        picks, _ = model.score_picks(b.query, b.pool, b.pool_mask, b.pointers, b.mask)
        out[b.seq[b.mask]] = picks[b.mask]
    model.train(was)
    return out


def mix_weights(ref: State, policy: State, alpha: float) -> State:
    """TRL's reference sync: ref <- (1 - alpha) * ref + alpha * policy, entry by entry (floating tensors)."""
    return {k: (1 - alpha) * v + alpha * policy[k].to(v.device) if v.is_floating_point() else v.clone() for k, v in ref.items()}


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


def _check_finite(value: float, what: str, stage: str, epoch: int, step: int) -> None:
    if not math.isfinite(value):
        raise RunFailed(f"{stage} epoch {epoch} step {step}: {what} is {value}; stopped, the last good checkpoint is kept")


class StageRunner:
    """Runs one stage's epochs into its directory, resuming where a killed run stopped."""

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
    ):
        self.s, self.dir, self.model, self.train, self.val = stage, stage_dir, model, train, val
        self.validate = validate  # more validation metrics per epoch (val/reward: lever.eval.rollout)
        self.seed, self.select, self.rep, self.pin = seed, select, reporter, pin_epoch
        self.reference = reference  # GRPO: weights of the frozen policy (ratio and KL)
        opt = stage.opt
        model.set_backbone_frozen(opt.freeze_backbone)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.peak_lr = stage.lr * lr_scale(opt)
        # fused: one kernel per step instead of one per tensor op (5x faster at batch 1 on CPU)
        self.optim = torch.optim.AdamW(self.params, lr=self.peak_lr, weight_decay=opt.weight_decay, fused=True)
        self.steps_per_epoch = math.ceil(train.num_queries / opt.batch_size)
        self.total_steps = self.steps_per_epoch * stage.epochs
        self.step = 0
        self.beta = stage.opt.kl.beta if isinstance(stage.opt, GRPOSpec) else 0.0
        self.logp_ref: Tensor | None = None
        self.picks_ref: Tensor | None = None  # GRPO, ratio_level token: [S, L] per-pick log p under the reference
        self.ref_weights: State | None = None  # GRPO, reference sync: the reference's weights as synced so far
        self.logp_behaviour: Tensor | None = None  # GRPO off_policy: behaviour log-probs [S] or, at is_level token, [S, L]
        self.start_ratio = float("nan")  # GRPO: mean exp(logp_start - logp_ref) over the training sequences

    # ------------------------------------------------------------------ setup / resume

    def _resume(self) -> tuple[int, list[dict[str, Any]]]:
        path = self.dir / "resume.pt"
        try:
            state = load_resume(path)
            if state is None:
                return 1, []
            self.model.load_state_dict(state["model"])
            self.optim.load_state_dict(state["optim"])
            self.step, self.beta = int(state["step"]), float(state["beta"])
            done = int(state["epoch"])
            if "reference" in state:  # reference sync: the reference as it stood after that epoch
                self._set_reference(state["reference"])
        except Exception as err:  # cut, foreign or edited: never guess where training stood
            raise DamagedState(f"{path} is damaged ({type(err).__name__}: {err})") from None
        rows = [r for r in stage_rows(self.dir) if r["epoch"] <= done]
        if [r["epoch"] for r in rows] != list(range(1, done + 1)):
            raise DamagedState(f"{self.dir / 'metrics.jsonl'} is damaged: it lacks rows of epochs 1-{done} that {path} records")
        self.rep.info(f"{self.s.name}: resuming after epoch {done} of {self.s.epochs}")
        self.rep.resumed(self.s.name, rows)
        return done + 1, rows

    def _reference_logprobs(self) -> Tensor:
        """logp under the frozen reference, computed once per stage (not per step).

        Also sets `start_ratio`: the mean PPO ratio exp(logp_start - logp_ref) over every
        training sequence before the first update, the policy in the stage's mode
        (grpo.policy_mode) and the reference in eval mode, as the loss sees them. It is 1
        when the reference is the stage's start without dropout; far from 1 when it is
        another model (the one before RCE) or when dropout makes the policy another one.
        With per-sequence dropout masks the train-mode pass goes in chunks of SEQUENCE_CHUNK
        sequences (`pass_batch`), from the stage's start-ratio seed; the eval-mode passes keep
        256 queries a batch, so the reference log-probs the loss uses are unchanged.
        """
        current = {k: v.clone() for k, v in self.model.state_dict().items()}
        train_mode = self.s.opt.policy_mode == "train"
        torch.manual_seed(derive_seed(self.seed, self.s.name, "start_ratio"))
        start = all_logprobs(self.model, self.train, train=train_mode)
        if self.reference is None and not train_mode:
            self.start_ratio = 1.0
            return start
        if self.reference is not None:
            self.model.load_state_dict(self.reference)
        logp = all_logprobs(self.model, self.train)
        self.model.load_state_dict(current)
        self.start_ratio = float((start - logp).exp().mean())
        return logp

    def _setup_reference(self) -> None:
        """The reference's log-probs before the first step: per sequence (`_reference_logprobs`, which also
        measures the start ratio), per pick for ratio_level token, and its weights when it is synced."""
        opt: GRPOSpec = self.s.opt  # type: ignore[assignment]
        self.logp_ref = self._reference_logprobs()
        if self._per_pick() or opt.reference == "sync":
            start = self.reference if self.reference is not None else state_of(self.model)
            self.ref_weights = {k: v.detach().clone() for k, v in start.items()}
            if self._per_pick():
                self.picks_ref = self._under(self.ref_weights, all_pick_logprobs)

    def _per_pick(self) -> bool:
        """Whether GRPO needs the reference's per-pick log-probs: a per-pick ratio (ratio_level token) or
        per-pick importance weights (off_policy truncated_is at is_level token)."""
        opt: GRPOSpec = self.s.opt  # type: ignore[assignment]
        return opt.ratio_level == "token" or (opt.off_policy != "none" and opt.is_level == "token")

    def _under(self, weights: State, score: Any) -> Tensor:
        """score(model, train groups) with the model holding `weights` (eval mode); the model's own weights back after."""
        current = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(weights)
        try:
            return score(self.model, self.train)
        finally:
            self.model.load_state_dict(current)

    def _set_reference(self, weights: State) -> None:
        """Make `weights` the reference: its log-probs (per sequence, and per pick for ratio_level token) again."""
        self.ref_weights = {k: v.detach().clone() for k, v in weights.items()}
        self.logp_ref = self._under(self.ref_weights, all_logprobs)
        if self._per_pick():
            self.picks_ref = self._under(self.ref_weights, all_pick_logprobs)

    def _sync_reference(self) -> None:
        """reference = sync (TRL sync_ref_model): every ref_sync_steps optimiser steps,
        ref <- (1 - alpha) ref + alpha policy (mix_weights), and the reference's log-probs again."""
        opt: GRPOSpec = self.s.opt  # type: ignore[assignment]
        if opt.reference == "sync" and self.step % opt.ref_sync_steps == 0:
            assert self.ref_weights is not None
            self._set_reference(mix_weights(self.ref_weights, state_of(self.model), opt.ref_sync_alpha))

    def _behaviour_setup(self) -> None:
        """The data's behaviour log-probs on the device (grpo.off_policy; preflight refused data without them)."""
        token = self.s.opt.is_level == "token"
        d, dev = self.train.data, self.train.features.device
        if not d.has_behaviour(steps=token):
            raise RunFailed(
                f"{self.s.name}: grpo.off_policy = {self.s.opt.off_policy!r} needs behaviour log-probs"
                f"{' per pick' if token else ''}, and the training data has none; regenerate it with `lever data generate`"
            )
        self.logp_behaviour = (d.behaviour_steps if token else d.behaviour_logp).to(dev)

    def _off_policy(self, adv: Tensor, b: Batch) -> tuple[Tensor, dict[str, float]]:
        """The advantages the policy term uses: A_i * w_i with w the truncated importance weights
        (L.truncated_is_weights; grpo.off_policy), or A itself when off. Scaling A by w > 0 scales the
        clipped (and dual-clipped) term by w, so the PPO loss is unchanged in form; the KL is not weighted."""
        opt: GRPOSpec = self.s.opt  # type: ignore[assignment]
        if opt.off_policy == "none":
            return adv, {}
        assert self.logp_behaviour is not None
        if opt.is_level == "token":
            assert self.picks_ref is not None
            old = self.picks_ref[b.seq]  # [B, G, L]: the reference's per-pick log-probs
        else:
            old = self.logp_ref[b.seq] * b.mask  # [B, G]: the ratio's own reference log-probs
        w, stats = L.truncated_is_weights(old, self.logp_behaviour[b.seq], b.mask, opt.is_cap, opt.is_level)
        return adv * w, stats

    # ------------------------------------------------------------------ the loop

    def run(self) -> StageResult:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.s.kind == "grpo":  # from the stage's start weights, so before a resume replaces them
            self._setup_reference()
            if self.s.opt.off_policy != "none":
                self._behaviour_setup()
        first, rows = self._resume()
        for epoch in range(first, self.s.epochs + 1):
            row = self._epoch(epoch)
            if self.s.kind == "grpo" and row["kl/value"] > self.s.opt.kl.max_kl:
                raise RunFailed(
                    f"{self.s.name} epoch {epoch}: KL {row['kl/value']:.3g} exceeds grpo.kl.max_kl = {self.s.opt.kl.max_kl}; "
                    "stopped, the last good checkpoint is kept"
                )
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
                    "beta": self.beta,
                    "epoch": epoch,
                    **({"reference": self.ref_weights} if self.s.kind == "grpo" and self.s.opt.reference == "sync" else {}),
                },
            )
            self.rep.epoch_end(self.s.name, row)
        return self._finish(rows)

    def _finish(self, rows: list[dict[str, Any]]) -> StageResult:
        best, reason = pick(rows, self.select, self.pin)
        ckpt = checkpoint_path(self.dir, best["epoch"])
        sel = StageSelection(
            stage=self.s.name,
            epoch=best["epoch"],
            metric=self.select.metric,
            mode=self.select.mode,
            value=best.get(self.select.metric),
            reason=reason,
            sha256=epoch_digest(ckpt, best["epoch"]),
            metrics=RowsRecord(**rows_record(rows_text(rows))),  # what a reuse checks metrics.jsonl against
        )
        write_json(self.dir / "selected.json", to_json(sel))
        (self.dir / "resume.pt").unlink(missing_ok=True)  # optimiser state is no longer needed
        return StageResult(self.s.name, self.dir, best["epoch"], best.get(self.select.metric, float("nan")), reason, ckpt, rows)

    def _epoch(self, epoch: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        torch.manual_seed(derive_seed(self.seed, self.s.name, epoch, "dropout"))
        gen = torch.Generator().manual_seed(derive_seed(self.seed, self.s.name, epoch, "order"))
        order = torch.randperm(self.train.num_queries, generator=gen)
        # GRPO runs without dropout (grpo.policy_mode = "eval"), so the ratio to the reference is
        # exactly 1 before the first update; "train" keeps dropout on, as the original.
        self.model.train(self.s.kind != "grpo" or self.s.opt.policy_mode == "train")
        self.rep.epoch_start(self.s.name, epoch, self.s.epochs, self.steps_per_epoch)
        acc: dict[str, float] = {}
        advs: list[tuple[Tensor, Tensor]] = []  # GRPO: each step's (advantages, mask)
        norms: list[float] = []
        row_first = float("nan")
        with threads_for_batch(self.s.opt.batch_size):  # batch 1: one thread is faster (lever.threads)
            for i, batch in enumerate(self.train.batches(order, self.s.opt.batch_size), start=1):
                lr = lr_at(self.step, self.total_steps, self.s.opt, self.peak_lr)
                for g in self.optim.param_groups:
                    g["lr"] = lr
                if self.s.kind == "sft":
                    loss, logs = self._sft_loss(batch)
                elif self.s.kind == "rce":
                    loss, logs = self._rce_loss(batch)
                else:
                    loss, logs, adv_mask = self._grpo_loss(batch, epoch)
                    advs.append(adv_mask)
                _check_finite(logs["train/loss"], "the loss", self.s.name, epoch, i)
                self.optim.zero_grad(set_to_none=True)
                loss.backward()
                clip = self.s.opt.grad_clip
                norm = torch.nn.utils.clip_grad_norm_(self.params, clip if clip > 0 else float("inf"))
                norms.append(float(norm))
                _check_finite(norms[-1], "the gradient norm", self.s.name, epoch, i)
                self.optim.step()
                self.step += 1
                if self.s.kind == "grpo":
                    self._sync_reference()
                if i == 1 and self.s.kind == "grpo":
                    row_first = logs["policy/ratio_mean"]
                if self.s.kind == "grpo" and self.s.opt.kl.adaptive.enabled and self.s.opt.kl.adaptive.cadence == "step":
                    a = self.s.opt.kl.adaptive
                    self.beta = L.adapt_beta(self.beta, logs["kl/value"], a.low, a.high, a.factor, a.beta_min, a.beta_max)
                for k, v in logs.items():
                    acc[k] = acc.get(k, 0.0) + v
                self.rep.step()
        n = max(len(norms), 1)
        row: dict[str, Any] = {"stage": self.s.name, "epoch": epoch}
        # Counts (keys starting with "_") are summed, not averaged: the share of positive-advantage
        # terms clipped is over the whole epoch, not a mean of per-step shares.
        pos, pos_clipped = acc.pop("_pos", 0.0), acc.pop("_pos_clipped", 0.0)
        groups, skipped = acc.pop("_groups", 0.0), acc.pop("_skipped", None)
        row.update({k: v / n for k, v in acc.items()})
        if skipped is not None:  # grpo.filter_groups: share of the epoch's groups left out of the loss
            row["adv/skipped_frac"] = skipped / groups if groups else 0.0
        if self.s.kind == "grpo":
            row["policy/clip_frac_pos"] = pos_clipped / pos if pos else 0.0
        if advs:
            row.update(L.advantage_stats(advs))
            row["policy/first_step_ratio"] = row_first  # the ratio before this epoch's first update
            row["policy/start_ratio"] = self.start_ratio
            row["kl/beta"] = self.beta  # per-step cadence: the beta after the epoch's last step
            if self.s.opt.kl.adaptive.enabled and self.s.opt.kl.adaptive.cadence == "epoch":
                a = self.s.opt.kl.adaptive
                self.beta = L.adapt_beta(self.beta, row["kl/value"], a.low, a.high, a.factor, a.beta_min, a.beta_max)
        row["val/loss"] = validation_loss(self.model, self.val)
        if self.validate is not None:
            row.update(self.validate(self.model))
        row["optim/lr"] = lr_at(self.step - 1, self.total_steps, self.s.opt, self.peak_lr)
        row["optim/grad_norm"] = sum(norms) / n
        row["time/epoch_s"] = time.perf_counter() - t0
        return row

    def _sft_loss(self, b: Batch) -> tuple[Tensor, dict[str, float]]:
        logp = self.model.score_sequences(b.query, b.pool, b.pool_mask, b.pointers, b.mask)
        loss = L.top1_ce_loss(logp, b.raw, b.mask)
        value = loss.item()
        return loss, {"losses/sft": value, "train/loss": value}

    def _rce_loss(self, b: Batch) -> tuple[Tensor, dict[str, float]]:
        opt: RCESpec = self.s.opt  # type: ignore[assignment]
        logp = self.model.score_sequences(b.query, b.pool, b.pool_mask, b.pointers, b.mask)
        if opt.target == "top1":
            loss, tau = L.top1_ce_loss(logp, b.raw, b.mask), 0.0
        else:
            tau = L.linear_schedule(self.step, self.total_steps, opt.temp_start, opt.temp_end)
            loss = L.rce_loss(logp, rce_rewards(b, opt.rewards, self.s.std_floor), b.mask, tau)
        value = loss.item()
        return loss, {"losses/rce": value, "rce/tau": tau, "train/loss": value}

    def _grpo_loss(self, b: Batch, epoch: int) -> tuple[Tensor, dict[str, float], tuple[Tensor, Tensor]]:
        opt: GRPOSpec = self.s.opt  # type: ignore[assignment]
        schedule = [(c.from_epoch, c.top_k) for c in opt.top_k_schedule]
        k = L.top_k_for_epoch(schedule, epoch)
        a = opt.advantage
        # "original": stage 1 (z-score) over the whole group's raw rewards, top-k by its values, stage 2
        # over the kept ones (in z units); "lever": top-k and advantages on the stage's rewards.
        original = a.normalization == "original"
        rewards, group_clip = (b.raw, a.group_clip) if original else (b.rewards, None)
        token = opt.ratio_level == "token"
        picks = token or opt.entropy_coef > 0  # per-pick log-probs and distributions (the autograd path)
        scored = None
        if opt.kl.in_reward:
            # KL in the reward (verl use_kl_in_reward): every sequence of the group is scored first, its KL to
            # the reference taken from its reward, without gradient, before the advantages and the top-k.
            scored = self._score(b, picks)
            kl_seq = L.kl_terms(self._ratio_terms(b, scored, "kl")[0], opt.kl.estimator).sum(-1)  # [B, G]
            rewards = L.kl_penalized_rewards(rewards, kl_seq, b.mask, self.beta)
        adv, kept = L.two_stage_advantages(
            rewards, b.mask, k, group_clip, a.kind, a.std_floor, a.clip, opt.top_k_ties, a.rank_ties, compact=True,
            scale=a.scale_rewards,
        )  # fmt: skip
        idx = L.kept_first(kept) if k is not None else None
        data_rewards = b.raw if original else b.rewards  # uniform groups are judged on the data's rewards
        if idx is not None:
            b = b.keep(kept)  # the layout `adv` is in
            data_rewards = data_rewards.gather(1, idx)
            if scored is not None:
                scored = tuple(_take(x, idx) for x in scored)
        adv_mask = (adv.detach().cpu(), b.mask.cpu())  # the advantages as the data gives them (adv/* metrics)
        mask = b.mask
        logs: dict[str, float] = {}
        if opt.filter_groups:  # DAPO dynamic sampling, offline: a group whose rewards are all equal teaches nothing
            uniform = L.uniform_groups(data_rewards, mask)  # [B]
            logs.update({"_groups": float(mask.any(-1).sum()), "_skipped": float(uniform.sum())})
            mask = mask & ~uniform.unsqueeze(-1)
            b = replace(b, mask=mask)
        adv, is_logs = self._off_policy(adv, b)  # weighted by grpo.off_policy (w > 0: the same as weighting the terms)
        logs.update(is_logs)
        if scored is None:
            scored = self._score(b, picks)
        log_ratio, tmask = self._ratio_terms(b, scored, opt.ratio_level)  # [B, G, T]
        terms, st = L.clipped_policy_terms(log_ratio, adv, tmask, opt.eps_low, opt.eps_high, opt.ppo_clip, opt.clip_c)
        norm = opt.batch_size * self._largest_group(k) * tmask.shape[-1]  # seq-mean-token-sum-norm's constant
        ppo = L.aggregate(terms, tmask, opt.loss_agg, norm)
        kl_ratio, kl_mask = self._ratio_terms(b, scored, "kl")
        kl = L.aggregate(
            L.kl_terms(kl_ratio, opt.kl.estimator), kl_mask, opt.loss_agg, norm / tmask.shape[-1] * kl_mask.shape[-1]
        )
        loss = ppo if opt.kl.in_reward else ppo + self.beta * kl
        if opt.entropy_coef > 0:
            pmask = mask.unsqueeze(-1).expand_as(scored[1])  # [B, G, L]
            entropy = L.aggregate(L.pick_entropy(scored[2]), pmask, opt.loss_agg, norm / tmask.shape[-1] * pmask.shape[-1])
            loss = loss - opt.entropy_coef * entropy
            logs.update({"losses/entropy": -opt.entropy_coef * entropy.item(), "policy/entropy": entropy.item()})
        if opt.clip_c is not None:
            logs["policy/clip_frac_c"] = st["clip_frac_c"]
        kl_value = kl.item()
        logs.update(
            {
                "losses/ppo": ppo.item(),
                "losses/kl": 0.0 if opt.kl.in_reward else self.beta * kl_value,
                "kl/value": kl_value,
                "policy/clip_frac": st["clip_frac"],
                "_pos": st["n_pos"],
                "_pos_clipped": st["n_pos_clipped"],
                "policy/ratio_mean": st["ratio_mean"],
                "train/loss": loss.item(),
            }
        )
        return loss, logs, adv_mask

    def _score(self, b: Batch, picks: bool) -> tuple[Tensor, ...]:
        """The policy's log p of the batch's sequences [B, G]; with `picks` also per pick [B, G, L] and each
        pick's distribution [B, G, L, K] (the autograd path, Selector.score_picks)."""
        if not picks:
            return (self.model.score_sequences(b.query, b.pool, b.pool_mask, b.pointers, b.mask),)
        per_pick, dist = self.model.score_picks(b.query, b.pool, b.pool_mask, b.pointers, b.mask)
        return per_pick.sum(-1), per_pick, dist

    def _ratio_terms(self, b: Batch, scored: tuple[Tensor, ...], level: str) -> tuple[Tensor, Tensor]:
        """log ratio to the reference per loss term and the terms' mask, [B, G, T] (L.ratio_terms); level "kl"
        is the KL's terms: per pick for ratio_level token, else per sequence."""
        opt: GRPOSpec = self.s.opt  # type: ignore[assignment]
        if level == "kl":
            level = "token" if opt.ratio_level == "token" else "joint"
        if level == "token":
            assert self.picks_ref is not None
            return L.ratio_terms(scored[1], self.picks_ref[b.seq], b.mask, "token")
        logp_ref = self.logp_ref[b.seq] * b.mask  # [B, G]
        return L.ratio_terms(scored[0], logp_ref, b.mask, level, b.pointers.shape[-1])  # type: ignore[arg-type]

    def _largest_group(self, k: int | None) -> int:
        """The most sequences a group trains on in this stage (at most k with a top-k curriculum)."""
        largest = int(self.train.data.group_sizes().max())
        return largest if k is None else min(k, largest)


def _take(x: Tensor, idx: Tensor) -> Tensor:
    """x [B, G, ...] gathered along G by idx [B, G'] (Batch.keep's layout)."""
    return x.gather(1, idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand(*idx.shape, *x.shape[2:]))
