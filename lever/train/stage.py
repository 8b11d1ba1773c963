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
from dataclasses import dataclass, field
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
    """Log-probability of every pick of every sequence of `groups` under `model`, eval mode: [S, L]
    (teacher-forced, pick t after the sequence's first t picks; a row sums to `all_logprobs`)."""
    was = model.training
    model.eval()
    d = groups.data
    out = torch.zeros(d.num_sequences, d.shots, device=groups.features.device)
    for b in groups.batches(torch.arange(groups.num_queries), batch_size):
        enc = model.encode(b.query, b.pool, b.pool_mask)
        labels = torch.where(b.mask.unsqueeze(-1), b.pointers, torch.zeros_like(b.pointers))  # [B, G, L]
        per_pick = model.log_policy(enc, labels, b.mask).gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # [B, G, L]
        out[b.seq[b.mask]] = per_pick[b.mask].float()
    model.train(was)
    return out


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
    ):
        self.s, self.dir, self.model, self.train, self.val = stage, stage_dir, model, train, val
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
        # GRPO off_policy = "truncated_is": behaviour log-probs [S] (sequence level) or [S, L] (token level), and
        # for token level the reference's per-pick log-probs [S, L]
        self.logp_behaviour: Tensor | None = None
        self.pick_logp_ref: Tensor | None = None
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

    def _behaviour_setup(self) -> None:
        """The data's behaviour log-probs on the device and, at token level, the reference's per-pick log-probs
        (under the reference weights, eval mode, as `logp_ref`)."""
        token = self.s.opt.is_level == "token"
        d, dev = self.train.data, self.train.features.device
        if not d.has_behaviour(steps=token):
            raise RunFailed(
                f"{self.s.name}: grpo.off_policy = {self.s.opt.off_policy!r} needs behaviour log-probs"
                f"{' per pick' if token else ''}, and the training data has none; regenerate it with `lever data generate`"
            )
        self.logp_behaviour = (d.behaviour_steps if token else d.behaviour_logp).to(dev)
        if token:
            current = {k: v.clone() for k, v in self.model.state_dict().items()}
            if self.reference is not None:
                self.model.load_state_dict(self.reference)
            self.pick_logp_ref = all_pick_logprobs(self.model, self.train)
            self.model.load_state_dict(current)

    def _off_policy(self, adv: Tensor, b: Batch, logp_ref: Tensor) -> tuple[Tensor, dict[str, float]]:
        """The advantages the policy term uses: A_i * w_i with w the truncated importance weights
        (L.truncated_is_weights; grpo.off_policy), or A itself when off. Scaling A by w > 0 scales the
        clipped term -min(r A, clip(r) A) by w, so the PPO loss is unchanged in form; the KL is not weighted."""
        opt: GRPOSpec = self.s.opt  # type: ignore[assignment]
        if opt.off_policy == "none":
            return adv, {}
        if opt.is_level == "token":
            old = self.pick_logp_ref[b.seq]  # [B, G, L]
        else:
            old = logp_ref  # [B, G]: the ratio's own reference log-probs
        w, stats = L.truncated_is_weights(old, self.logp_behaviour[b.seq], b.mask, opt.is_cap, opt.is_level)
        return adv * w, stats

    # ------------------------------------------------------------------ the loop

    def run(self) -> StageResult:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.s.kind == "grpo":  # from the stage's start weights, so before a resume replaces them
            self.logp_ref = self._reference_logprobs()
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
        row.update({k: v / n for k, v in acc.items()})
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
        adv, kept = L.two_stage_advantages(
            rewards, b.mask, k, group_clip, a.kind, a.std_floor, a.clip, opt.top_k_ties, a.rank_ties, compact=True
        )
        if k is not None:
            b = b.keep(kept)  # the layout `adv` is in
        mask = b.mask
        logp = self.model.score_sequences(b.query, b.pool, b.pool_mask, b.pointers, mask)
        logp_ref = self.logp_ref[b.seq] * mask  # [B, G]
        adv_pg, is_logs = self._off_policy(adv, b, logp_ref)  # adv, weighted by grpo.off_policy
        ppo, st = L.ppo_loss(logp, logp_ref, adv_pg, mask, opt.eps_low, opt.eps_high, opt.ppo_clip)
        kl = L.kl_to_reference(logp, logp_ref, mask, opt.kl.estimator)
        loss = ppo + self.beta * kl
        kl_value = kl.item()
        logs = {
            "losses/ppo": ppo.item(),
            "losses/kl": self.beta * kl_value,
            "kl/value": kl_value,
            "policy/clip_frac": st["clip_frac"],
            "_pos": st["n_pos"],
            "_pos_clipped": st["n_pos_clipped"],
            "policy/ratio_mean": st["ratio_mean"],
            "train/loss": loss.item(),
            **is_logs,
        }
        return loss, logs, (adv.detach().cpu(), mask.cpu())
