"""The in-memory form of candidate data: ragged query groups in CSR layout.

Q queries, S sequences in all, L shots per sequence. The sequences of query q are
rows offsets[q]:offsets[q+1] of every per-sequence tensor. Groups are ragged (11 to
40 sequences were seen), so nothing here assumes a fixed group size.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from .segments import offsets_from_sizes, segment_ids, segment_sum

# Per-sequence fields (first dimension S), gathered together by subset/select.
SEQ_FIELDS = ("pointers", "correct", "acc", "gt_prob", "rel", "failed", "source", "cand_index", "duplicate",
              "behaviour_logp", "behaviour_steps")  # fmt: skip
# Per-query fields (first dimension Q).
QUERY_FIELDS = ("query_ids", "pools", "pool_sizes", "cand_count")
# Sources (gen_method) that propose their sequence deterministically: no behaviour log-probability (null).
DETERMINISTIC_SOURCES = frozenset({"retrieval", "enumerated"})


@dataclass
class CandidateData:
    """Candidate sequences of many queries, each group a contiguous block of rows."""

    query_ids: Tensor  # [Q] long, ascending as integers
    pools: Tensor  # [Q, K] long global train indices, -1 past pool_sizes[q]
    pool_sizes: Tensor  # [Q] long
    offsets: Tensor  # [Q+1] long: group q is rows offsets[q]:offsets[q+1]
    pointers: Tensor  # [S, L] long local indices into the query's pool
    correct: Tensor  # [S] float32 vqa_correct (0 or 1)
    acc: Tensor  # [S] float32 vqa_acc_score in [0, 1]
    gt_prob: Tensor  # [S] float32 vqa_gt_prob (NaN where the file has none)
    rel: Tensor  # [S] float32 vqa_rel_score (NaN where the file has none)
    failed: Tensor  # [S] bool: eval_failed, or vqa_eval_mode fallback/error
    source: Tensor  # [S] long code into source_names (gen_method)
    source_names: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # file _meta, read counts, path, sha256
    # Where the sequences sit in the file, so `balance` can copy candidates as they were
    # read. None for data built in memory.
    cand_index: Tensor | None = None  # [S] long: position in its query's pointer_candidates list
    cand_count: Tensor | None = None  # [Q] long: length of that list in the file (duplicates included)
    # [S] bool: a repeat of an earlier ordered sequence of its query (the reader's `duplicates="keep"`);
    # None or all False once dropped.
    duplicate: Tensor | None = None
    # Behaviour log-probabilities (`behaviour_logp`, `behaviour_step_logps`): the log-probability of each
    # sequence under the distribution that proposed it (docs/data.md), NaN for a deterministic source
    # (retrieval). None when the file has none (files made before `lever data generate` wrote them).
    behaviour_logp: Tensor | None = None  # [S] float32, summed over the picks
    behaviour_steps: Tensor | None = None  # [S, L] float32, per pick

    def has_behaviour(self, steps: bool = False) -> bool:
        """Whether the data holds behaviour log-probabilities (per pick too, with `steps`)."""
        x = self.behaviour_steps if steps else self.behaviour_logp
        return x is not None and bool(torch.isfinite(x).any())

    # ---- sizes -------------------------------------------------------------

    @property
    def num_queries(self) -> int:
        return len(self.query_ids)

    @property
    def num_sequences(self) -> int:
        return len(self.pointers)

    @property
    def shots(self) -> int:
        """L: demonstrations per sequence."""
        return self.pointers.shape[1]

    def group_sizes(self) -> Tensor:
        """Sequences per query: [Q] long."""
        return self.offsets[1:] - self.offsets[:-1]

    def seq_query(self) -> Tensor:
        """Query position of every sequence: [S] long."""
        return segment_ids(self.offsets)

    def positives(self) -> Tensor:
        """Correct sequences per query: [Q] long."""
        return segment_sum(self.correct.double(), self.offsets).long()

    # ---- selection -----------------------------------------------------------

    def _take(self, query_index: Tensor, seq_index: Tensor, offsets: Tensor) -> CandidateData:
        changes: dict[str, Any] = {"offsets": offsets}
        for name in QUERY_FIELDS:
            value = getattr(self, name)
            if value is not None:
                changes[name] = value[query_index]
        for name in SEQ_FIELDS:
            value = getattr(self, name)
            if value is not None:
                changes[name] = value[seq_index]
        return replace(self, **changes)

    def subset(self, query_index: Tensor) -> CandidateData:
        """The queries at positions `query_index` [B] (in that order), with all their sequences."""
        query_index = torch.as_tensor(query_index, dtype=torch.long)
        sizes = self.group_sizes()[query_index]  # [B]
        offsets = offsets_from_sizes(sizes)
        # row j of the result comes from old row offsets[q] + (j - new_offsets[q])
        shift = self.offsets[query_index] - offsets[:-1]  # [B]
        seq_index = torch.arange(int(offsets[-1])) + torch.repeat_interleave(shift, sizes)
        return self._take(query_index, seq_index, offsets)

    def without_duplicates(self) -> CandidateData:
        """The data with every flagged repeat of an ordered sequence dropped (itself when there is none)."""
        if self.duplicate is None or not bool(self.duplicate.any()):
            return self
        return self.select_sequences(~self.duplicate)

    def select_sequences(self, keep: Tensor) -> CandidateData:
        """Only the sequences where keep [S] is True; queries left with none are dropped."""
        keep = keep.bool()
        sizes = segment_sum(keep.long(), self.offsets)  # [Q] kept per query
        query_index = torch.nonzero(sizes > 0).flatten()
        offsets = offsets_from_sizes(sizes[query_index])
        return self._take(query_index, torch.nonzero(keep).flatten(), offsets)

    # ---- batching --------------------------------------------------------------

    def padded(self, query_index: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sequence values [S, ...] of queries `query_index` [B] as a padded batch.

        out[b, g] = values[offsets[q_b] + g] for g < n_{q_b}, else 0; G = max_b n_{q_b}.
        Returns (out [B, G, ...], mask [B, G] bool, True = real sequence).
        """
        query_index = torch.as_tensor(query_index, dtype=torch.long)
        start = self.offsets[query_index]  # [B]
        sizes = self.offsets[query_index + 1] - start  # [B]
        G = int(sizes.max()) if len(sizes) else 0
        g = torch.arange(G)  # [G]
        mask = g.unsqueeze(0) < sizes.unsqueeze(1)  # [B, G]
        rows = torch.where(mask, start.unsqueeze(1) + g, torch.zeros((), dtype=torch.long))  # [B, G]
        out = values[rows]  # [B, G, ...]
        pad = mask.reshape(*mask.shape, *([1] * (values.dim() - 1)))
        out = torch.where(pad, out, torch.zeros((), dtype=values.dtype))
        return out, mask

    def describe(self) -> str:
        return f"{self.num_queries} queries, {self.num_sequences} sequences of {self.shots} shots"
