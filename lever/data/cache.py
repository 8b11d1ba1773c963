"""The parsed-data cache: a torch file of CandidateData's tensors, keyed by the file's SHA-256.

Written to a temp file in the cache folder then renamed (never half-written), read
with torch.load(weights_only=True) (tensors and plain values only).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lever.io import atomic_write
from lever.keys import file_sha256  # noqa: F401  (the parse cache's key; re-exported by lever.data)

from .candidates import CandidateData

CACHE_VERSION = 6  # 6: behaviour log-probs; 5: every listed sequence, repeats flagged; 4: repeated query keys and scores outside [0, 1] are refused; 3: duplicates are ordered sequences
Log = Callable[[str], Any]


def cache_path(cache_dir: Path | str, digest: str) -> Path:
    return Path(cache_dir) / f"candidates-{digest[:32]}-v{CACHE_VERSION}.pt"


_TENSORS = ("query_ids", "pools", "pool_sizes", "offsets", "pointers", "correct", "acc", "gt_prob", "rel",
            "failed", "source", "cand_index", "cand_count", "duplicate", "behaviour_logp", "behaviour_steps")  # fmt: skip


def write_cache(cache: Path, data: CandidateData, log: Log) -> None:
    """torch.save, atomically (lever.io.atomic_write): never a half-written cache."""
    payload = {
        "version": CACHE_VERSION,
        "sha256": data.meta["sha256"],
        "meta_json": json.dumps(data.meta),
        "source_names": list(data.source_names),
        "tensors": {name: getattr(data, name) for name in _TENSORS},
    }
    try:
        atomic_write(cache, lambda tmp: torch.save(payload, tmp))
    except OSError as err:
        log(f"warning: could not write the data cache {cache}: {err}")


def read_cache(cache: Path, digest: str, log: Log) -> CandidateData | None:
    try:
        payload = torch.load(cache, weights_only=True)
        if payload.get("version") != CACHE_VERSION or payload.get("sha256") != digest:
            return None
        return CandidateData(
            **payload["tensors"], source_names=list(payload["source_names"]), meta=json.loads(payload["meta_json"])
        )
    except Exception as err:  # a damaged cache is re-parsed, never trusted
        log(f"warning: ignoring unreadable data cache {cache}: {err}")
        return None
