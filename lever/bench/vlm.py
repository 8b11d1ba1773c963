"""The simulated VLM: answers a question given an ordered list of demonstrations, deterministically.

    value(q, j) = rw * (cos(h_q, h_j) + tb*[type_q = type_j] + ab*[answer_q = answer_j]) + qw * quality_j
    redund(S)   = sum_{s<t} max(0, cos(h_s, h_t) - thr) / (1 - thr)
    logit(q, S) = base - difficulty_q + shot_bias[k]
                  + sensitivity_q * (sum_t decay^(k-1-t) * value(q, S_t) - redw * redund(S) * c(k))
    logit(q, {}) = base - difficulty_q + ZERO_SHOT_BIAS          (no demonstrations)
    c(k)        = 1 up to REDUNDANCY_SHOTS, then C(REDUNDANCY_SHOTS, 2) / C(k, 2)
    correct     <=> u(split, q, S) < sigmoid(logit / noise)   u = a hash of the inputs in [0, 1)

The hash plays the part of the VLM's sensitivity to exact prompt contents: the same inputs always
give the same answer (greedy decoding), nearby inputs give unrelated draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb
from typing import TYPE_CHECKING, Any

import torch

from lever.errors import LeverError

from .config import GENERATOR_VERSION

if TYPE_CHECKING:
    from .cache import BenchPaths

SPLITS = ("train", "val", "test")  # the index is the split id of the answer hash: never reorder
_MASK = 0xFFFFFFFF

# Behaviour outside the 1-4 shots the world was tuned on (docs/benchmark.md, Zero-shot and more shots). Bump
# BEHAVIOUR when it changes: it is in the key of every evaluation that asks 0 or more than 4 shots.
BEHAVIOUR = 2  # 1: no format cost at 0 shots, redundancy summed over every pair at any k
ZERO_SHOT_BIAS = -0.6  # logit without demonstrations: nothing shows the answer format (a short answer)
REDUNDANCY_SHOTS = 4  # beyond this many shots the pairwise redundancy is rescaled to this many shots' pair count


class SimVLM:
    """A seeded stand-in for Qwen2.5-VL on OK-VQA; see docs/benchmark.md (its numbers are not OK-VQA results)."""

    def __init__(self, state: dict[str, Any]):
        self.params = state["params"]
        self.vocab: list[str] = list(state["vocab"])
        # float64 once here: sums over demonstrations then give the same bits in a batch and alone.
        self.splits = {
            name: {k: v.double() if v.is_floating_point() else v for k, v in state[name].items()}
            for name in SPLITS
            if name in state
        }
        self._train = self.splits["train"]

    @classmethod
    def load(cls, paths: BenchPaths) -> SimVLM:
        """Read the world file written by `ensure_bench`."""
        try:
            state = torch.load(paths.world, weights_only=True)
        except (OSError, RuntimeError) as err:
            raise LeverError(
                f"cannot read the simulated VLM's world file {paths.world}: {err}",
                hint="delete the benchmark cache directory so that it is generated again",
            ) from None
        if state.get("version") != GENERATOR_VERSION:
            raise LeverError(
                f"{paths.world} was written by benchmark generator version {state.get('version')}, "
                f"this lever reads version {GENERATOR_VERSION}",
                hint="delete the benchmark cache directory so that it is generated again",
            )
        if paths.test_world.is_file():  # the held-out split, once written (cache.ensure_test)
            state = {**state, "test": torch.load(paths.test_world, weights_only=True)["test"]}
        return cls(state)

    def size(self, split: str) -> int:
        """Number of questions in `split`."""
        return len(self._split(split)["difficulty"])

    # -- public answers ------------------------------------------------------------------------

    def answer(self, split: str, query_index: int, demo_indices: Sequence[int]) -> str:
        """Generated answer text for one question; `demo_indices` are train indices in prompt order."""
        return self.answer_batch(split, [query_index], [demo_indices])[0]

    def answer_batch(self, split: str, query_indices: Sequence[int], demo_lists: Sequence[Sequence[int]]) -> list[str]:
        """Answer texts for many questions; demo lists may differ in length."""
        option = self.decide(split, query_indices, demo_lists)["option"]
        return [self.vocab[i] for i in option.tolist()]

    def score(self, split: str, query_index: int, demo_indices: Sequence[int]) -> dict[str, Any]:
        """The real scorer's fields for one question.

        vqa_pred_answer, vqa_correct, vqa_acc_score, vqa_gt_prob, vqa_rel_score (docs/data.md).
        """
        return self.score_batch(split, [query_index], [demo_indices])[0]

    def score_batch(self, split: str, query_indices: Sequence[int], demo_lists: Sequence[Sequence[int]]) -> list[dict[str, Any]]:
        """`score` for many questions."""
        d = self.decide(split, query_indices, demo_lists)
        cols = zip(d["option"].tolist(), d["acc"].tolist(), d["gt_prob"].tolist(), d["rel"].tolist())
        return [
            {
                "vqa_pred_answer": self.vocab[o],
                "vqa_correct": int(a > 0),
                "vqa_acc_score": round(a, 4),
                "vqa_gt_prob": round(p, 4),
                "vqa_rel_score": round(r, 4),
            }
            for o, a, p, r in cols
        ]

    # -- the model -----------------------------------------------------------------------------

    def decide(
        self, split: str, query_indices: Sequence[int] | torch.Tensor, demo_lists: Sequence[Sequence[int]] | torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Vectorised core: per question the chosen option (vocab id), its accuracy and text score, gt_prob, p(correct).

        demo_lists: ragged lists (grouped by shot count, one batch of tensor ops per group) or a [B, k] tensor.
        """
        s = self._split(split)
        q = torch.as_tensor(query_indices, dtype=torch.long)  # [B]
        if len(demo_lists) != len(q):
            raise ValueError("query_indices and demo_lists differ in length")
        self._check_range(q, len(s["difficulty"]), f"{split} question index")
        if isinstance(demo_lists, torch.Tensor):  # fast path: one shot count, already a [B, k] tensor
            self._check_range(demo_lists, len(self._train["difficulty"]), "demonstration (train) index")
            return self._decide(s, SPLITS.index(split), q, demo_lists.long())
        lengths = [len(d) for d in demo_lists]
        out = {k: torch.zeros(len(q), dtype=torch.float64) for k in ("acc", "rel", "gt_prob", "p")}
        out["option"] = torch.zeros(len(q), dtype=torch.long)
        for k in sorted(set(lengths)):
            rows = torch.tensor([i for i, n in enumerate(lengths) if n == k], dtype=torch.long)
            demos = torch.tensor([list(demo_lists[i]) for i in rows.tolist()], dtype=torch.long).reshape(len(rows), k)
            self._check_range(demos, len(self._train["difficulty"]), "demonstration (train) index")
            part = self._decide(s, SPLITS.index(split), q[rows], demos)
            for key, val in part.items():
                out[key][rows] = val.to(out[key].dtype)
        return out

    def logit(self, split: str, q: torch.Tensor, demos: torch.Tensor) -> torch.Tensor:
        """logit of p(correct) for questions q [B] with demonstrations [B, k] (formula in the module docstring)."""
        s, tr, pr = self._split(split), self._train, self.params
        k = demos.shape[1]
        hq = s["h"][q]  # [B, d]
        hd = tr["h"][demos]  # [B, k, d]
        base = pr["base_logit"] - s["difficulty"][q]  # [B]
        if k == 0:  # zero-shot: no demonstrations, no context cost, but no example of the answer format either
            return base + ZERO_SHOT_BIAS
        base = base + pr["shot_bias"][min(k, len(pr["shot_bias"])) - 1]
        rel = (
            (hd * hq[:, None]).sum(-1)  # [B, k]
            + pr["type_bonus"] * (tr["type"][demos] == s["type"][q][:, None]).double()
            + pr["answer_bonus"] * (tr["answer"][demos] == s["answer"][q][:, None]).double()
        )
        value = pr["relevance_weight"] * rel + pr["quality_weight"] * tr["quality"][demos]  # [B, k]
        pos = pr["position_decay"] ** torch.arange(k - 1, -1, -1, dtype=torch.float64)  # [k], last demo weighs 1
        cos = torch.einsum("bsd,btd->bst", hd, hd)  # [B, k, k]
        thr = pr["redundancy_threshold"]
        idx = torch.arange(k)
        pairs = idx[:, None] < idx[None, :]  # [k, k] each pair s < t once
        excess = ((cos - thr).clamp(min=0) / (1 - thr) * pairs).sum((1, 2))  # [B]
        if k > REDUNDANCY_SHOTS:  # mean pair excess x the pair count of REDUNDANCY_SHOTS: grows with k no faster
            excess = excess * (comb(REDUNDANCY_SHOTS, 2) / comb(k, 2))
        demo_term = (value * pos).sum(-1) - pr["redundancy_weight"] * excess  # [B]
        return base + s["sensitivity"][q] * demo_term

    def _decide(self, s: dict[str, torch.Tensor], split_id: int, q: torch.Tensor, demos: torch.Tensor) -> dict[str, torch.Tensor]:
        p = torch.sigmoid(self.logit(SPLITS[split_id], q, demos) / self.params["noise_scale"])  # [B] float64
        u = hash_uniform(self.params["salt"], split_id, q, demos)  # [B] float64 in [0, 1)
        correct = u < p
        # Right: pick among the correct options by u / p (small u = confident = the majority answer).
        u_right = (u / p).clamp(max=1 - 1e-9)
        pick_right = torch.searchsorted(s["correct_cdf"][q], u_right[:, None], right=True)[:, 0]
        pick_right = torch.minimum(pick_right, s["n_correct"][q] - 1)
        # Wrong: a uniform pick among the wrong options by (u - p) / (1 - p).
        n_wrong = s["n_options"][q] - s["n_correct"][q]
        u_wrong = ((u - p) / (1 - p)).nan_to_num(0.0).clamp(0, 1 - 1e-9)
        pick_wrong = s["n_correct"][q] + (u_wrong * n_wrong).long()  # unused where correct
        option = torch.where(correct, pick_right, pick_wrong)  # [B] local option index
        # gt_prob: the model's belief in the human answers, higher when the realised margin is.
        margin = torch.logit(u.clamp(1e-7, 1 - 1e-7))
        gt_prob = torch.sigmoid(torch.logit(p.clamp(1e-12, 1 - 1e-12)) - 0.5 * margin)
        return {
            "option": s["options"][q, option],
            "acc": s["option_acc"][q, option],
            "rel": s["option_rel"][q, option],
            "gt_prob": gt_prob,
            "p": p,
        }

    def _split(self, split: str) -> dict[str, torch.Tensor]:
        if split not in self.splits:
            raise LeverError(f"unknown split {split!r} for the simulated VLM", hint=f"use one of: {', '.join(self.splits)}")
        return self.splits[split]

    @staticmethod
    def _check_range(idx: torch.Tensor, n: int, what: str) -> None:
        if idx.numel() and (idx.min() < 0 or idx.max() >= n):
            bad = idx[(idx < 0) | (idx >= n)][0].item()
            raise LeverError(
                f"{what} {bad} is out of range: the bundled benchmark has {n} (0..{n - 1})",
                hint="the data may come from another benchmark setting; regenerate or fix the indices",
            )


def hash_uniform(salt: int, split_id: int, q: torch.Tensor, demos: torch.Tensor) -> torch.Tensor:
    """A uniform in [0, 1) per row, a fixed function of (salt, split, query, ordered demos).

    h_0 = mix(salt ^ split), h_1 = mix(h_0 ^ q), h_{t+2} = mix(h_{t+1} ^ demo_t), u = (h >> 8) / 2^24
    """
    h = _mix(torch.full_like(q, (salt ^ split_id) & _MASK))
    h = _mix(h ^ q)
    for t in range(demos.shape[1]):
        h = _mix(h ^ demos[:, t])
    return (h >> 8).double() / float(1 << 24)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """32-bit integer finaliser ("lowbias32"), on int64 tensors holding values below 2^32."""
    x = x & _MASK
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 without int64 overflow: split c into 16-bit halves."""
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _MASK
