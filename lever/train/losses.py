"""Loss math for RCE and GRPO (docs/training.md, Losses), as pure functions.

Every tensor is a padded batch [B, G]: B queries, G = the largest group; `mask`
[B, G] bool is True for a real sequence. Groups are ragged, so every reduction goes
through the mask, and a batch gives the same numbers as its groups one by one.
Reductions over a batch are "mean over queries of a per-query quantity": every
query weighs the same whatever its group size; queries with no real sequence are
left out. Nothing here knows about the model.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lever.data.stats import FLAT
from lever.errors import LeverError

# ---- masked helpers ---------------------------------------------------------


def masked_fill0(x: Tensor, mask: Tensor) -> Tensor:
    """x where mask, else 0 (a `where`, so inf/NaN in padding cannot leak, even into grads)."""
    return torch.where(mask, x, torch.zeros_like(x))


def group_mean(x: Tensor, mask: Tensor) -> Tensor:
    """mean_b = sum_{i real} x_bi / n_b per group: [B, G] -> [B] (0 for an empty group)."""
    n = mask.sum(-1).clamp_min(1)
    return masked_fill0(x, mask).sum(-1) / n


def query_mean(per_query: Tensor, mask: Tensor) -> Tensor:
    """Mean over the queries that have at least one real sequence: [B] -> scalar (0 if none)."""
    has = mask.any(-1)
    n = has.sum().clamp_min(1)
    return masked_fill0(per_query, has).sum() / n


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over queries of the mean over each group's real sequences: [B, G] -> scalar.

    loss = (1 / |Q|) sum_{q in Q} (1 / n_q) sum_{i real} x_qi,  Q = non-empty groups.
    """
    return query_mean(group_mean(x, mask), mask)


def masked_softmax(x: Tensor, mask: Tensor) -> Tensor:
    """w_i = exp(x_i) / sum_{j real} exp(x_j) over each group's real entries; 0 elsewhere."""
    w = x.masked_fill(~mask, float("-inf")).softmax(-1)
    return masked_fill0(w, mask)  # an empty group is all NaN: make it 0


# ---- schedules ---------------------------------------------------------------


def linear_schedule(step: int, total: int, start: float, end: float) -> float:
    """v(step) = start + (end - start) * step / (total - 1), step clamped to [0, total - 1].

    Step 0 gives `start`, the last step (total - 1) gives `end`; total <= 1 gives start.
    """
    if total <= 1:
        return float(start)
    s = min(max(step, 0), total - 1)
    return float(start + (end - start) * s / (total - 1))


def top_k_for_epoch(schedule: list[tuple[int, int]], epoch: int) -> int | None:
    """Beam curriculum: how many top sequences per group GRPO uses at `epoch` (1-based).

    schedule = [(from_epoch, k), ...]; the entry with the largest from_epoch <= epoch
    applies; k = 0 means all (None). No entry applies, or none given -> None (all).
    Example: [(1, 3), (2, 5)] is the original's "top-3 in epoch 1, top-5 later".
    """
    best: tuple[int, int] | None = None
    for start, k in schedule:
        if start < 1 or k < 0:
            raise LeverError(
                f"beam curriculum entry ({start}, {k}) is invalid",
                hint="entries are (from_epoch, k) with from_epoch >= 1 and k >= 0 (0 = all)",
            )
        if start <= epoch and (best is None or start >= best[0]):
            best = (start, k)
    if best is None or best[1] == 0:
        return None
    return best[1]


# ---- ranks and advantages ----------------------------------------------------


def group_ranks(rewards: Tensor, mask: Tensor, ties: Literal["average", "first"] = "average") -> Tensor:
    """Rank of each real sequence in its group, 0 = highest reward: [B, G] float.

    rank_i = #{j real: r_j > r_i} + tie term, where the tie term is
      average: (#{j real: r_j = r_i} - 1) / 2   (tied sequences share their mean rank)
      first:   #{j real: r_j = r_i, j < i}      (lower index ranks first)
    Padded entries get 0.
    """
    r_i = rewards.unsqueeze(-1)  # [B, G, 1]
    r_j = rewards.unsqueeze(-2)  # [B, 1, G]
    real_j = mask.unsqueeze(-2)  # [B, 1, G]
    above = ((r_j > r_i) & real_j).sum(-1)  # [B, G]
    equal = (r_j == r_i) & real_j  # [B, G, G], includes i itself
    if ties == "average":
        tie = (equal.sum(-1) - 1).to(rewards.dtype) / 2
    elif ties == "first":
        G = rewards.shape[-1]
        before = torch.ones(G, G, dtype=torch.bool, device=rewards.device).tril(-1)  # [i, j]: j < i
        tie = (equal & before).sum(-1).to(rewards.dtype)
    else:
        raise LeverError(f"unknown tie rule {ties!r}", hint="use 'average' or 'first'")
    return masked_fill0(above.to(rewards.dtype) + tie, mask)


def group_advantages(
    rewards: Tensor,
    mask: Tensor,
    kind: Literal["rank", "zscore", "centered"] = "rank",
    std_floor: float = 0.1,
    ties: Literal["average", "first"] = "average",
    clip: float | None = 5.0,
    scale: Literal["group", "batch", "none"] = "group",
) -> Tensor:
    """Per-group advantages A [B, G]; padded entries are 0.

    rank:     A = 1 - 2 * rank / (n - 1)   (best +1, worst -1; n = 1 -> 0; ties per `ties`)
    zscore:   A = (r - mean) / max(std, std_floor), std the sample std (divisor n - 1;
              a group of one has std 0, so the floor applies and A = 0); `scale` (TRL scale_rewards)
              says whose std: group = the group's (above), batch = the sample std of every real
              reward of the batch, none = no division (A = r - mean, Dr. GRPO)
    centered: A = r - mean
    then A = clamp(A, -clip, clip) unless clip is None.
    """
    n = mask.sum(-1, keepdim=True).to(rewards.dtype)  # [B, 1] real sequences per group
    if kind == "rank":
        rank = group_ranks(rewards, mask, ties)
        adv = torch.where(n > 1, 1 - 2 * rank / (n - 1).clamp_min(1), torch.zeros_like(rank))
    elif kind in ("zscore", "centered"):
        mean = group_mean(rewards, mask).unsqueeze(-1)  # [B, 1]
        adv = rewards - mean
        if kind == "zscore" and scale == "group":
            var = masked_fill0(adv**2, mask).sum(-1, keepdim=True) / (n - 1).clamp_min(1)
            adv = adv / var.sqrt().clamp_min(std_floor)
        elif kind == "zscore" and scale == "batch":
            adv = adv / rewards[mask].std().nan_to_num(0.0).clamp_min(std_floor)  # one real reward: std NaN -> floor
        elif kind == "zscore" and scale != "none":
            raise LeverError(f"unknown advantage scale {scale!r}", hint="use 'group', 'batch' or 'none'")
    else:
        raise LeverError(f"unknown advantage kind {kind!r}", hint="use 'rank', 'zscore' or 'centered'")
    if clip is not None:
        adv = adv.clamp(-clip, clip)
    return masked_fill0(adv, mask)


def advantage_stats(steps: list[tuple[Tensor, Tensor]], eps: float = 1e-8, flat: float = FLAT) -> dict[str, float]:
    """An epoch row's advantage figures from its steps' (A [B, G], mask [B, G]) pairs.

    Over every real sequence of the epoch: adv/mean, adv/std (population), adv/max;
    adv/zero_frac = share of the epoch's non-empty groups whose advantages are all |A| <= eps
    (groups that teach nothing, e.g. all rewards equal), adv/flat_frac = the same with all |A| < `flat`
    (groups that teach almost nothing; lever.data.stats.FLAT): counts over the whole epoch, not means of
    per-step shares. No real sequence gives zeros.
    """
    vals = torch.cat([a[m] for a, m in steps]) if steps else torch.zeros(0)
    if vals.numel() == 0:
        return {"adv/mean": 0.0, "adv/std": 0.0, "adv/max": 0.0, "adv/zero_frac": 0.0, "adv/flat_frac": 0.0}
    spread = torch.cat([masked_fill0(a.abs(), m).amax(-1)[m.any(-1)] for a, m in steps])  # max |A| per non-empty group
    return {
        "adv/mean": vals.mean().item(),
        "adv/std": vals.std(unbiased=False).item(),
        "adv/max": vals.max().item(),
        "adv/zero_frac": (spread <= eps).float().mean().item(),
        "adv/flat_frac": (spread < flat).float().mean().item(),
    }


def top_k_mask(rewards: Tensor, mask: Tensor, k: int | None, ties: Literal["index", "topk"] = "index") -> Tensor:
    """Keep the k real sequences with the highest reward per group. [B, G] bool.

    ties "index": among equal rewards the lower index goes first: mask & (rank_first < k).
    ties "topk": the indices torch.topk returns on the row (padding at -inf), the
    original's rule; which of equal rewards it keeps is torch's choice.
    k None keeps all real sequences.
    """
    if k is None:
        return mask.clone()
    if k < 1:
        raise LeverError(f"top-k must be >= 1 or None (all), got {k}")
    if ties == "index":
        return mask & (group_ranks(rewards, mask, "first") < k)
    if ties != "topk":
        raise LeverError(f"unknown tie rule {ties!r}", hint="use 'index' or 'topk'")
    idx = rewards.masked_fill(~mask, float("-inf")).topk(min(k, rewards.shape[-1]), dim=-1).indices  # [B, k]
    return mask & torch.zeros_like(mask).scatter(-1, idx, True)


def group_zscore_clamped(rewards: Tensor, mask: Tensor, clamp: float = 3.0) -> Tensor:
    """Stage 1 of the original's advantages, over each whole group: [B, G].

    z_i = clamp((r_i - mean) / std, -clamp, clamp), std the sample std (divisor n - 1), no
    floor; a constant group (std 0) gets z = 0. (The original keeps the raw rewards for a
    constant group; stage 2 makes both 0.) Padded entries are 0.
    """
    n = mask.sum(-1, keepdim=True).to(rewards.dtype)  # [B, 1]
    dev = masked_fill0(rewards - group_mean(rewards, mask).unsqueeze(-1), mask)  # [B, G]
    std = ((dev**2).sum(-1, keepdim=True) / (n - 1).clamp_min(1)).sqrt()  # [B, 1]
    z = torch.where(std > 1e-12, dev / std.clamp_min(1e-12), torch.zeros_like(dev))
    return masked_fill0(z.clamp(-clamp, clamp), mask)


def kept_first(keep: Tensor) -> Tensor:
    """Gather index [B, G'] that moves each group's kept sequences (`keep` [B, G] True) to the
    front, in order, trimmed to the largest kept group (at least 1): x.gather(1, idx) re-pads x."""
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    return order[:, : max(int(keep.sum(1).max()), 1)]


def two_stage_advantages(
    rewards: Tensor,
    mask: Tensor,
    k: int | None,
    group_clip: float | None = 3.0,
    kind: Literal["rank", "zscore", "centered"] = "zscore",
    std_floor: float = 0.1,
    clip: float = 5.0,
    ties: Literal["index", "topk"] = "topk",
    rank_ties: Literal["average", "first"] = "average",
    compact: bool = False,
    scale: Literal["group", "batch", "none"] = "group",
) -> tuple[Tensor, Tensor]:
    """GRPO's advantages: (A, kept [B, G] bool), the original's two stages or lever's one.

    1. z = group_zscore_clamped(r) over all the group's real sequences (clamped to +-group_clip);
       group_clip None skips this stage (lever's normalisation: z = r);
    2. kept = the top-k of the group by z (top_k_mask with `ties`; k None = all real sequences);
    3. A = group_advantages(z over the kept sequences, kind, std_floor, clip): for zscore,
       A = (z - mean_kept) / max(std_kept, std_floor), so the floor is in z units (`scale`: whose std,
       see group_advantages).
    A is [B, G] and 0 outside `kept`; with `compact` (and k given) it is in the layout
    Batch.keep(kept) gives (kept sequences first, re-padded, see kept_first): the one the
    trainer scores, so its sums run over exactly the values the step sees.
    """
    z = rewards if group_clip is None else group_zscore_clamped(rewards, mask, group_clip)
    kept = top_k_mask(z, mask, k, ties)
    z_used, kept_used = z, kept
    if compact and k is not None:
        idx = kept_first(kept)
        z_used, kept_used = z.gather(1, idx), kept.gather(1, idx)
    return group_advantages(z_used, kept_used, kind, std_floor, rank_ties, clip, scale), kept


def uniform_groups(rewards: Tensor, mask: Tensor) -> Tensor:
    """Groups whose real sequences all have the same reward: [B] bool (an empty group is not uniform).

    Such a group has no signal (every advantage is 0); DAPO's dynamic sampling drops it from the loss.
    """
    hi = rewards.masked_fill(~mask, float("-inf")).amax(-1)
    lo = rewards.masked_fill(~mask, float("inf")).amin(-1)
    return mask.any(-1) & (hi == lo)


# ---- RCE -----------------------------------------------------------------------


def rce_loss(logp: Tensor, rewards: Tensor, mask: Tensor, tau: float) -> Tensor:
    """Reward-weighted cross-entropy.

    w_i = softmax(r / tau) over the group's real sequences, CE_i = -logp_i (the summed
    per-step cross-entropy of sequence i); loss = mean over queries of sum_i w_i * CE_i.
    The weights carry no gradient (rewards are data).
    """
    w = masked_softmax(rewards.detach() / tau, mask)  # [B, G]
    per_query = (w * masked_fill0(-logp, mask)).sum(-1)  # [B]
    return query_mean(per_query, mask)


def top1_ce_loss(logp: Tensor, rewards: Tensor, mask: Tensor) -> Tensor:
    """Plain CE on each group's best sequence: mean over queries of -logp_{argmax r}
    (ties: the first index)."""
    best = rewards.masked_fill(~mask, float("-inf")).argmax(-1, keepdim=True)  # [B, 1]
    one = torch.zeros_like(mask).scatter(-1, best, True) & mask  # [B, G]
    per_query = masked_fill0(-logp, one).sum(-1)  # [B]
    return query_mean(per_query, mask)


# ---- GRPO ----------------------------------------------------------------------


LossAgg = Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"]
RatioLevel = Literal["joint", "token", "sequence"]
KLEstimator = Literal["k1", "k2", "k3"]


def ratio_terms(
    logp_new: Tensor, logp_ref: Tensor, mask: Tensor, level: RatioLevel = "joint", picks: int = 1
) -> tuple[Tensor, Tensor]:
    """log ratio of each loss term and the terms' mask: ([B, G, T], [B, G, T] bool).

    A term is what one ratio covers. logp_new/logp_ref are per sequence [B, G] for joint and sequence,
    per pick [B, G, L] for token; mask [B, G] is the real sequences; `picks` = L, the picks per sequence.
    With d_t = log p_new_t - log p_ref_t:
      joint:    T = 1, log r = sum_t d_t = log p_new(seq) - log p_ref(seq)   (a sequence is one action)
      sequence: T = 1, log s = (1 / L) sum_t d_t   (GSPO: s is the geometric mean of the per-pick ratios)
      token:    T = L, log r_t = d_t   (one term per pick)
    The reference carries no gradient; padding gets log ratio 0 (ratio 1).
    """
    if level == "token":
        tmask = mask.unsqueeze(-1).expand_as(logp_new)  # [B, G, L]
        return masked_fill0(logp_new - logp_ref.detach(), tmask), tmask
    if level not in ("joint", "sequence"):
        raise LeverError(f"unknown ratio level {level!r}", hint="use 'joint', 'token' or 'sequence'")
    log_ratio = masked_fill0(logp_new - logp_ref.detach(), mask)  # [B, G]
    if level == "sequence":
        log_ratio = log_ratio / picks
    return log_ratio.unsqueeze(-1), mask.unsqueeze(-1)


def clipped_policy_terms(
    log_ratio: Tensor,
    adv: Tensor,
    mask: Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    clip: bool = True,
    clip_c: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Per-term clipped policy-gradient loss: [B, G, T], 0 on padding; and its statistics.

    log_ratio [B, G, T] and mask [B, G, T] from `ratio_terms`; adv [B, G] is each sequence's advantage,
    shared by its terms. With ratio = exp(log_ratio):
      l = -min(ratio * A, clamp(ratio, 1 - eps_low, 1 + eps_high) * A)     (clip False: l = -ratio * A)
      dual clip (clip_c = c > 1, verl clip_ratio_c): where A < 0, l = min(l, -c * A), so a negative term's
      loss is bounded however far the ratio has grown.
    stats: clip_frac = share of real terms whose clipped term was taken (no gradient), clip_frac_pos the
    same among terms with A > 0 (from the counts n_pos, n_pos_clipped), clip_frac_c = share of real terms
    the dual clip bounded, ratio_mean = mean ratio over real terms.
    """
    A = adv.unsqueeze(-1).expand_as(log_ratio)  # [B, G, T]
    ratio = log_ratio.exp()
    surr = ratio * A
    if clip:
        surr_clip = ratio.clamp(1 - eps_low, 1 + eps_high) * A
        obj = torch.minimum(surr, surr_clip)
        clipped = (surr_clip < surr) & mask
    else:
        obj = surr
        clipped = torch.zeros_like(mask)
    dual = torch.zeros_like(mask)
    if clip_c is not None:
        floor = clip_c * A
        dual = (A < 0) & (floor > obj) & mask
        obj = torch.where(A < 0, torch.maximum(obj, floor), obj)
    n = max(int(mask.sum()), 1)
    pos = (A > 0) & mask
    n_pos, n_pos_clipped = float(pos.sum()), float((clipped & pos).sum())
    stats = {
        "clip_frac": float(clipped.sum()) / n,
        "clip_frac_pos": n_pos_clipped / max(n_pos, 1.0),
        "clip_frac_c": float(dual.sum()) / n,
        "n_pos": n_pos,
        "n_pos_clipped": n_pos_clipped,
        "ratio_mean": float(masked_fill0(ratio.detach(), mask).sum()) / n,
    }
    return masked_fill0(-obj, mask), stats


def aggregate(terms: Tensor, mask: Tensor, mode: LossAgg = "seq-mean-token-mean", norm: float | None = None) -> Tensor:
    """A batch's loss from per-term values: [B, G, T] (mask [B, G, T]) -> scalar (verl loss_agg_mode).

    seq-mean-token-mean (lever's default): the mean over each sequence's terms, then over each group's
                         sequences, then over queries: every query weighs the same, whatever its group size
                         (with equal groups this is verl's seq-mean-token-mean and TRL's "grpo")
    token-mean (DAPO):   sum of every real term / their number: every term weighs the same
    seq-mean-token-sum-norm (Dr. GRPO): sum of every real term / norm, a constant (the caller's: sequences
                         per step x terms per sequence), so no group's or sequence's length rescales its terms
    """
    if mode == "seq-mean-token-mean":
        per_seq = masked_fill0(terms, mask).sum(-1) / mask.sum(-1).clamp_min(1)  # [B, G]
        return masked_mean(per_seq, mask.any(-1))
    if mode == "token-mean":
        return masked_fill0(terms, mask).sum() / mask.sum().clamp_min(1)
    if mode == "seq-mean-token-sum-norm":
        if not norm or norm <= 0:
            raise LeverError("loss aggregation seq-mean-token-sum-norm needs a positive constant norm")
        return masked_fill0(terms, mask).sum() / norm
    raise LeverError(
        f"unknown loss aggregation {mode!r}", hint="use 'seq-mean-token-mean', 'token-mean' or 'seq-mean-token-sum-norm'"
    )


def kl_terms(log_ratio: Tensor, estimator: KLEstimator = "k3") -> Tensor:
    """Per-term KL estimate from log ratio = log p_new - log p_ref (any shape), as the original defines
    the ratio (docs/training.md):
      k1 = log ratio
      k2 = (log ratio)^2 / 2          (>= 0; verl kl_loss_type "mse")
      k3 = ratio - 1 - log ratio       (>= 0, 0 only when new = ref)
    Note: Schulman's k3 puts the inverse ratio p_ref / p_new there; the domain's form is
    kept so KL figures match the log's.
    """
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return log_ratio.exp() - 1 - log_ratio
    raise LeverError(f"unknown KL estimator {estimator!r}", hint="use 'k1', 'k2' or 'k3'")


def kl_penalized_rewards(rewards: Tensor, kl: Tensor, mask: Tensor, beta: float) -> Tensor:
    """KL in the reward (verl use_kl_in_reward): r' = r - beta * KL_i, KL_i [B, G] the sequence's KL
    estimate (its terms summed), carrying no gradient; padded entries 0."""
    return masked_fill0(rewards - beta * kl.detach(), mask)


def pick_entropy(logp: Tensor) -> Tensor:
    """Entropy of each pick's distribution: logp [..., K] log-probabilities (blocked candidates -inf)
    -> H [...] = -sum_k p_k log p_k, a blocked candidate contributing 0."""
    p = logp.exp()
    finite = torch.where(p > 0, logp, torch.zeros_like(logp))  # not p * where(..): 0 * -inf would be NaN in the grads
    return -(p * finite).sum(-1)


def adapt_beta(
    beta: float,
    kl: float,
    low: float = 0.01,
    high: float = 0.1,
    factor: float = 1.5,
    beta_min: float = 0.001,
    beta_max: float = 10.0,
) -> float:
    """Adaptive KL weight: beta * factor if kl > high, beta / factor if kl < low,
    else unchanged; then clamped to [beta_min, beta_max]."""
    kl = float(kl)
    if kl > high:
        beta = beta * factor
    elif kl < low:
        beta = beta / factor
    return float(min(max(beta, beta_min), beta_max))


def truncated_is_weights(
    logp_old: Tensor,
    logp_behaviour: Tensor,
    mask: Tensor,
    cap: float = 2.0,
    level: Literal["token", "sequence"] = "token",
) -> tuple[Tensor, dict[str, float]]:
    """Truncated importance weights of off-policy sequences: w [B, G], detached (no gradient).

    logp_old: log pi_old of each pick [B, G, L] (or, at sequence level, of each sequence [B, G]), where
    pi_old is the policy the PPO ratio is taken against (grpo.reference); logp_behaviour: the same under
    the behaviour policy mu that proposed the sequence (the data's behaviour log-probs), NaN where the
    source is deterministic (retrieval).

      sequence: w_i = min(rho_i, C),  rho_i = pi_old(y_i) / mu(y_i) = exp(sum_t (logp_old_it - logp_mu_it))
      token:    w_i = (1 / L) sum_t min(rho_it, C),  rho_it = exp(logp_old_it - logp_mu_it)

    C = `cap`; min(exp(x), C) is computed as exp(min(x, log C)), so no ratio overflows. A sequence without
    a behaviour log-prob (NaN: a deterministic source) gets w = 1: it was not drawn from any distribution,
    so there is no ratio to correct, and it counts as it does without the correction. Padding gets 0.
    lever's GRPO terms are per sequence, so at token level the pick weights enter as their mean: the value
    each pick's term carries under token-mean aggregation of verl's token-level rollout correction.
    The names elsewhere: verl `algorithm.rollout_correction.rollout_is` (token | sequence) with
    `rollout_is_threshold` (C, default 2.0); TRL `vllm_importance_sampling_correction` with
    `vllm_importance_sampling_cap` (C) and its token_/sequence_truncate modes.
    stats: is/weight_mean (over real sequences), is/capped_frac (share of weighted real sequences whose
    sequence ratio, or any pick ratio, reached C), is/deterministic_frac (share of real sequences with w = 1
    for lack of a behaviour log-prob).
    """
    if level not in ("token", "sequence"):
        raise LeverError(f"unknown importance-sampling level {level!r}", hint="use 'token' or 'sequence'")
    if cap <= 0:
        raise LeverError(f"importance-sampling cap {cap} must be > 0")
    log_cap = torch.log(torch.tensor(float(cap), dtype=torch.float64)).item()
    log_rho = (logp_old.detach() - logp_behaviour.detach()).double()  # [B, G, L] or [B, G]
    if level == "sequence":
        if log_rho.dim() == 3:
            log_rho = log_rho.sum(-1)  # [B, G]
        w = log_rho.clamp(max=log_cap).exp()
        capped = log_rho >= log_cap
    else:
        if log_rho.dim() != 3:
            raise LeverError("token-level importance weights need per-pick log-probs [B, G, L]")
        w = log_rho.clamp(max=log_cap).exp().mean(-1)  # [B, G]
        capped = (log_rho >= log_cap).any(-1)
    known = torch.isfinite(w) & mask  # NaN: no behaviour log-prob
    w = torch.where(known, w, torch.ones_like(w))
    w = masked_fill0(w, mask).to(logp_old.dtype)
    n = max(int(mask.sum()), 1)
    stats = {
        "is/weight_mean": float(w.sum()) / n,
        "is/capped_frac": float((capped & known).sum()) / max(int(known.sum()), 1),
        "is/deterministic_frac": float((mask & ~known).sum()) / n,
    }
    return w, stats
