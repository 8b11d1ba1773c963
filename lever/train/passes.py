"""Whole-set passes of a selector over groups, without gradient: log-probs per sequence and per pick, the validation loss.

GRPO's reference (`lever.train.grpo.Reference`) scores every training sequence once per stage with these; the epoch
loop (`lever.train.stage`) takes the validation loss after each epoch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lever.model import SelectorBase

from . import losses as L
from .groups import Groups

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
