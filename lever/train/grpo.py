"""GRPO's objective: the reference policy, the KL coefficient, then per batch the advantages and the policy loss.

The epoch loop (`lever.train.stage.StageRunner`) asks `GRPOObjective.loss` for a batch's loss; the objective works in
the order RL trainers use (verl's `compute_advantage` then `compute_policy_loss`, TRL's `_generate_and_score` then
`compute_loss`):

1. `advantages(batch)`: the rewards (the plan's, or the raw ones for the original's normalisation), the KL taken
   from them (kl.in_reward), the epoch's top-k (top_k_schedule), the normalisation (`AdvantageRule`), the groups
   left out (filter_groups) and the importance weights (off_policy) -> an `Advantages`;
2. `policy_loss(advantages)`: the ratio to the reference, the clip, the aggregation, the KL term and the entropy.

Every option is read once, in `GRPOObjective.__init__` (and `AdvantageRule.of`, `kl_controller`, `Reference`): the
per-batch code branches on attributes decided there. `lever data stats --plan` (`lever.train.predict`) computes its
advantages with the same `AdvantageRule` and `losses.advantage_stats`, so its prediction is what epoch 1 logs.

Where the batches come from is not the objective's business: an offline stage serves its data's groups
(`lever.train.groups.Groups`); a source that samples groups from the current policy hands the objective the same
`Batch`es. The objective needs only, for a batch, its sequences' reference log-probs (`Reference.logp`) and, with
off_policy, their behaviour log-probs (`behaviour`): both are tables over the training sequences (`Batch.seq`) here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import Tensor

from lever.errors import RunFailed
from lever.model import SelectorBase
from lever.spec.schema import AdaptiveKL, AdvantageSpec, GRPOSpec, KLSpec

from . import losses as L
from .checkpoint import State, state_of
from .groups import Batch, Groups, derive_seed
from .passes import all_logprobs, all_pick_logprobs

GRPO_METRICS = (
    "losses/ppo",
    "losses/kl",
    "kl/value",
    "kl/beta",
    "adv/mean",
    "adv/std",
    "adv/max",
    "adv/zero_frac",
    "adv/flat_frac",
    "policy/clip_frac",
    "policy/clip_frac_pos",
    "policy/ratio_mean",
    "policy/first_step_ratio",
    "policy/start_ratio",
)

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


# ---------------------------------------------------------------------------- the KL coefficient


class FixedKLController:
    """beta, fixed (verl FixedKLController): `update` leaves it as it is."""

    def __init__(self, beta: float):
        self.value = float(beta)

    def update(self, kl: float, cadence: Literal["step", "epoch"]) -> None:
        """After an optimiser step (cadence "step", kl = its KL) or an epoch ("epoch", kl = its mean KL)."""

    def state(self) -> dict[str, float]:
        """What resume.pt keeps: beta after the last finished epoch."""
        return {"beta": self.value}

    def load(self, state: dict[str, Any]) -> None:
        self.value = float(state["beta"])


class AdaptiveKLController(FixedKLController):
    """beta adapted to the measured KL (grpo.kl.adaptive; verl AdaptiveKLController's role, the original's rule):
    beta x factor when KL > high, / factor when KL < low, clamped to [beta_min, beta_max] (L.adapt_beta), after
    every step or after every epoch (`cadence`)."""

    def __init__(self, beta: float, rule: AdaptiveKL):
        super().__init__(beta)
        self.rule = rule

    def update(self, kl: float, cadence: Literal["step", "epoch"]) -> None:
        if cadence == self.rule.cadence:
            a = self.rule
            self.value = L.adapt_beta(self.value, kl, a.low, a.high, a.factor, a.beta_min, a.beta_max)


def kl_controller(spec: KLSpec) -> FixedKLController:
    """The stage's KL coefficient, starting at grpo.kl.beta: adaptive when grpo.kl.adaptive.enabled."""
    return AdaptiveKLController(spec.beta, spec.adaptive) if spec.adaptive.enabled else FixedKLController(spec.beta)


# ---------------------------------------------------------------------------- advantages


@dataclass(frozen=True)
class AdvantageRule:
    """How a batch's rewards become advantages (grpo.advantage, top_k_schedule, top_k_ties), decided once.

    "original" normalisation: stage 1 (z-score) over the whole group's raw rewards, top-k by its values, stage 2 over
    the kept ones (in z units); "lever": top-k and advantages on the stage's rewards (L.two_stage_advantages).
    """

    schedule: list[tuple[int, int]]  # [(from_epoch, k)]: the beam curriculum
    original: bool  # advantage.normalization = "original": start from the raw rewards
    group_clip: float | None  # stage 1's clamp (None: no stage 1)
    kind: Any
    std_floor: float
    clip: float
    ties: Any  # top_k_ties
    rank_ties: Any
    scale: Any  # advantage.scale_rewards

    @classmethod
    def of(cls, opt: GRPOSpec) -> AdvantageRule:
        a: AdvantageSpec = opt.advantage
        original = a.normalization == "original"
        return cls(
            [(c.from_epoch, c.top_k) for c in opt.top_k_schedule],
            original,
            a.group_clip if original else None,
            a.kind,
            a.std_floor,
            a.clip,
            opt.top_k_ties,
            a.rank_ties,
            a.scale_rewards,
        )

    def top_k(self, epoch: int) -> int | None:
        """The sequences per group the epoch trains on (None = all)."""
        return L.top_k_for_epoch(self.schedule, epoch)

    def rewards(self, raw: Tensor, rewards: Tensor) -> Tensor:
        """The rewards advantages start from (and uniform groups are judged on): raw for "original", else the stage's."""
        return raw if self.original else rewards

    def __call__(self, rewards: Tensor, mask: Tensor, k: int | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """(A, kept, idx): kept [B, G] the top-k; A [B, G'] in the layout Batch.keep(kept) gives, idx [B, G'] the gather
        index into that layout (L.kept_first), None when every sequence is kept (A is then in the batch's layout)."""
        adv, kept = L.two_stage_advantages(
            rewards, mask, k, self.group_clip, self.kind, self.std_floor, self.clip, self.ties, self.rank_ties,
            compact=True, scale=self.scale,
        )  # fmt: skip
        return adv, kept, (L.kept_first(kept) if k is not None else None)

    def batch(self, b: Batch, k: int | None, rewards: Tensor | None = None) -> tuple[Tensor, Batch, Tensor | None]:
        """(A, the batch in A's layout, idx): a batch's advantages at top-k `k`, from `rewards` (default: the rule's
        own, `self.rewards`); with a top-k the batch is its kept sequences, re-padded (Batch.keep), and idx the gather
        index that moves any other [B, G] tensor of the batch into that layout. Training and `lever data stats --plan`
        (lever.train.predict) both call this."""
        adv, kept, idx = self(self.rewards(b.raw, b.rewards) if rewards is None else rewards, b.mask, k)
        return adv, (b if idx is None else b.keep(kept)), idx


@dataclass
class Advantages:
    """Phase 1's result for one batch: what the policy loss trains on."""

    batch: Batch  # the sequences the loss sees: the top-k kept and re-padded, filtered groups masked out
    adv: Tensor  # [B, G] each sequence's advantage, weighted by its importance weight (off_policy)
    scored: tuple[Tensor, ...] | None  # the policy's scores taken for kl.in_reward (the loss reuses them)
    logs: dict[str, float]


# ---------------------------------------------------------------------------- the reference


class Reference:
    """The policy GRPO's ratio and KL are taken against (grpo.reference), as log-prob tables over the training
    sequences: per sequence [S], and per pick [S, L] where a per-pick ratio (ratio_level token) or per-pick importance
    weights (off_policy at is_level token) need them; its weights when it is synced (reference = sync)."""

    def __init__(self, model: SelectorBase, train: Groups, opt: GRPOSpec, start: State | None, seed: int, stage: str):
        self.model, self.train, self.seed, self.stage = model, train, seed, stage
        self.frozen = start  # pre_rce: the weights before RCE; None = the stage's start
        self.train_mode = opt.policy_mode == "train"
        self.per_pick = opt.ratio_level == "token" or (opt.off_policy != "none" and opt.is_level == "token")
        self.sync_every = opt.ref_sync_steps if opt.reference == "sync" else None
        self.sync_alpha = opt.ref_sync_alpha
        self.logp: Tensor | None = None  # [S]
        self.picks: Tensor | None = None  # [S, L]
        self.weights: State | None = None  # kept when synced or scored per pick
        self.start_ratio = float("nan")  # mean exp(logp_start - logp_ref) over the training sequences

    def start(self, keep: bool = False) -> None:
        """The reference's log-probs before the first step (and the start ratio); its weights when synced, per pick,
        or `keep` (online GRPO: its log-probs are taken again for every batch of samples, `over`)."""
        self.logp = self._reference_logprobs()
        if self.per_pick or self.sync_every is not None or keep:
            start = self.frozen if self.frozen is not None else state_of(self.model)
            self.weights = {k: v.detach().clone() for k, v in start.items()}
            if self.per_pick:
                self.picks = self._under(self.weights, all_pick_logprobs)

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
        torch.manual_seed(derive_seed(self.seed, self.stage, "start_ratio"))
        start = all_logprobs(self.model, self.train, train=self.train_mode)
        if self.frozen is None and not self.train_mode:
            self.start_ratio = 1.0
            return start
        if self.frozen is not None:
            self.model.load_state_dict(self.frozen)
        logp = all_logprobs(self.model, self.train)
        self.model.load_state_dict(current)
        self.start_ratio = float((start - logp).exp().mean())
        return logp

    def _under(self, weights: State, score: Any) -> Tensor:
        """score(model, train groups) with the model holding `weights` (eval mode); the model's own weights back after."""
        current = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(weights)
        try:
            return score(self.model, self.train)
        finally:
            self.model.load_state_dict(current)

    def over(self, groups: Groups) -> None:
        """Online GRPO: the reference's log-probs (per sequence, and per pick where needed) of a new batch of samples."""
        assert self.weights is not None
        self.train = groups
        self.logp = self._under(self.weights, all_logprobs)
        if self.per_pick:
            self.picks = self._under(self.weights, all_pick_logprobs)

    def set(self, weights: State) -> None:
        """Make `weights` the reference: its log-probs (per sequence, and per pick where needed) again."""
        self.weights = {k: v.detach().clone() for k, v in weights.items()}
        self.logp = self._under(self.weights, all_logprobs)
        if self.per_pick:
            self.picks = self._under(self.weights, all_pick_logprobs)

    def after_step(self, step: int) -> None:
        """reference = sync (TRL sync_ref_model): every ref_sync_steps optimiser steps,
        ref <- (1 - alpha) ref + alpha policy (mix_weights), and the reference's log-probs again."""
        if self.sync_every is not None and step % self.sync_every == 0:
            assert self.weights is not None
            self.set(mix_weights(self.weights, state_of(self.model), self.sync_alpha))

    def state(self) -> dict[str, Any]:
        """What resume.pt keeps of the reference: its weights when synced (the frozen one is the stage's start)."""
        return {"reference": self.weights} if self.sync_every is not None else {}

    def load(self, state: dict[str, Any]) -> None:
        if "reference" in state:  # reference sync: the reference as it stood after that epoch
            self.set(state["reference"])

    def seq_logp(self, b: Batch) -> Tensor:
        """The batch's sequences' reference log-probs [B, G], 0 on padding."""
        assert self.logp is not None
        return self.logp[b.seq] * b.mask

    def pick_logp(self, b: Batch) -> Tensor:
        """The batch's sequences' per-pick reference log-probs [B, G, L]."""
        assert self.picks is not None
        return self.picks[b.seq]


def mix_weights(ref: State, policy: State, alpha: float) -> State:
    """TRL's reference sync: ref <- (1 - alpha) * ref + alpha * policy, entry by entry (floating tensors)."""
    return {k: (1 - alpha) * v + alpha * policy[k].to(v.device) if v.is_floating_point() else v.clone() for k, v in ref.items()}


# ---------------------------------------------------------------------------- the objective


class GRPOObjective:
    """GRPO over a stage's batches (see the module docstring); the epoch loop's `Objective` for kind "grpo"."""

    metrics = GRPO_METRICS

    def __init__(self, name: str, opt: GRPOSpec, model: SelectorBase, train: Groups, seed: int, reference: State | None):
        self.name, self.model, self.train = name, model, train
        self.batch_size = opt.batch_size
        # GRPO runs without dropout (grpo.policy_mode = "eval"), so the ratio to the reference is
        # exactly 1 before the first update; "train" keeps dropout on, as the original.
        self.train_mode = opt.policy_mode == "train"
        self.rule = AdvantageRule.of(opt)
        self.reference = Reference(model, train, opt, reference, seed, name)
        self.kl = kl_controller(opt.kl)
        self.kl_estimator, self.max_kl, self.kl_in_reward = opt.kl.estimator, opt.kl.max_kl, opt.kl.in_reward
        self.ratio_level = opt.ratio_level
        self.kl_level: L.RatioLevel = (
            "token" if opt.ratio_level == "token" else "joint"
        )  # the KL's terms: per pick, else per sequence
        self.picks = opt.ratio_level == "token" or opt.entropy_coef > 0  # per-pick scores (the autograd path)
        self.eps_low, self.eps_high, self.ppo_clip, self.clip_c = opt.eps_low, opt.eps_high, opt.ppo_clip, opt.clip_c
        self.loss_agg, self.entropy_coef, self.filter_groups = opt.loss_agg, opt.entropy_coef, opt.filter_groups
        self.off_policy, self.is_cap, self.is_level = opt.off_policy != "none", opt.is_cap, opt.is_level
        self.off_policy_name = opt.off_policy
        self.behaviour: Tensor | None = None  # off_policy: behaviour log-probs [S] or, at is_level token, [S, L]
        self._k: int | None = None  # this epoch's top-k
        self._advs: list[tuple[Tensor, Tensor]] = []  # this epoch's (advantages, mask) per step (adv/* metrics)
        self._first_ratio = float("nan")  # policy/ratio_mean of this epoch's first step
        self._steps = 0  # this epoch's steps so far
        # Online GRPO (rollout.mode = "online", lever.eval.rollout.OnlineSource): each batch of samples comes with the
        # sampling policy's log-probs, which the ratio is taken to (PPO's old policy); the KL stays to the reference.
        self.online = False  # set by the source before start()
        self.old: Tensor | None = None  # [S] the sampling policy's log-probs of the current samples
        self.old_picks: Tensor | None = None  # [S, L] per pick, where the ratio or the importance weights need them

    # ------------------------------------------------------------------ stage and epoch

    def start(self) -> None:
        """From the stage's start weights, so before a resume replaces them: the reference, the behaviour log-probs."""
        self.reference.start(keep=self.online)
        if self.off_policy and not self.online:  # online: each batch of samples brings its own (`new_groups`)
            token = self.is_level == "token"
            d, dev = self.train.data, self.train.features.device
            if not d.has_behaviour(steps=token):
                raise RunFailed(
                    f"{self.name}: grpo.off_policy = {self.off_policy_name!r} needs behaviour log-probs"
                    f"{' per pick' if token else ''}, and the training data has none; regenerate it with `lever data generate`"
                )
            self.behaviour = (d.behaviour_steps if token else d.behaviour_logp).to(dev)

    def new_groups(self, groups: Groups, own: bool = False) -> None:
        """Online GRPO: the batches that follow are these freshly sampled groups. The policy that sampled them is the
        model as it stands (eval mode): its log-probs are the ratio's denominator for every inner step on them
        (rollout.num_iterations), the reference's are the KL's; the behaviour log-probs (the sampling distribution)
        feed grpo.off_policy. `own`: the behaviour log-probs are the policy's own (sampled at temperature 1), so
        they are the denominators and no pass is taken for them."""
        self.train = groups
        self.reference.over(groups)
        d, dev = groups.data, groups.features.device
        if own and d.behaviour_logp is not None and d.behaviour_steps is not None:
            self.old = d.behaviour_logp.to(dev)
            self.old_picks = d.behaviour_steps.to(dev) if self.reference.per_pick else None
        else:
            self.old = all_logprobs(self.model, groups)
            self.old_picks = all_pick_logprobs(self.model, groups) if self.reference.per_pick else None
        if self.off_policy:
            self.behaviour = (d.behaviour_steps if self.is_level == "token" else d.behaviour_logp).to(dev)  # type: ignore[union-attr]

    def state(self) -> dict[str, Any]:
        """What resume.pt holds for this objective: beta, and the reference when it is synced."""
        return {**self.kl.state(), **self.reference.state()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.kl.load(state)
        self.reference.load(state)

    def begin_epoch(self, epoch: int) -> None:
        self._k = self.rule.top_k(epoch)
        self._advs = []
        self._first_ratio = float("nan")
        self._steps = 0

    def after_step(self, step: int, logs: dict[str, float]) -> None:
        """After optimiser step `step` (1-based): the reference sync, the first step's ratio, per-step KL adaptation."""
        self.reference.after_step(step)
        self._steps += 1
        if self._steps == 1:
            self._first_ratio = logs["policy/ratio_mean"]
        self.kl.update(logs["kl/value"], "step")

    def end_epoch(self, row: dict[str, Any], counts: dict[str, float]) -> dict[str, Any]:
        """The epoch row's GRPO figures from its step means (`row`) and summed counts; per-epoch KL adaptation."""
        out: dict[str, Any] = {}
        # Counts are summed over the epoch, not averaged: the share of positive-advantage terms clipped is
        # over the whole epoch, not a mean of per-step shares.
        if self.filter_groups:  # share of the epoch's groups left out of the loss
            groups = counts.get("_groups", 0.0)
            out["adv/skipped_frac"] = counts.get("_skipped", 0.0) / groups if groups else 0.0
        pos = counts.get("_pos", 0.0)
        out["policy/clip_frac_pos"] = counts.get("_pos_clipped", 0.0) / pos if pos else 0.0
        if self._advs:
            out.update(L.advantage_stats(self._advs))
            out["policy/first_step_ratio"] = self._first_ratio  # the ratio before this epoch's first update
            out["policy/start_ratio"] = self.reference.start_ratio
            out["kl/beta"] = self.kl.value  # per-step cadence: the beta after the epoch's last step
            self.kl.update(row["kl/value"], "epoch")
        return out

    def check(self, row: dict[str, Any]) -> None:
        """The guardrail: an epoch whose mean KL exceeds grpo.kl.max_kl stops the stage."""
        if row["kl/value"] > self.max_kl:
            raise RunFailed(
                f"{self.name} epoch {row['epoch']}: KL {row['kl/value']:.3g} exceeds grpo.kl.max_kl = {self.max_kl}; "
                "stopped, the last good checkpoint is kept"
            )

    # ------------------------------------------------------------------ a batch

    def loss(self, b: Batch, step: int) -> tuple[Tensor, dict[str, float]]:
        """The batch's loss and its step metrics: the advantages first, then the policy loss."""
        return self.policy_loss(self.advantages(b))

    def advantages(self, b: Batch) -> Advantages:
        """Phase 1: rewards -> (KL in the reward) -> top-k and normalisation -> group filter -> importance weights."""
        rewards = self.rule.rewards(b.raw, b.rewards)
        scored = None
        if self.kl_in_reward:
            # KL in the reward (verl use_kl_in_reward): every sequence of the group is scored first, its KL to
            # the reference taken from its reward, without gradient, before the advantages and the top-k.
            scored = self.score(b)
            kl_seq = L.kl_terms(self.ratio_terms(b, scored, self.kl_level)[0], self.kl_estimator).sum(-1)  # [B, G]
            rewards = L.kl_penalized_rewards(rewards, kl_seq, b.mask, self.kl.value)
        data_rewards = self.rule.rewards(b.raw, b.rewards)  # uniform groups are judged on the data's rewards
        adv, b, idx = self.rule.batch(b, self._k, rewards)  # b: the layout `adv` is in
        if idx is not None:
            data_rewards = data_rewards.gather(1, idx)
            if scored is not None:
                scored = tuple(_take(x, idx) for x in scored)
        self._advs.append((adv.detach().cpu(), b.mask.cpu()))  # the advantages as the data gives them (adv/* metrics)
        logs: dict[str, float] = {}
        if self.filter_groups:  # DAPO dynamic sampling, offline: a group whose rewards are all equal teaches nothing
            uniform = L.uniform_groups(data_rewards, b.mask)  # [B]
            logs.update({"_groups": float(b.mask.any(-1).sum()), "_skipped": float(uniform.sum())})
            b = replace(b, mask=b.mask & ~uniform.unsqueeze(-1))
        if self.off_policy:
            adv, is_logs = self._importance_weighted(adv, b)
            logs.update(is_logs)
        return Advantages(b, adv, scored, logs)

    def _importance_weighted(self, adv: Tensor, b: Batch) -> tuple[Tensor, dict[str, float]]:
        """A_i * w_i with w the truncated importance weights (L.truncated_is_weights; grpo.off_policy). Scaling A by
        w > 0 scales the clipped (and dual-clipped) term by w, so the PPO loss is unchanged in form; the KL is not
        weighted."""
        assert self.behaviour is not None
        if self.is_level == "token":
            old = self._old_picks(b)  # [B, G, L]: the ratio's per-pick denominators
        else:
            old = self._old_seq(b)  # [B, G]: the ratio's own denominators
        w, stats = L.truncated_is_weights(old, self.behaviour[b.seq], b.mask, self.is_cap, self.is_level)
        return adv * w, stats

    def policy_loss(self, a: Advantages) -> tuple[Tensor, dict[str, float]]:
        """Phase 2: ratio -> clip -> aggregation, + beta x KL (unless it is in the reward), - entropy bonus."""
        b, logs = a.batch, dict(a.logs)
        scored = a.scored if a.scored is not None else self.score(b)
        log_ratio, tmask = self.ratio_terms(b, scored, self.ratio_level, old=True)  # [B, G, T]
        terms, st = L.clipped_policy_terms(log_ratio, a.adv, tmask, self.eps_low, self.eps_high, self.ppo_clip, self.clip_c)
        norm = self.batch_size * self._largest_group() * tmask.shape[-1]  # seq-mean-token-sum-norm's constant
        ppo = L.aggregate(terms, tmask, self.loss_agg, norm)
        kl_ratio, kl_mask = self.ratio_terms(b, scored, self.kl_level)
        kl = L.aggregate(
            L.kl_terms(kl_ratio, self.kl_estimator), kl_mask, self.loss_agg, norm / tmask.shape[-1] * kl_mask.shape[-1]
        )
        beta = self.kl.value
        loss = ppo if self.kl_in_reward else ppo + beta * kl
        if self.entropy_coef > 0:
            pmask = b.mask.unsqueeze(-1).expand_as(scored[1])  # [B, G, L]
            entropy = L.aggregate(L.pick_entropy(scored[2]), pmask, self.loss_agg, norm / tmask.shape[-1] * pmask.shape[-1])
            loss = loss - self.entropy_coef * entropy
            logs.update({"losses/entropy": -self.entropy_coef * entropy.item(), "policy/entropy": entropy.item()})
        if self.clip_c is not None:
            logs["policy/clip_frac_c"] = st["clip_frac_c"]
        kl_value = kl.item()
        logs.update(
            {
                "losses/ppo": ppo.item(),
                "losses/kl": 0.0 if self.kl_in_reward else beta * kl_value,
                "kl/value": kl_value,
                "policy/clip_frac": st["clip_frac"],
                "_pos": st["n_pos"],
                "_pos_clipped": st["n_pos_clipped"],
                "policy/ratio_mean": st["ratio_mean"],
                "train/loss": loss.item(),
            }
        )
        return loss, logs

    def score(self, b: Batch) -> tuple[Tensor, ...]:
        """The policy's log p of the batch's sequences [B, G]; with per-pick scores also per pick [B, G, L] and each
        pick's distribution [B, G, L, K] (the autograd path, Selector.score_picks)."""
        if not self.picks:
            return (self.model.score_sequences(b.query, b.pool, b.pool_mask, b.pointers, b.mask),)
        per_pick, dist = self.model.score_picks(b.query, b.pool, b.pool_mask, b.pointers, b.mask)
        return per_pick.sum(-1), per_pick, dist

    def ratio_terms(self, b: Batch, scored: tuple[Tensor, ...], level: L.RatioLevel, old: bool = False) -> tuple[Tensor, Tensor]:
        """log ratio per loss term and the terms' mask, [B, G, T] (L.ratio_terms): to the reference, or with `old` to
        the policy the ratio is taken to (the reference offline; online, the policy that sampled the batch)."""
        if level == "token":
            return L.ratio_terms(scored[1], self._old_picks(b) if old else self.reference.pick_logp(b), b.mask, "token")
        denominator = self._old_seq(b) if old else self.reference.seq_logp(b)
        return L.ratio_terms(scored[0], denominator, b.mask, level, b.pointers.shape[-1])

    def _old_seq(self, b: Batch) -> Tensor:
        """The ratio's denominators per sequence [B, G], 0 on padding: the sampling policy's online, else the reference's."""
        return self.old[b.seq] * b.mask if self.old is not None else self.reference.seq_logp(b)

    def _old_picks(self, b: Batch) -> Tensor:
        """The ratio's per-pick denominators [B, G, L]: the sampling policy's online, else the reference's."""
        return self.old_picks[b.seq] if self.old_picks is not None else self.reference.pick_logp(b)

    def _largest_group(self) -> int:
        """The most sequences a group trains on in this stage (at most k with a top-k curriculum)."""
        largest = int(self.train.data.group_sizes().max())
        return largest if self._k is None else min(self._k, largest)


def _take(x: Tensor, idx: Tensor) -> Tensor:
    """x [B, G, ...] gathered along G by idx [B, G'] (Batch.keep's layout)."""
    return x.gather(1, idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand(*idx.shape, *x.shape[2:]))
