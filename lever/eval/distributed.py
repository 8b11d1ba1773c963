"""Several processes (`torchrun --nproc_per_node N -m lever_cli run|evaluate PLAN`): the VLM's work is spread.

VLM generation dominates, so that is what is spread, one rank per GPU:

* evaluation: every rank builds the same pools and selections (cheap and deterministic), answers the
  questions whose position p satisfies p % world == rank on its own GPU, and rank 0 gathers the rows
  and writes the results;
* training (`Spread`): rank 0 trains alone, exactly as one process does (it alone reads and writes the
  run, its locks and the reward cache); each VLM call of its training (online GRPO's rollouts, a refresh
  round's generation, val/reward) sends the prompts the reward cache does not hold to every rank, rank r
  answers those at positions p % world == r, and rank 0 gets the answers back in prompt order. The other
  ranks `serve` meanwhile, until rank 0 `release`s them with its outcome. The answers, hence the rewards,
  metrics and checkpoints, do not depend on the number of ranks.

Without torchrun (WORLD_SIZE unset or 1) nothing here does anything.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
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
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local)  # object collectives on nccl go through this rank's own GPU
        # A long timeout: while rank 0 trains (seconds to minutes between VLM calls) the others wait in `serve`.
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timedelta(hours=24))
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


# --------------------------------------------------------------------------- training's VLM calls

_answered = [0]  # prompts this process answered for a `Spread` since the last `release` / `serve`


class Spread:
    """A backend whose prompts rank 0 spreads over the ranks (module docstring); the inner backend in one process.

    Rank 0 calls it as any backend (the reward cache in front of it); rank r answers the prompts at positions
    p % world == r with its own `inner` (its own GPU), and the answers come back in prompt order."""

    SPREAD = ("answer", "gt_probs", "answer_with_gt_probs")  # the Backend methods it passes on

    def __init__(self, inner: Any, r: Ranks):
        self.inner, self.r = inner, r

    @property
    def name(self) -> str:
        return self.inner.name

    def answer(self, requests: list[Any]) -> list[Any]:
        return self._call("answer", requests)

    def __getattr__(self, method: str) -> Any:  # gt_probs, answer_with_gt_probs: where the inner backend has them
        if method in Spread.SPREAD and hasattr(self.__dict__.get("inner"), method):
            return lambda requests: self._call(method, requests)
        raise AttributeError(method)

    def _call(self, method: str, requests: list[Any]) -> Any:
        if self.r.world > 1:
            dist.broadcast_object_list([(method, requests)], src=0)  # to the ranks waiting in `serve`
        return self.share(method, requests)

    def share(self, method: str, requests: list[Any]) -> Any:
        """This rank's share of a call (positions p % world == rank), then every rank's answers in prompt order."""
        mine = requests[self.r.rank :: self.r.world]
        if mine:
            out = getattr(self.inner, method)(mine)
        else:
            out = ([], []) if method == "answer_with_gt_probs" else []
        _answered[0] += len(mine) if method != "gt_probs" else 0  # counted as the reward cache counts calls: answers
        if self.r.world == 1:
            return out
        parts: list[Any] = [None] * self.r.world
        dist.all_gather_object(parts, out)
        return _interleave(parts, len(requests))


def _interleave(parts: list[Any], n: int) -> Any:
    """Rank r's answers (positions r, r + world, ...) back in prompt order; a tuple of lists element-wise."""
    if isinstance(parts[0], tuple):
        return tuple(_interleave([p[i] for p in parts], n) for i in range(len(parts[0])))
    out: list[Any] = [None] * n
    for rank, part in enumerate(parts):
        out[rank :: len(parts)] = part
    return out


def serve(r: Ranks, spread: Callable[[], Spread], log: Callable[[str], None]) -> Any:
    """A rank other than 0 while rank 0 trains: answer its share of each of rank 0's VLM calls (`spread()` builds
    this rank's backend on the first call) until rank 0 releases it; returns what rank 0 released it with."""
    backend = None
    _answered[0] = 0
    while True:
        msg: list[Any] = [None]
        dist.broadcast_object_list(msg, src=0)
        method, payload = msg[0]
        if method == "release":
            _tally(r, log)
            return payload
        backend = backend or spread()
        backend.share(method, payload)


def release(r: Ranks, result: Any, log: Callable[[str], None]) -> None:
    """Rank 0, its training done: let the serving ranks go on, with `result`; says how many prompts each answered."""
    if r.world > 1:
        dist.broadcast_object_list([("release", result)], src=0)
        _tally(r, log)
    _answered[0] = 0


def _tally(r: Ranks, log: Callable[[str], None]) -> None:
    counts: list[Any] = [None] * r.world
    dist.all_gather_object(counts, _answered[0])
    _answered[0] = 0
    if r.is_main and sum(counts):
        log(f"VLM prompts answered per rank: {' + '.join(map(str, counts))} = {sum(counts)}")
