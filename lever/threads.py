"""CPU threads: a sane default for every lever process, and what provenance records.

torch's OpenMP threads spin-wait by default; on a machine shared with other jobs (or with
the other runs of a sweep) that spinning alone can make a run several times slower. So lever
sets `OMP_WAIT_POLICY=PASSIVE` unless it is already set (this has to happen before torch is
imported: the OpenMP runtime reads it once, when it loads). The thread count is, in this order:
`LEVER_THREADS`, else `OMP_NUM_THREADS` (as a user, a job script or torchrun set it), else as
many threads as the process may run on (its CPU affinity, which Slurm and taskset narrow; under
torchrun, an equal share per process). Provenance records which of them decided.

lever passes its count on to torch through `OMP_NUM_THREADS`; it notes the value it wrote in
`LEVER_SET_OMP_NUM_THREADS`, so that a later lever command in the same process (or a child
process) does not mistake lever's own setting for the user's.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lever.errors import LeverError

THREADS_ENV = "LEVER_THREADS"
WAIT_ENV = "OMP_WAIT_POLICY"
OMP_THREADS_ENV = "OMP_NUM_THREADS"
SET_BY_LEVER_ENV = "LEVER_SET_OMP_NUM_THREADS"  # the OMP_NUM_THREADS lever wrote itself (not a user's choice)


def passive_waiting() -> None:
    """OpenMP threads sleep instead of spinning while they wait, unless the environment says otherwise."""
    os.environ.setdefault(WAIT_ENV, "PASSIVE")


def available_cores() -> int:
    """The cores this process may run on (its affinity mask), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity masks
        return os.cpu_count() or 1


def _thread_count(name: str, raw: str) -> int:
    """`raw` (the value of environment variable `name`) as a thread count; anything else is an error naming it."""
    if not raw.isdigit() or int(raw) < 1:
        raise LeverError(
            f"{name}={raw!r} is not a thread count",
            hint=f"a whole number of at least 1, e.g. {name}=4"
            + ("" if name == THREADS_ENV else f", or set {THREADS_ENV}, which comes first"),
        )
    return int(raw)


def users_omp_threads() -> str | None:
    """`OMP_NUM_THREADS` as the user (or a job script, or torchrun) set it; None when unset or lever's own."""
    raw = os.environ.get(OMP_THREADS_ENV, "").strip()
    if not raw or raw == os.environ.get(SET_BY_LEVER_ENV):
        return None
    return raw


def wanted_threads() -> tuple[int, str]:
    """The thread count to use and where it came from: `LEVER_THREADS`, else `OMP_NUM_THREADS`, else the available
    cores (shared equally by the processes torchrun starts on this machine)."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if raw:
        return _thread_count(THREADS_ENV, raw), THREADS_ENV
    omp = users_omp_threads()
    if omp is not None:
        return _thread_count(OMP_THREADS_ENV, omp), OMP_THREADS_ENV
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")
    procs = int(local) if local.isdigit() and int(local) > 0 else 1
    if procs > 1:
        return max(1, available_cores() // procs), f"available cores / {procs} torchrun processes"
    return available_cores(), "available cores"


def configure_threads() -> None:
    """Apply the default at the start of a command: passive waiting and torch's intra-op thread count.

    Without importing torch: `OMP_NUM_THREADS` is what torch reads when it loads; a torch already loaded is
    set directly."""
    passive_waiting()
    n, source = wanted_threads()
    os.environ[OMP_THREADS_ENV] = str(n)
    if source == OMP_THREADS_ENV:
        os.environ.pop(SET_BY_LEVER_ENV, None)  # the user's value stays the user's
    else:
        os.environ[SET_BY_LEVER_ENV] = str(n)
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


def thread_settings() -> dict[str, Any]:
    """What a run's provenance records about threads: the count in use, which setting decided it (`LEVER_THREADS`,
    `OMP_NUM_THREADS` or the available cores), the wait policy."""
    import torch

    _, source = wanted_threads()
    return {
        "torch_threads": torch.get_num_threads(),
        "source": source,
        "available_cores": available_cores(),
        "omp_wait_policy": os.environ.get(WAIT_ENV),
    }


@contextmanager
def threads_for_batch(batch_size: int) -> Iterator[None]:
    """One intra-op thread while training at batch size 1, the process's count otherwise.

    A batch-1 step is ~100 small ops on a [1, G, K] group: splitting each across threads costs more in
    synchronisation than it gains. Measured on 2 cores, same run: an RCE epoch at batch 1 takes 3.6 s on one
    thread and 5.2-5.8 s on two (`benchmarks/bench_train.py --batch-size 1` sees the same). The count is
    restored afterwards (validation and evaluation are batched and use every thread).
    """
    import torch

    before = torch.get_num_threads()
    if batch_size == 1 and before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
