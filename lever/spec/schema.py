"""The plan schema: one validated recipe per plan file.

A plan holds the *recipe* (what to train, how, how to pick and evaluate the result).
*Where* things live (candidate data files, features, images, models, runs) comes from
the workspace (`lever.spec.workspace`), so one plan runs unchanged on the bundled
benchmark and on a real OK-VQA setup.

Every option is named for what it does. Two settings that the original scripts could
set at once and silently contradict (`use_ppo_clip_only=true` with `kl_beta=0.01`) are
here two independent knobs, `grpo.ppo_clip` and `grpo.kl.beta`, each meaning exactly
what it says; combinations that cannot mean anything fail validation with a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

# Upper bounds on counts: far above any meant value, so a slip (an extra digit, 1e10 for 1e3) is a
# validation error naming the key instead of a run that never ends or runs out of memory.
MAX_EPOCHS = 100_000  # epochs of any stage or phase (and epoch numbers: select.epoch, from_epoch)
MAX_STEPS = 1_000_000_000  # optimiser steps (warmup_steps)
MAX_BATCH = 65_536  # queries per optimiser step; questions per generation batch
MAX_GROUP = 1_000_000  # sequences per query group (data.min_group_size, top-k counts)
MAX_POOL = 100_000  # candidates per eval question (eval.pool_size)
MAX_QUESTIONS = 10_000_000  # eval.questions
MAX_SEEDS = 1_000  # runs per plan (seeds)
MAX_SEED = 2**32 - 1  # a seed value: what numpy and torch generators take
MAX_TOKENS = 65_536  # eval.max_new_tokens
MAX_BEAMS = 1_024  # eval.num_beams
MAX_SHOTS = 8  # demonstrations per prompt (eval.shots)

Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


class Strict(BaseModel):
    """Base for every spec section: unknown keys are errors, values are checked on assignment,
    and NaN or infinite numbers are errors (no setting here can mean them)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def omit_defaults(model: BaseModel, out: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """Drop `names` from a section's dump while they hold their defaults: keys added after plans were
    hashed, so every spec hash and stage key made before they existed names the same result still."""
    for name in names:
        if name in out and out[name] == type(model).model_fields[name].default:
            out.pop(name)
    return out


# --------------------------------------------------------------------------- data


class TierRules(Strict):
    """Quality tiers of a query group (the log's curriculum): gap = max reward - min reward."""

    high_gap: float = Field(1.5, ge=0, description="High tier: reward gap at least this")
    high_min_pos: int = Field(3, ge=0, description="High tier: at least this many positive sequences")
    high_min_neg: int = Field(3, ge=0, description="High tier: at least this many negative sequences")
    medium_gap: float = Field(1.0, ge=0, description="Medium tier: reward gap at least this")
    medium_min_pos: int = Field(2, ge=0, description="Medium tier: at least this many positive sequences")
    medium_min_neg: int = Field(2, ge=0, description="Medium tier: at least this many negative sequences")


Tier = Literal["high", "medium", "low"]


class DataFilter(Strict):
    """Which queries and sequences of the candidate data a stage trains on."""

    skip_failed: bool = Field(True, description="Drop candidates with eval_failed or vqa_eval_mode fallback/error")
    require_positive: bool = Field(False, description="Keep only queries with at least one correct sequence")
    tiers: list[Tier] = Field(["high", "medium", "low"], min_length=1, description="Keep only queries in these quality tiers")
    positive_ratio: tuple[float, float] = Field(
        (0.0, 1.0), description="Keep queries whose share of correct sequences lies in [lo, hi]"
    )
    min_group_size: int = Field(1, ge=1, le=MAX_GROUP, description="Drop queries with fewer usable sequences than this")
    top_k: int = Field(0, ge=0, le=MAX_GROUP, description="Keep only the k best sequences of each group by reward (0 = all)")

    @model_validator(mode="after")
    def _band(self) -> DataFilter:
        lo, hi = self.positive_ratio
        if not (0.0 <= lo <= hi <= 1.0):
            raise ValueError(f"positive_ratio must be [lo, hi] with 0 <= lo <= hi <= 1, got [{lo}, {hi}]")
        return self


class DataSpec(DataFilter):
    """Candidate data to train on, and the default filter every stage uses."""

    candidates: str = Field("main", min_length=1, description="Candidate-data name from the workspace, or a path to a JSON file")
    features: str = Field(
        "main", min_length=1, description="Features name from the workspace, or a path to a [N_train, d] tensor file"
    )
    val_fraction: float = Field(
        0.2, gt=0, lt=1, description="Last share of query ids (sorted as integers) held out for validation"
    )
    tier_rules: TierRules = Field(default_factory=TierRules, description="Thresholds that define the quality tiers")
    duplicates: Literal["drop", "keep"] = Field(
        "drop",
        description="drop = the same ordered sequence listed twice in a query's group counts once (the first, a usable "
        "evaluation before a failed one); keep = every listed copy is trained on, as the original's trainer",
    )
    split_rounding: Literal["round", "floor"] = Field(
        "round",
        description="Training queries of the train/val split: round((1 - val_fraction) * Q), or floor as the "
        "original's int(0.8 * Q) (7 queries at 0.2: 6 / 1 against 5 / 2)",
    )
    dataset: str = Field(
        "okvqa",
        pattern=r"^[A-Za-z0-9_-]+$",
        description="The workspace's dataset (docs/datasets.md): okvqa = its [okvqa], [candidates] and [features] "
        "tables; another name = its [datasets.NAME] table, whose candidate data and features the names above look up, "
        "whose train split holds the demonstrations and whose val split is evaluated",
    )

    @model_serializer(mode="wrap")
    def _omit_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """`duplicates`, `split_rounding` and `dataset` appear only when set away from their defaults, so every spec
        hash and stage key made before they existed names the same result still."""
        out = handler(self)
        for name in ("duplicates", "split_rounding", "dataset"):
            if out.get(name) == type(self).model_fields[name].default:
                out.pop(name)
        return out


# --------------------------------------------------------------------------- reward

RewardMode = Literal["hard_plus_soft", "separated", "hard_plus_gtprob_plus_rel", "hard_only", "soft_only"]


class RewardSpec(Strict):
    """Reward of one candidate sequence from its VLM scores (docs/data.md, Rewards)."""

    mode: RewardMode = Field("hard_plus_soft", description="How hard (vqa_correct) and soft scores combine into a reward")
    hard_weight: float = Field(1.0, ge=0, description="h: weight of vqa_correct")
    soft_weight: float = Field(1.0, ge=0, description="s: weight of vqa_acc_score (or vqa_gt_prob in hard_plus_gtprob_plus_rel)")
    rel_weight: float = Field(0.1, ge=0, description="rel: weight of vqa_rel_score on negatives (hard_plus_gtprob_plus_rel only)")
    clip: tuple[float, float] = Field((-5.0, 5.0), description="Final rewards are clipped to [lo, hi]")
    normalize: Literal["none", "zscore"] = Field("none", description="Group normalisation of rewards before use")
    normalize_std_floor: float = Field(0.1, gt=0, description="z-score normalisation divides by max(std, this)")

    @model_validator(mode="after")
    def _clip(self) -> RewardSpec:
        if self.clip[0] >= self.clip[1]:
            raise ValueError(f"clip must be [lo, hi] with lo < hi, got {list(self.clip)}")
        return self


# --------------------------------------------------------------------------- model


class ModelSpec(Strict):
    """The pointer selector (docs/architecture.md)."""

    arch: Literal["lever", "lever-plus-v3"] = Field(
        "lever",
        description="lever = lever's selector (the settings below shape it); lever-plus-v3 = the original's selector, "
        "parameter for parameter (its state-dict names and shapes; no projection biases, xavier init)",
    )
    hidden: int = Field(256, ge=1, le=8192, description="Hidden size after the input projection")
    layers: int = Field(1, ge=1, le=16, description="Cross-attention layers (query attends over the pool)")
    heads: int = Field(1, ge=1, le=64, description="Attention heads per layer")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout before the output projections (the original: 0.5)")
    attn_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the attention weights (the original: 0.1)")
    dropout_mask: Literal["group", "sequence"] = Field(
        "group",
        description="group = one dropout mask per query, shared by all its sequences (one encoding per query); "
        "sequence = a mask per sequence, as the original (it encodes the pool again for every sequence; G times the cost)",
    )
    proj_bias: bool = Field(True, description="arch lever: biases on the query and candidate projections (the original has none)")
    init: Literal["default", "xavier"] = Field(
        "default",
        description="arch lever: default = PyTorch's initialisation of the input projection and gate; "
        "xavier = xavier-uniform for both and a zero gate bias, as the original",
    )
    score_temperature: float = Field(0.1, gt=0, description="Scores are cosine / this")
    # The original's V4 heads (docs/selector.md); any combination, either architecture.
    update: Literal["gate", "gru", "none"] = Field(
        "gate",
        description="How the query state follows a pick: gate = g q + (1 - g) c (the original's V4-1 query_update_gate); "
        "gru = a GRUCell on the picked candidate (V4-2 decoder_gru); none = a static query (the original's V2 before V4-1)",
    )
    step_emb: bool = Field(False, description="Add a learned per-step vector to the query state before scoring (V4-2 step_emb)")
    steps: int = Field(
        2,
        ge=1,
        le=64,
        description="Rows of the per-step tables (step_emb, div_lambda); a later step reuses the last row (the original: "
        "its data's sequence length, 2)",
    )
    scoring: Literal["dot", "additive", "bilinear"] = Field(
        "dot",
        description="Score of a candidate: dot = cosine / T; additive = v . tanh(W_q q + W_c c) / T (V4-5 attn_Wq, attn_Wc, "
        "attn_v); bilinear = q^T W c / T (V4-5 bilinear)",
    )
    diversity: Literal["none", "mmr"] = Field(
        "none",
        description="mmr = subtract softplus(div_lambda[t]) x the candidate's similarity to what was picked (V4-3)",
    )
    mmr_reduction: Literal["max", "mean"] = Field(
        "max", description="diversity mmr: redundancy is the max or the mean similarity"
    )
    div_lambda_init: float = Field(0.1, description="diversity mmr: initial div_lambda (softplus(0.1) = 0.74)")
    stop: bool = Field(
        False,
        description="A learned STOP candidate (V4-10 stop_token): a selection may end before its shot count, which is then a cap",
    )

    @model_validator(mode="after")
    def _heads(self) -> ModelSpec:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        return self

    @model_serializer(mode="wrap")
    def _omit_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The V4 head settings appear only when set away from their defaults, so every spec hash made before they
        existed names the same result still."""
        out = handler(self)
        for name in HEAD_FIELDS:
            if out.get(name) == type(self).model_fields[name].default:
                out.pop(name)
        return out


HEAD_FIELDS = ("update", "step_emb", "steps", "scoring", "diversity", "mmr_reduction", "div_lambda_init", "stop")


# --------------------------------------------------------------------------- stages


class OptimSpec(Strict):
    """Optimiser settings shared by both stages (AdamW)."""

    lr: float = Field(1e-4, gt=0, le=1.0, description="Peak learning rate")
    schedule: Literal["constant", "cosine", "linear"] = Field(
        "constant", description="Learning-rate schedule over the stage's steps"
    )
    warmup_steps: int = Field(0, ge=0, le=MAX_STEPS, description=f"Linear warm-up steps (at most {MAX_STEPS:_})")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    batch_size: int = Field(
        32,
        ge=1,
        le=MAX_BATCH,
        description=f"Queries (groups) per optimiser step, at most {MAX_BATCH:_} (the original: 1, whatever it was told)",
    )
    lr_scaling: Literal["none", "sqrt", "linear"] = Field(
        "none",
        description="How the learning rate follows batch_size: none = lr as given; sqrt / linear = lr is a batch-1 rate "
        "(the log's rates are), multiplied by sqrt(batch_size) / batch_size",
    )
    grad_clip: float = Field(1.0, ge=0, description="Clip the gradient norm to this (0 = no clipping)")
    freeze_backbone: bool = Field(
        False,
        description="Freeze the backbone: arch lever, the input projection and cross-attention (60% of the parameters); "
        "arch lever-plus-v3, the input, query and candidate projections, as the original (40%)",
    )


class RCESpec(OptimSpec):
    """RCE warm-up: reward-weighted cross-entropy, w = softmax(r / tau) over each group."""

    epochs: int = Field(5, ge=0, le=MAX_EPOCHS, description=f"RCE epochs, at most {MAX_EPOCHS:_} (0 = no RCE stage)")
    lr: float = Field(1e-4, gt=0, le=1.0, description="Peak learning rate")
    schedule: Literal["constant", "cosine", "linear"] = Field("cosine", description="Learning-rate schedule over all RCE steps")
    temp_start: float = Field(2.0, gt=0, description="tau at the first RCE step")
    temp_end: float = Field(0.5, gt=0, description="tau at the last RCE step (linear in between)")
    rewards: Literal["raw", "normalized", "original"] = Field(
        "raw",
        description="Weight by the raw (clipped, never normalised, whatever reward.normalize says) rewards; normalized = "
        "their group z-score (floor reward.normalize_std_floor); original = the original's default, their group z-score "
        "without a floor, clamped to +-3",
    )
    target: Literal["weighted", "top1"] = Field(
        "weighted", description="weighted = RCE over the group; top1 = plain CE on the best sequence"
    )


class SFTSpec(OptimSpec):
    """Supervised warm start before RCE: plain cross-entropy on each group's best sequence (the original's SFT)."""

    epochs: int = Field(
        0, ge=0, le=MAX_EPOCHS, description=f"SFT epochs, run before RCE, at most {MAX_EPOCHS:_} (0 = no SFT stage)"
    )
    schedule: Literal["constant", "cosine", "linear"] = Field("cosine", description="Learning-rate schedule over all SFT steps")


class AdaptiveKL(Strict):
    """Adaptive KL coefficient: beta x factor when KL > high, / factor when KL < low."""

    enabled: bool = Field(False, description="Adapt beta (after every epoch or step, see cadence)")
    cadence: Literal["epoch", "step"] = Field(
        "epoch",
        description="epoch = adapt once per epoch on the epoch's mean KL; step = after every step on its KL (the original)",
    )
    low: float = Field(0.01, ge=0, description="Shrink beta when the epoch's KL is below this")
    high: float = Field(0.1, gt=0, description="Grow beta when the epoch's KL is above this")
    factor: float = Field(1.5, gt=1, description="Multiplicative step")
    beta_min: float = Field(0.001, gt=0, description="Lower bound of beta")
    beta_max: float = Field(10.0, gt=0, description="Upper bound of beta")

    @model_validator(mode="after")
    def _band(self) -> AdaptiveKL:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.beta_min > self.beta_max:
            raise ValueError(f"beta_min ({self.beta_min}) must not exceed beta_max ({self.beta_max})")
        return self


class KLSpec(Strict):
    """KL penalty to the frozen reference policy."""

    beta: float = Field(
        0.0, ge=0, description="Coefficient of the KL term (0 = no penalty; KL is still logged); TRL beta, verl kl_loss_coef"
    )
    estimator: Literal["k1", "k2", "k3"] = Field(
        "k3",
        description="k3 = ratio - 1 - log ratio; k2 = (log ratio)^2 / 2; k1 = log ratio (verl kl_loss_type "
        "low_var_kl / mse / kl, OpenRLHF --algo.kl.estimator); per term of grpo.ratio_level",
    )
    adaptive: AdaptiveKL = Field(default_factory=AdaptiveKL, description="Adaptive beta")
    max_kl: float = Field(50.0, gt=0, description="Guardrail: stop the run when an epoch's mean KL exceeds this")
    in_reward: bool = Field(
        False,
        description="false = beta * KL is a term of the loss (verl use_kl_loss); true = it is taken from each sequence's "
        "reward before the advantages, without gradient (verl use_kl_in_reward; OpenRLHF without --algo.kl.use_loss)",
    )

    @model_serializer(mode="wrap")
    def _omit_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return omit_defaults(self, handler(self), ("in_reward",))


class AdvantageSpec(Strict):
    """Per-group advantages from rewards."""

    kind: Literal["rank", "zscore", "centered"] = Field(
        "zscore", description="rank: 1 - 2 rank/(n-1); zscore: (r - mean)/max(std, floor); centered: r - mean"
    )
    rank_ties: Literal["average", "first"] = Field(
        "average", description="rank only: tied rewards share their mean rank, or ties break by order"
    )
    std_floor: float = Field(0.1, gt=0, description="zscore only: divide by max(std, this)")
    clip: float = Field(5.0, gt=0, description="Clip advantages to [-clip, clip]")
    normalization: Literal["lever", "original"] = Field(
        "lever",
        description="lever = advantages from the rewards of the kept top-k sequences (the floor in reward units); "
        "original = two stages: z-score each whole group's raw rewards, clamp to +-group_clip, keep the top-k of those, "
        "then `kind` over the kept values (the floor in z units)",
    )
    group_clip: float = Field(3.0, gt=0, description="normalization = original: clamp of the first, whole-group z-score")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group",
        description="kind zscore: divide by the group's std (group), the std of every reward of the step's batch "
        "(batch), or not at all (none, Dr. GRPO); TRL scale_rewards, verl norm_adv_by_std_in_grpo (none = false)",
    )

    @model_serializer(mode="wrap")
    def _omit_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return omit_defaults(self, handler(self), ("scale_rewards",))

    @model_validator(mode="after")
    def _scale(self) -> AdvantageSpec:
        if self.scale_rewards != "group" and self.kind != "zscore":
            raise ValueError(f"scale_rewards = '{self.scale_rewards}' applies to kind = 'zscore' only (kind is '{self.kind}')")
        return self


class CurriculumStep(Strict):
    """From epoch `from_epoch` on (1-based), GRPO uses the `top_k` best sequences of each group (0 = all)."""

    from_epoch: int = Field(ge=1, le=MAX_EPOCHS, description="First epoch this applies to")
    top_k: int = Field(ge=0, le=MAX_GROUP, description="Sequences per group, best by reward (0 = all)")


class GRPOSpec(OptimSpec):
    """GRPO over offline groups: PPO-style ratio to the policy GRPO starts from, plus an optional KL penalty."""

    epochs: int = Field(
        0,
        ge=0,
        le=MAX_EPOCHS,
        description=f"GRPO epochs, at most {MAX_EPOCHS:_} (0 = no GRPO stage; with phases, each phase sets its own)",
    )
    lr: float = Field(5e-6, gt=0, le=1.0, description="Peak learning rate")
    advantage: AdvantageSpec = Field(default_factory=AdvantageSpec, description="How advantages are computed")
    ppo_clip: bool = Field(True, description="Clip the ratio to [1 - eps_low, 1 + eps_high] in the policy loss")
    eps_low: float = Field(0.2, gt=0, lt=1, description="Lower clip epsilon")
    eps_high: float = Field(0.2, gt=0, lt=1, description="Upper clip epsilon")
    reference: Literal["rce", "stage_start", "pre_rce", "sync"] = Field(
        "stage_start",
        description="Policy of the ratio and the KL: rce = the checkpoint this GRPO stage starts from, frozen (also spelled "
        "stage_start, its name in resolved specs); pre_rce = the model before RCE, frozen (the original's choice); "
        "sync = starts as rce, then every ref_sync_steps steps ref <- (1 - ref_sync_alpha) ref + ref_sync_alpha policy "
        "(TRL sync_ref_model)",
    )
    ref_sync_steps: int = Field(
        512, ge=1, le=MAX_STEPS, description="reference = sync: optimiser steps between syncs (TRL ref_model_sync_steps)"
    )
    ref_sync_alpha: float = Field(
        0.6, gt=0, le=1, description="reference = sync: weight of the policy in the mix (TRL ref_model_mixup_alpha)"
    )
    ratio_level: Literal["joint", "token", "sequence"] = Field(
        "joint",
        description="What one PPO ratio covers: joint = the whole sequence, p_new(seq) / p_ref(seq), the product of its "
        "picks' ratios (lever's unit); token = each pick (TRL importance_sampling_level token, verl loss_mode vanilla); "
        "sequence = GSPO, the geometric mean of the picks' ratios (TRL importance_sampling_level sequence, verl "
        "loss_mode gspo, OpenRLHF --actor.policy_loss_type gspo)",
    )
    loss_agg: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"] = Field(
        "seq-mean-token-mean",
        description="How terms make the batch's loss (verl loss_agg_mode): seq-mean-token-mean = mean over a sequence's "
        "terms, then its group, then queries (TRL loss_type grpo); token-mean = mean over every term (DAPO, TRL dapo); "
        "seq-mean-token-sum-norm = sum of every term / (batch_size x largest group x terms per sequence) (Dr. GRPO, TRL "
        "dr_grpo)",
    )
    clip_c: float | None = Field(
        None,
        gt=1,
        description="Dual clip: a negative-advantage term's loss is at most -clip_c * A (verl clip_ratio_c, OpenRLHF "
        "--actor.dual_clip); unset = off",
    )
    entropy_coef: float = Field(
        0.0,
        ge=0,
        description="Entropy bonus: loss -= entropy_coef x the entropy of the policy's distribution at each pick, "
        "aggregated as loss_agg (TRL entropy_coef, verl entropy_coeff, OpenRLHF --actor.entropy_coef)",
    )
    filter_groups: bool = Field(
        False,
        description="Leave groups whose trained sequences all have the same reward out of the loss (DAPO dynamic "
        "sampling, offline: verl algorithm.filter_groups, OpenRLHF --algo.dynamic_filtering_enable); share logged "
        "as adv/skipped_frac",
    )
    kl: KLSpec = Field(default_factory=KLSpec, description="KL penalty to the frozen reference")
    top_k_schedule: list[CurriculumStep] = Field(
        default_factory=list,
        description="Beam curriculum: top-k sequences per group by epoch (empty = all sequences every epoch)",
    )
    top_k_ties: Literal["index", "topk"] = Field(
        "index",
        description="Which of equally rewarded sequences make the top-k: index = the lower index first; "
        "topk = the order torch.topk returns (the original's)",
    )
    policy_mode: Literal["eval", "train"] = Field(
        "eval",
        description="eval = GRPO runs without dropout, so the ratio is exactly 1 before the first update; "
        "train = dropout active against an eval-mode reference (the original)",
    )
    handoff: Literal["selected", "last"] = Field(
        "selected",
        description="This stage starts from the previous stage's selected epoch, or from its last epoch (the original)",
    )
    # Off-policy correction (docs/training.md): the candidates come from other policies (beam, samples, random).
    off_policy: Literal["none", "truncated_is"] = Field(
        "none",
        description="none = every sequence's term counts as on-policy; truncated_is = weight each sequence's policy "
        "term by min(pi_old / pi_behaviour, is_cap), detached, from the data's behaviour log-probs (lever data "
        "generate writes them; verl rollout_correction.rollout_is, TRL vllm_importance_sampling_correction)",
    )
    is_cap: float = Field(
        2.0,
        gt=0,
        description="Cap C of the truncated importance weight min(rho, C) (verl rollout_is_threshold, TRL "
        "vllm_importance_sampling_cap; both default 2.0)",
    )
    is_level: Literal["token", "sequence"] = Field(
        "token",
        description="token = the mean over picks of min(rho_t, C); sequence = min(prod_t rho_t, C) (verl rollout_is "
        "= token | sequence, TRL token_truncate | sequence_truncate)",
    )

    @field_validator("reference")
    @classmethod
    def _reference_name(cls, value: str) -> str:
        # "rce" is written "stage_start", the name every spec hash and stage key was made with
        return "stage_start" if value == "rce" else value

    @model_serializer(mode="wrap")
    def _omit_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return omit_defaults(self, handler(self), GRPO_ADDED)

    @model_validator(mode="after")
    def _schedule(self) -> GRPOSpec:
        sync = {"ref_sync_steps", "ref_sync_alpha"} & self.model_fields_set
        if sync and self.reference != "sync":
            name = "rce" if self.reference == "stage_start" else self.reference
            raise ValueError(f"{', '.join(sorted(sync))} only apply with reference = 'sync' (reference is '{name}')")
        weights = {"is_cap", "is_level"} & self.model_fields_set
        if weights and self.off_policy == "none":
            raise ValueError(f"{', '.join(sorted(weights))} only apply with off_policy = 'truncated_is' (off_policy is 'none')")
        if self.kl.in_reward and self.kl.beta == 0:
            raise ValueError("kl.in_reward needs kl.beta > 0: a KL taken from the reward at beta 0 changes nothing")
        starts = [s.from_epoch for s in self.top_k_schedule]
        if starts != sorted(set(starts)):
            raise ValueError(f"top_k_schedule from_epoch values must be strictly increasing, got {starts}")
        if self.kl.adaptive.enabled and self.kl.beta == 0:
            raise ValueError("kl.adaptive.enabled needs kl.beta > 0: an adaptive beta that starts at 0 never moves")
        return self


# GRPO keys added after plans were hashed: omitted from dumps at their defaults (see omit_defaults).
GRPO_ADDED = (
    "ref_sync_steps",
    "ref_sync_alpha",
    "ratio_level",
    "loss_agg",
    "clip_c",
    "entropy_coef",
    "filter_groups",
    "off_policy",
    "is_cap",
    "is_level",
)


class DataOverride(Strict):
    """A phase's changes to the plan's data filter (unset keys keep the plan's values)."""

    skip_failed: bool | None = Field(None, description="See data.skip_failed")
    require_positive: bool | None = Field(None, description="See data.require_positive")
    tiers: list[Tier] | None = Field(None, min_length=1, description="See data.tiers")
    positive_ratio: tuple[float, float] | None = Field(None, description="See data.positive_ratio")
    min_group_size: int | None = Field(None, ge=1, le=MAX_GROUP, description="See data.min_group_size")
    top_k: int | None = Field(None, ge=0, le=MAX_GROUP, description="See data.top_k")


class Phase(Strict):
    """One curriculum phase: GRPO with the plan's settings on a filtered subset, from the previous stage's checkpoint."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$", description="Short name, used in metrics and checkpoint files")
    epochs: int = Field(ge=1, le=MAX_EPOCHS, description=f"GRPO epochs in this phase (at most {MAX_EPOCHS:_})")
    data: DataOverride = Field(default_factory=DataOverride, description="Filter changes for this phase")
    lr: float | None = Field(None, gt=0, le=1.0, description="Learning rate for this phase (default: grpo.lr)")
    handoff: Literal["selected", "last"] | None = Field(
        None,
        description="This phase starts from the previous stage's selected epoch or its last (default: grpo.handoff)",
    )


# --------------------------------------------------------------------------- start, select, eval


class StartSpec(Strict):
    """Where training starts."""

    kind: Literal["scratch", "plan", "checkpoint"] = Field(
        "scratch", description="scratch, another plan's selected checkpoint, or a checkpoint file"
    )
    plan: str | None = Field(None, description="kind = plan: the plan name (e.g. 'baseline')")
    stage: str | None = Field(
        None,
        description="kind = plan: take that plan's selected checkpoint of this stage ('rce', 'grpo', a phase name); default: its final selection",
    )
    checkpoint: str | None = Field(
        None,
        description="kind = checkpoint: a lever .safetensors file, or the original's v2 / v3 selector checkpoint "
        "(.ckpt / .pth, format detected; needs model.arch = 'lever-plus-v3')",
    )
    trust_pickle: bool = Field(
        False,
        description="kind = checkpoint: load an original checkpoint that holds pickled objects besides tensors "
        "(this runs code from the file: only for files you trust)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> StartSpec:
        if self.kind == "plan" and not self.plan:
            raise ValueError("kind = 'plan' needs plan = '<name>'")
        if self.kind == "checkpoint" and not self.checkpoint:
            raise ValueError("kind = 'checkpoint' needs checkpoint = '<file.safetensors or the original's .ckpt>'")
        if self.kind != "plan" and (self.plan or self.stage):
            raise ValueError(f"plan/stage are only valid with kind = 'plan' (kind is '{self.kind}')")
        if self.kind != "checkpoint" and self.trust_pickle:
            raise ValueError("trust_pickle is only valid with kind = 'checkpoint'")
        if self.kind != "checkpoint" and self.checkpoint:
            raise ValueError(f"checkpoint is only valid with kind = 'checkpoint' (kind is '{self.kind}')")
        return self


# Validation metrics scored by the VLM (lever.eval.rollout.RewardValidator), logged when select asks for them.
REWARD_METRICS = ("val/reward", "val/accuracy")


class SelectSpec(Strict):
    """Which epoch's checkpoint is a stage's result."""

    metric: str = Field("val/loss", description="A metric name from metrics.jsonl (val/reward: see `reward`)")
    mode: Literal["min", "max"] = Field("min", description="Lowest or highest value wins (ties: earliest epoch)")
    epoch: int | None = Field(
        None, ge=1, le=MAX_EPOCHS, description="Pin the final stage's selection to this epoch (a hand pick, recorded as such)"
    )
    reward: bool = Field(
        False,
        description="Log val/reward and val/accuracy every epoch: the policy's greedy selection on the validation queries "
        "scored by the workspace's VLM (through the reward cache); on whenever metric names one of them",
    )

    @model_validator(mode="after")
    def _reward_is_maximised(self) -> SelectSpec:
        if self.metric in REWARD_METRICS and self.mode != "max":
            raise ValueError(f"metric = '{self.metric}' is selected by its highest value: set mode = 'max'")
        return self

    @property
    def logs_reward(self) -> bool:
        """Whether every epoch logs the VLM-scored validation metrics (REWARD_METRICS)."""
        return self.reward or self.metric in REWARD_METRICS


SELECTORS = ("learned", "zero-shot", "random", "similar")  # selector.kind; all but `learned` train nothing


class SelectorSpec(Strict):
    """Who picks each question's demonstrations at evaluation (docs/evaluation.md, Selectors).

    `learned` is the plan's trained pointer network; the others need no training, so a plan that
    names one has no stage: `zero-shot` (no demonstrations), `random` (k of the question's pool, seeded
    per question) and `similar` (the k of the pool most similar to the question: RICES)."""

    kind: Literal["learned", "zero-shot", "random", "similar"] = Field(
        "learned",
        description="learned = the trained selector; zero-shot, random, similar = baselines that train nothing",
    )
    features: Literal["both", "image", "question"] = Field(
        "both",
        description="kind = similar: cosine over the image and question embedding together (the item features), the "
        "image embedding, or the question text embedding; eval.pool = 'similar' then builds the pool by the same features",
    )
    order: Literal["most-similar-last", "most-similar-first"] = Field(
        "most-similar-last",
        description="kind = similar: the most similar demonstration next to the question (last, as OpenFlamingo's "
        "RICES), or first",
    )

    @model_validator(mode="after")
    def _consistent(self) -> SelectorSpec:
        defaults = type(self).model_fields
        extra = [k for k in ("features", "order") if getattr(self, k) != defaults[k].default]
        if self.kind != "similar" and extra:
            verb = "applies" if len(extra) == 1 else "apply"
            raise ValueError(f"{' and '.join(extra)} {verb} to kind = 'similar' only (kind is '{self.kind}')")
        return self

    @property
    def trains(self) -> bool:
        """Whether the plan trains a selector (only `learned` does)."""
        return self.kind == "learned"


class EvalSpec(Strict):
    """ICL evaluation of the selected checkpoint (docs/evaluation.md)."""

    shots: list[int] = Field(
        [1, 2, 3, 4],
        min_length=1,
        description=f"Numbers of demonstrations to evaluate, each 0..{MAX_SHOTS} (0 = zero-shot; beyond the trained "
        "length = extrapolation)",
    )
    questions: int | Literal["all"] = Field(
        800,
        description=f"First N eval questions by question_id (at most {MAX_QUESTIONS:_}), or 'all' for the whole split",
    )
    splits: list[Literal["val", "train", "test"]] = Field(
        ["val"], min_length=1, description="Eval splits (test: the held-out questions; choose on val, confirm once on test)"
    )
    backend: Literal["auto", "sim", "hf"] = Field(
        "auto", description="auto = the workspace's backend (sim on the bundled benchmark)"
    )
    pool: Literal["random", "similar", "fixed"] = Field(
        "similar",
        description="Candidate pool: per question, a seeded random draw or the nearest by feature similarity; "
        "fixed = the original's, one seeded random draw shared by every question",
    )
    pool_size: int = Field(64, ge=1, le=MAX_POOL, description=f"K: candidates per question (at most {MAX_POOL:_})")
    batch_size: int = Field(8, ge=1, le=MAX_BATCH, description=f"VLM generation batch size (at most {MAX_BATCH:_})")
    max_new_tokens: int = Field(5, ge=1, le=MAX_TOKENS, description=f"Generation length (at most {MAX_TOKENS:_})")
    num_beams: int = Field(3, ge=1, le=MAX_BEAMS, description=f"Beam search width (at most {MAX_BEAMS:_})")
    max_failed: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Failure budget: an evaluation (or a preflight count of missing images) with a larger share of "
        "failed questions stops with an error naming the first missing files, instead of scoring them 0",
    )
    protocol: str = Field(
        "lever-plus",
        min_length=1,
        description="Prompt protocol: a shipped name (lever-plus = the original's system prompt, layout, image sizing "
        "and metric; lever = no system prompt, classic metric) or the path of a protocol TOML file",
    )
    metric: Literal["auto", "classic", "vqa-latest", "lever-plus"] = Field(
        "auto", description="VQA accuracy variant; auto = the protocol's (see docs/evaluation.md)"
    )
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="VLM weights and activations; auto = bf16 on CUDA, fp32 on CPU (use fp16 on GPUs without bf16)"
    )
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "eager"] = Field(
        "auto", description="VLM attention kernel; auto = transformers' default (sdpa where available)"
    )
    min_pixels: int | None = Field(
        None, ge=1, description="Override the protocol's lower bound of image height * width (qwen-vl-utils sizing)"
    )
    max_pixels: int | None = Field(
        None, ge=1, description="Override the protocol's upper bound of image height * width (fewer visual tokens)"
    )

    @model_validator(mode="after")
    def _shots(self) -> EvalSpec:
        bad = [s for s in self.shots if not 0 <= s <= MAX_SHOTS]
        if bad:
            raise ValueError(f"shots must each be in 0..{MAX_SHOTS}, got {bad}")
        if isinstance(self.questions, int) and not 1 <= self.questions <= MAX_QUESTIONS:
            raise ValueError(f"questions must be 1..{MAX_QUESTIONS:_} or 'all', got {self.questions}")
        if len(set(self.shots)) != len(self.shots):
            raise ValueError(f"shots must not repeat, got {self.shots}")
        if max(self.shots) > self.pool_size:
            raise ValueError(f"shots up to {max(self.shots)} need pool_size >= {max(self.shots)}, got {self.pool_size}")
        return self


# --------------------------------------------------------------------------- plan


class RefreshSpec(Strict):
    """Refresh rounds: after the plan's last stage, new groups for the training queries from the current selector,
    scored by the workspace's VLM (docs/training.md, On-policy). `lever data generate --policy` in the run."""

    rounds: int = Field(0, ge=0, le=100, description="Refresh rounds (0 = none); round r trains a GRPO stage 'grpo_r<r>'")
    epochs: int = Field(5, ge=1, le=MAX_EPOCHS, description="GRPO epochs on each round's groups")
    beams: int = Field(0, ge=0, le=MAX_GROUP, description="The selector's beam-search sequences per query")
    temperatures: list[Annotated[float, Field(gt=0)]] = Field(
        [1.0], max_length=8, description="Sampling temperatures (each gives `samples` sequences per query)"
    )
    samples: int = Field(16, ge=0, le=MAX_GROUP, description="Sequences sampled from the selector per temperature and query")
    random: int = Field(0, ge=0, le=MAX_GROUP, description="Uniform random sequences per query")
    retrieval: int = Field(0, ge=0, le=MAX_GROUP, description="Similarity-retrieval blocks per query")
    dedupe: Literal["set", "ordered"] = Field(
        "set", description="As `lever data generate --dedupe`: one sequence per set of items (the original's), or per order"
    )

    @model_validator(mode="after")
    def _proposes(self) -> RefreshSpec:
        if self.rounds and self.beams + self.samples * len(self.temperatures) + self.random + self.retrieval == 0:
            raise ValueError("refresh.rounds > 0 but no source proposes a sequence: set samples (or beams, random, retrieval)")
        return self


class RolloutSpec(Strict):
    """Where GRPO's groups come from (docs/training.md, On-policy): the data's fixed groups (offline), or fresh groups
    the policy samples every step and the workspace's VLM scores (online; the names are TRL GRPOTrainer's)."""

    mode: Literal["offline", "online"] = Field(
        "offline", description="offline: the candidate data's groups; online: each step samples a group per query from the policy"
    )
    num_generations: int = Field(
        8, ge=2, le=MAX_GROUP, description="online: sequences sampled per query and step (TRL num_generations)"
    )
    temperature: float = Field(1.0, gt=0, description="online: sampling temperature of the policy (TRL temperature)")
    num_iterations: int = Field(
        1,
        ge=1,
        le=64,
        description="online: optimiser steps on each batch of samples, the ratio taken to the sampling policy (TRL num_iterations, PPO's inner epochs)",
    )


@dataclass(frozen=True)
class Stage:
    """One compiled stage of a plan: what to run and with which optimiser settings (`Plan.stages()`)."""

    name: str  # "sft", "rce", "grpo" or a phase name
    kind: Literal["sft", "rce", "grpo"]
    epochs: int
    opt: SFTSpec | RCESpec | GRPOSpec  # its optimiser settings, learning rate included (a phase's own lr is in it)
    std_floor: float = 0.1  # rce.rewards = "normalized": z-score floor (reward.normalize_std_floor)
    data: DataOverride | None = None  # a curriculum phase's filter changes (None = the plan's filter)
    refresh: int = 0  # a refresh round's number: its groups come from the selector (0 = the plan's data)


class Plan(Strict):
    """A training-and-evaluation recipe."""

    description: str = Field("", description="One line: what this plan changes, and against which plan")
    extends: str | None = Field(None, description="A plan file this one modifies (resolved relative to this file)")
    seeds: list[Seed] = Field(
        [0],
        min_length=1,
        max_length=MAX_SEEDS,
        description=f"One run per seed: at most {MAX_SEEDS:_} seeds, each in 0..2**32 - 1",
    )
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu, cuda or cuda:N")
    start: StartSpec = Field(default_factory=StartSpec, description="Where training starts")
    data: DataSpec = Field(default_factory=DataSpec, description="Candidate data and its filter")
    reward: RewardSpec = Field(default_factory=RewardSpec, description="Reward of a candidate sequence")
    model: ModelSpec = Field(default_factory=ModelSpec, description="The pointer selector")
    sft: SFTSpec = Field(default_factory=SFTSpec, description="Supervised stage before RCE (off by default)")
    rce: RCESpec = Field(default_factory=RCESpec, description="RCE stage")
    grpo: GRPOSpec = Field(default_factory=GRPOSpec, description="GRPO stage")
    phases: list[Phase] = Field(
        default_factory=list, description="Curriculum: GRPO phases in order, each from the previous one's selection"
    )
    refresh: RefreshSpec = Field(
        default_factory=RefreshSpec, description="Refresh rounds: GRPO on new groups the current selector proposes"
    )
    rollout: RolloutSpec = Field(
        default_factory=RolloutSpec,
        description="GRPO's groups: the data's (offline) or sampled from the policy every step (online)",
    )
    select: SelectSpec = Field(default_factory=SelectSpec, description="Checkpoint selection rule")
    selector: SelectorSpec = Field(
        default_factory=SelectorSpec,
        description="Who picks the demonstrations: the trained selector, or a baseline that trains nothing",
    )
    eval: EvalSpec = Field(default_factory=EvalSpec, description="Evaluation")

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: list[int]) -> list[int]:
        repeated = sorted({s for s in v if v.count(s) > 1})
        if repeated:
            raise ValueError(f"seed {repeated[0]} is listed twice: a repeated seed is the same run; list each seed once")
        return v

    @model_validator(mode="after")
    def _stages(self) -> Plan:
        if self.phases and self.grpo.epochs:
            raise ValueError(
                f"grpo.epochs = {self.grpo.epochs} conflicts with phases: each phase sets its own epochs; set grpo.epochs = 0"
            )
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phase names must be unique, got {names}")
        if {"sft", "rce", "grpo"} & set(names):
            raise ValueError("phase names 'sft', 'rce' and 'grpo' are reserved for the stages")
        if self.selector.kind == "zero-shot" and self.eval.shots != [0]:
            raise ValueError(f"selector.kind = 'zero-shot' shows no demonstrations: set eval.shots = [0] (got {self.eval.shots})")
        if not self.selector.trains:  # a baseline selector: its training settings are not used
            return self
        if self.sft.epochs == 0 and self.rce.epochs == 0 and self.grpo.epochs == 0 and not self.phases:
            raise ValueError("nothing to train: sft.epochs, rce.epochs, grpo.epochs are 0 and there are no phases")
        if self.rollout.mode == "online" and self.refresh.rounds:
            raise ValueError(
                "rollout.mode = 'online' samples every step; refresh rounds are for offline GRPO: set refresh.rounds = 0"
            )
        if self.rollout.mode == "online" and not any(s.kind == "grpo" for s in self.stages()):
            raise ValueError("rollout.mode = 'online' needs a GRPO stage: set grpo.epochs (or phases)")
        final = self.stage_names()[-1]
        epochs = self.stages()[-1].epochs
        if self.select.epoch is not None and self.select.epoch > epochs:
            raise ValueError(
                f"select.epoch = {self.select.epoch} pins an epoch the final stage '{final}' does not have "
                f"(it trains {epochs} epochs); choose 1..{epochs} or unset it"
            )
        return self

    def stages(self) -> list[Stage]:
        """The stages in execution order: sft, rce, then grpo or the curriculum phases (the one place this order lives);
        none for a selector that trains nothing (`selector.kind` other than 'learned')."""
        if not self.selector.trains:
            return []
        floor = self.reward.normalize_std_floor
        out = [Stage("sft", "sft", self.sft.epochs, self.sft, floor)] if self.sft.epochs else []
        if self.rce.epochs:
            out.append(Stage("rce", "rce", self.rce.epochs, self.rce, floor))
        for ph in self.phases:
            own = {k: v for k, v in (("lr", ph.lr), ("handoff", ph.handoff)) if v is not None}
            out.append(Stage(ph.name, "grpo", ph.epochs, self.grpo.model_copy(update=own) if own else self.grpo, floor, ph.data))
        if self.grpo.epochs and not self.phases:
            out.append(Stage("grpo", "grpo", self.grpo.epochs, self.grpo, floor))
        for r in range(1, self.refresh.rounds + 1):  # each from the stage before's hand-off weights
            out.append(Stage(f"grpo_r{r}", "grpo", self.refresh.epochs, self.grpo, floor, refresh=r))
        return out

    def grpo_stages(self) -> list[Stage]:
        """The GRPO stages in order: `grpo`, or the curriculum phases (none for a plan without GRPO)."""
        return [s for s in self.stages() if s.kind == "grpo"]

    def stage_names(self) -> list[str]:
        """Stage names in execution order: 'sft', 'rce', 'grpo', or the phase names."""
        return [s.name for s in self.stages()]
