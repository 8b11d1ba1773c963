"""Settings of the bundled benchmark: sizes, candidate-data sources and the knobs of the simulated world.

Every knob has a default; `docs/benchmark.md` explains what each one does.
Invalid settings raise `LeverError` naming the key, the value and the valid range.
"""

from __future__ import annotations

from math import comb
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from lever.errors import LeverError
from lever.keys import content_key
from lever.spec.load import format_validation_error

BENCH_DOCS = "see docs/benchmark.md for the benchmark settings and their ranges"

# Bump when the generator changes what it writes for the same settings: old cache entries stop matching.
GENERATOR_VERSION = 3  # 2: behaviour log-probs per sequence; 3: item_features (docs/benchmark.md)


class BenchConfig(BaseModel, extra="forbid", allow_inf_nan=False):
    """Settings of the bundled benchmark (the simulated VQA world, its VLM and its candidate data)."""

    # -- sizes --------------------------------------------------------------------------------
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Seed of every random draw; the same seed gives byte-identical files.")
    n_train: int = Field(6000, description="Train items (demonstration candidates); rows of the features tensor.")
    n_queries: int = Field(800, description="Training queries with candidate data (a subset of the train items).")
    n_val: int = Field(800, description="Val eval questions.")
    dim: int = Field(512, description="Feature dimension (CLIP ViT-B/32 gives 512).")
    item_features: Literal["both", "image"] = Field(
        "both",
        description="What an item's features (the selector's input) hold: both = the normalised sum of the image "
        "stand-in and the question-text embedding, as CLIP's item features on the real path; image = the image "
        "stand-in only (generator 2's features: with it, candidate data and accuracies are generator 2's).",
    )

    # -- candidate data -----------------------------------------------------------------------
    pool_size: int = Field(64, description="Candidate pool size K per training query.")
    pool_near: int = Field(
        32, description="Pool items taken as nearest neighbours by feature cosine; the rest are random train items."
    )
    shots: int = Field(2, description="Sequence length (demonstrations per candidate sequence).")
    group_min: int = Field(10, description="Fewest candidate sequences per query (random ones are added below it).")
    group_max: int = Field(40, description="Most candidate sequences per query (later sources are cut above it).")
    policy_scale: float = Field(
        0.1, description="The sampling policy is softmax(cosine / policy_scale), like the pointer network."
    )
    beam_width: int = Field(5, description="Sequences from beam search over the similarity policy.")
    retrieval: int = Field(
        2, description="Sequences of consecutive blocks of the similarity ranking (ranks 0..s-1, s..2s-1, ...)."
    )
    temperatures: list[float] = Field([1.0, 1.3], description="Sampling temperatures of the similarity policy.")
    samples_min: int = Field(2, description="Fewest samples per temperature and query (drawn uniformly in [min, max]).")
    samples_max: int = Field(16, description="Most samples per temperature and query.")
    random_min: int = Field(1, description="Fewest uniformly random sequences per query.")
    random_max: int = Field(10, description="Most uniformly random sequences per query.")
    edge_case_share: float = Field(
        0.01, description="Share of candidates marked eval_failed (vqa_eval_mode 'error' or 'fallback')."
    )

    # -- latent world -------------------------------------------------------------------------
    n_topics: int = Field(40, description="Latent topics (scene clusters).")
    latent_dim: int = Field(32, description="Dimension of the latent item vector h.")
    topic_spread: float = Field(0.6, description="Within-topic noise of h (larger = looser clusters).")
    type_topic_coupling: float = Field(0.6, description="Probability that an item's answer type is its topic's dominant type.")
    feat_common: float = Field(0.6, description="Weight of the direction shared by all features (CLIP features share one too).")
    feat_noise: float = Field(0.6, description="Weight of the per-item feature noise (hides part of h from the features).")
    type_visibility: float = Field(0.3, description="Weight of the answer-type direction in the features.")
    quality_visibility: float = Field(
        0.02, description="Weight of the demonstration-quality direction in the features (weak on purpose)."
    )
    harmful_share: float = Field(0.08, description="Share of train items that are harmful demonstrations.")
    harmful_quality: float = Field(-4.0, description="Quality of a harmful demonstration (others are N(0, 1)).")

    # -- simulated VLM ------------------------------------------------------------------------
    noise_scale: float = Field(
        0.6, description="Scale of the prompt-sensitivity noise: correct iff u < sigmoid(logit / noise_scale)."
    )
    base_logit: float = Field(-0.4, description="Logit of p(correct) for an average question before demonstrations.")
    difficulty_sd: float = Field(1.1, description="Standard deviation of question difficulty (logit units).")
    unknown_share: float = Field(
        0.18, description="Share of questions the VLM lacks the knowledge for (difficulty raised by unknown_penalty)."
    )
    unknown_penalty: float = Field(6.0, description="Extra difficulty of an unknown question (logit units).")
    sensitivity_sd: float = Field(0.5, description="Log-normal spread of how much a question reacts to its demonstrations.")
    relevance_weight: float = Field(0.8, description="Weight of latent relevance cos(h_q, h_j) in a demonstration's value.")
    type_bonus: float = Field(0.3, description="Relevance bonus when a demonstration has the question's answer type.")
    answer_bonus: float = Field(
        0.6, description="Relevance bonus when a demonstration's answer is the question's majority answer."
    )
    quality_weight: float = Field(0.3, description="Weight of demonstration quality in its value.")
    redundancy_weight: float = Field(0.4, description="Penalty per pair of near-duplicate demonstrations.")
    redundancy_threshold: float = Field(0.6, description="Latent cosine above which two demonstrations start to be redundant.")
    position_decay: float = Field(0.7, description="Weight of the demonstration t places before the query is decay**t.")
    shot_bias: list[float] = Field(
        [0.0, 0.0, -0.1, -0.2],
        description="Logit added per shot count 1, 2, ... (context cost); counts beyond the list use the last value.",
    )

    def __init__(self, **data: Any) -> None:
        # Direct construction reports bad types as a LeverError too, not a pydantic traceback.
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise format_validation_error(err, "", BenchConfig, hint=BENCH_DOCS) from None

    @classmethod
    def parse(cls, data: dict[str, Any], where: str = "bench") -> BenchConfig:
        """Validate a settings table (e.g. from a workspace file); errors name `where.key`."""
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise format_validation_error(err, "", cls, f"{where}.", BENCH_DOCS) from None
        except LeverError as err:
            raise LeverError(f"{where}.{err.args[0]}", hint=err.hint) from None

    @model_validator(mode="after")
    def _validate(self) -> BenchConfig:
        self.check()
        return self

    def check(self) -> None:
        """Raise LeverError for the first setting outside its valid range."""
        _at_least(self, "n_train", 2)
        _at_least(self, "n_val", 1)
        _at_least(self, "dim", 8)
        _at_least(self, "latent_dim", 2)
        _at_least(self, "n_topics", 1)
        _at_least(self, "shots", 1)
        _between(self, "n_queries", 1, self.n_train, "n_train")
        _between(self, "shots", 1, self.pool_size, "pool_size")
        # The pool never holds the query itself, so at most n_train - 1 items.
        _between(self, "pool_size", 1, self.n_train - 1, "n_train - 1")
        _between(self, "pool_near", 0, self.pool_size, "pool_size")
        _at_least(self, "group_min", 1)
        _between(self, "group_max", self.group_min, 10**6, "at least group_min")
        n_sets = comb(self.pool_size, self.shots)
        if self.group_min > n_sets:
            _fail(
                "group_min",
                self.group_min,
                f"at most {n_sets}, the distinct {self.shots}-item sets of a {self.pool_size}-item pool",
            )
        for name in ("beam_width", "retrieval", "samples_min", "random_min"):
            _at_least(self, name, 0)
        _between(self, "samples_max", self.samples_min, 10**6, "at least samples_min")
        _between(self, "random_max", self.random_min, 10**6, "at least random_min")
        if any(t <= 0 for t in self.temperatures):
            _fail("temperatures", self.temperatures, "a list of numbers > 0")
        for name in ("edge_case_share", "type_topic_coupling", "harmful_share", "unknown_share"):
            _between(self, name, 0.0, 1.0)
        for name in ("policy_scale", "position_decay", "noise_scale"):
            if getattr(self, name) <= 0:
                _fail(name, getattr(self, name), "a number > 0")
        for name in (
            "topic_spread",
            "feat_common",
            "feat_noise",
            "type_visibility",
            "quality_visibility",
            "difficulty_sd",
            "sensitivity_sd",
            "redundancy_weight",
            "unknown_penalty",
        ):
            _at_least(self, name, 0.0)
        _between(self, "redundancy_threshold", -1.0, 0.999)
        if not self.shot_bias:
            _fail("shot_bias", self.shot_bias, "a non-empty list of numbers (one per shot count)")

    def key(self) -> str:
        """Short hash of the settings and the generator version: the cache directory name."""
        return content_key({"version": GENERATOR_VERSION, **self.model_dump()})


def _fail(name: str, value: Any, valid: str) -> None:
    raise LeverError(
        f"{name} = {value!r} is out of range: must be {valid}",
        hint=f"fix '{name}' in the benchmark settings or remove it to use the default",
    )


def _at_least(cfg: BenchConfig, name: str, low: float) -> None:
    value = getattr(cfg, name)
    if value < low:
        _fail(name, value, f">= {low}")


def _between(cfg: BenchConfig, name: str, low: float, high: float, high_name: str | None = None) -> None:
    value = getattr(cfg, name)
    if not low <= value <= high:
        upper = f"{high} ({high_name})" if high_name else f"{high}"
        _fail(name, value, f"in [{low}, {upper}]")
