"""Training groups on the device: candidate data + rewards + features, served as padded batches; a stage's batch source.

The epoch loop (`lever.train.stage`) takes its batches from a `Source` and hands them to its objective
(`lever.train.objectives`): `OfflineSource` serves the data's groups in a seeded order. A source that samples
groups from the current policy (on-policy GRPO) is another `Source` whose batches carry the same fields.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from lever.data.candidates import CandidateData

from .losses import kept_first


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
        idx = kept_first(keep)  # [B, G']

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
    """A set of query groups (train or validation) ready to batch.

    Every query's padded tensors are built once, on the features' device, the first time
    a batch is asked for; a batch is then an index and a trim to its largest group, so a
    step at batch 1 allocates almost nothing.
    """

    data: CandidateData
    rewards: Tensor  # [S] training rewards
    raw: Tensor  # [S] raw rewards
    features: Tensor  # [N, d] on the device
    _all: dict[str, Tensor] | None = field(default=None, init=False, repr=False)

    @property
    def num_queries(self) -> int:
        return self.data.num_queries

    def _padded(self) -> dict[str, Tensor]:
        """All queries padded to the largest group, on the device: built once."""
        if self._all is None:
            dev = self.features.device
            d = self.data
            every = torch.arange(d.num_queries)
            pointers, mask = d.padded(every, d.pointers)  # [Q, Gmax, L], [Q, Gmax]
            self._all = {
                "pointers": pointers.to(dev),
                "rewards": d.padded(every, self.rewards)[0].to(dev),
                "raw": d.padded(every, self.raw)[0].to(dev),
                "seq": d.padded(every, torch.arange(d.num_sequences))[0].to(dev),
                "mask": mask.to(dev),
                "query_rows": d.query_ids.to(dev),  # [Q]
                "pool_rows": d.pools.clamp(min=0).to(dev),  # [Q, K]
                "pool_mask": (d.pools >= 0).to(dev),  # [Q, K]
            }
        return self._all

    def batch(self, idx: Tensor) -> Batch:
        """Gather queries `idx` (positions in `data`) into a padded batch on the features' device."""
        a = self._padded()
        sizes = self.data.offsets[idx + 1] - self.data.offsets[idx]  # [B] on the CPU
        G = int(sizes.max())
        i = idx.to(self.features.device)
        return Batch(
            query=self.features[a["query_rows"][i]],  # [B, d]
            pool=self.features[a["pool_rows"][i]],  # [B, K, d]
            pool_mask=a["pool_mask"][i],  # [B, K]
            pointers=a["pointers"][i, :G],  # [B, G, L]
            rewards=a["rewards"][i, :G],  # [B, G]
            raw=a["raw"][i, :G],
            seq=a["seq"][i, :G],
            mask=a["mask"][i, :G],
        )

    def batches(self, order: Tensor, batch_size: int):
        for start in range(0, len(order), batch_size):
            yield self.batch(order[start : start + batch_size])


def derive_seed(seed: int, *parts: object) -> int:
    """A stable 31-bit seed from the run seed and a path of names (stage, epoch)."""
    return zlib.crc32(":".join(map(str, (seed, *parts))).encode()) & 0x7FFFFFFF


class Source(Protocol):
    """Where a stage's training batches come from, epoch by epoch.

    `steps_per_epoch` batches an epoch (the learning-rate schedule's length is epochs x steps_per_epoch);
    `batches(epoch)` yields them. The epoch loop seeds dropout per (seed, stage, epoch) before it asks, so a
    source that draws (samples from the policy, shuffles) takes its own seed from `derive_seed` and stays
    bit-identical across a resume. A batch's `seq` indexes the tables the objective keeps over the stage's
    training sequences (reference and behaviour log-probs)."""

    steps_per_epoch: int

    def batches(self, epoch: int) -> Iterator[Batch]: ...


class OfflineSource:
    """The data's groups, every query once an epoch, in an order seeded by (seed, stage, epoch), `batch_size` at a time."""

    def __init__(self, groups: Groups, batch_size: int, seed: int, stage: str):
        self.groups, self.batch_size, self.seed, self.stage = groups, batch_size, seed, stage
        self.steps_per_epoch = math.ceil(groups.num_queries / batch_size)

    def batches(self, epoch: int) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(derive_seed(self.seed, self.stage, epoch, "order"))
        order = torch.randperm(self.groups.num_queries, generator=gen)
        return self.groups.batches(order, self.batch_size)
