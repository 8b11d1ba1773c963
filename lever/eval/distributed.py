"""Evaluation across several processes (`torchrun --nproc_per_node N -m lever_cli evaluate PLAN`).

VLM generation dominates evaluation time, so that is what is spread: every rank builds
the same pools and selections (cheap and deterministic), answers the questions whose
position p satisfies p % world == rank on its own GPU, and rank 0 gathers the rows and
writes the results. Without torchrun (WORLD_SIZE unset or 1) nothing here does anything.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mine(self, position: int) -> bool:
        return position % self.world == self.rank

    def device(self) -> str:
        """The device this rank's VLM runs on."""
        if torch.cuda.is_available():
            return f"cuda:{self.local_rank}" if self.world > 1 else "auto"
        return "cpu" if self.world > 1 else "auto"


def ranks() -> Ranks:
    """This process's place in a torchrun job (joining the process group on first use)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        # Leave the group before the interpreter tears down: a group still alive at exit can abort the
        # process ("terminate called without an active exception") after its work is done.
        atexit.register(_leave)
    return Ranks(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))


def _leave() -> None:
    """Local clean-up only (no collective): after an error on one rank the others may never arrive."""
    if dist.is_initialized():
        dist.destroy_process_group()


def gather_rows(r: Ranks, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every rank's rows on rank 0, in question order (each row carries its position under `_pos`)."""
    if r.world == 1:
        merged = rows
    else:
        parts: list[Any] = [None] * r.world
        dist.all_gather_object(parts, rows)
        merged = [row for part in parts for row in part]
    merged.sort(key=lambda row: row["_pos"])
    for row in merged:
        row.pop("_pos")
    return merged


def barrier(r: Ranks) -> None:
    if r.world > 1:
        dist.barrier()
