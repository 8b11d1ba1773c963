"""Training groups on the device: candidate data + rewards + features, served as padded batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lever.data.candidates import CandidateData


@dataclass
class Batch:
    """B query groups, padded to the largest group G of the batch."""

    query: Tensor  # [B, d] query features
    pool: Tensor  # [B, K, d] candidate features
    pool_mask: Tensor  # [B, K] bool, True = real candidate
    pointers: Tensor  # [B, G, L] local indices into the pool
    rewards: Tensor  # [B, G] rewards the stage trains on
    raw: Tensor  # [B, G] clipped, un-normalised rewards (validation loss)
    seq: Tensor  # [B, G] row of each sequence in the data (for per-sequence stored values)
    mask: Tensor  # [B, G] bool, True = real sequence

    def keep(self, keep: Tensor) -> Batch:
        """Only the sequences where `keep` [B, G] is True, moved to the front and re-padded to
        the largest kept group: top-k training then costs k sequences per query, not G."""
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept first, in order
        idx = order[:, : max(int(keep.sum(1).max()), 1)]  # [B, G']

        def take(x: Tensor) -> Tensor:
            return x.gather(1, idx if x.dim() == 2 else idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))

        return Batch(
            self.query,
            self.pool,
            self.pool_mask,
            take(self.pointers),
            take(self.rewards),
            take(self.raw),
            take(self.seq),
            take(keep),
        )


@dataclass
class Groups:
    """A set of query groups (train or validation) ready to batch."""

    data: CandidateData
    rewards: Tensor  # [S] training rewards
    raw: Tensor  # [S] raw rewards
    features: Tensor  # [N, d] on the device

    @property
    def num_queries(self) -> int:
        return self.data.num_queries

    def batch(self, idx: Tensor) -> Batch:
        """Gather queries `idx` (positions in `data`) into a padded batch on the features' device."""
        dev = self.features.device
        d = self.data
        pools = d.pools[idx]  # [B, K]
        seq_rows = torch.arange(d.num_sequences)
        pointers, mask = d.padded(idx, d.pointers)  # [B, G, L], [B, G]
        rewards, _ = d.padded(idx, self.rewards)
        raw, _ = d.padded(idx, self.raw)
        seq, _ = d.padded(idx, seq_rows)
        return Batch(
            query=self.features[d.query_ids[idx].to(dev)],
            pool=self.features[pools.clamp(min=0).to(dev)],
            pool_mask=(pools >= 0).to(dev),
            pointers=pointers.to(dev),
            rewards=rewards.to(dev),
            raw=raw.to(dev),
            seq=seq.to(dev),
            mask=mask.to(dev),
        )

    def batches(self, order: Tensor, batch_size: int):
        for start in range(0, len(order), batch_size):
            yield self.batch(order[start : start + batch_size])
