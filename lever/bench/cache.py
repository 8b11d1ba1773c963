"""Generate the bundled benchmark once into a cache directory keyed by its settings, and reuse it.

Generation writes into a temporary sibling directory, writes `manifest.json` last, then renames the
directory into place: an interrupted generation leaves no `bench-<key>` directory, and of two
processes racing, the second discards its copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lever.errors import LeverError

from .candidates import make_candidates
from .config import GENERATOR_VERSION, BenchConfig
from .vlm import SimVLM
from .world import make_world

MANIFEST = "manifest.json"
TEST_FILES = {"items_test": "items_test.json", "test_features": "test_features.pt", "test_world": "world_test.pt"}
TEST_MANIFEST = "manifest_test.json"
FILES = {
    "features": "features.pt",
    "val_features": "val_features.pt",
    "candidates": "candidates.json",
    "items_train": "items_train.json",
    "items_val": "items_val.json",
    "world": "world.pt",
}


@dataclass
class BenchPaths:
    """Files of one generated benchmark (names in FILES)."""

    root: Path
    features: Path  # float32 [n_train, dim], row i = train item i (torch.save)
    candidates: Path  # candidate-data JSON (docs/data.md format)
    items_train: Path  # JSON list of train items
    items_val: Path  # JSON list of val eval questions
    val_features: Path  # float32 [n_val, dim], row j = val item j
    world: Path  # the simulated VLM's latent world (torch.load(weights_only=True))

    @classmethod
    def at(cls, root: Path) -> BenchPaths:
        root = Path(root)
        return cls(root=root, **{k: root / v for k, v in FILES.items()})

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def items_test(self) -> Path:  # JSON list of the held-out questions (ensure_test)
        return self.root / TEST_FILES["items_test"]

    @property
    def test_features(self) -> Path:  # float32 [n_val, dim], row j = held-out item j
        return self.root / TEST_FILES["test_features"]

    @property
    def test_world(self) -> Path:  # the held-out split's latent tensors for the simulated VLM
        return self.root / TEST_FILES["test_world"]


def ensure_test(paths: BenchPaths, cfg: BenchConfig, log: Callable[[str], None] = print) -> BenchPaths:
    """The benchmark's held-out `test` split, written once beside its files (each file to a temporary name, then
    renamed; its manifest last): the benchmark's own files are not touched, so evaluations on train and val keep
    their keys and values."""
    if is_complete(paths.root, TEST_MANIFEST):
        return paths
    start = time.perf_counter()
    world = make_world(cfg, held_out=True)
    assert world.test is not None
    tmp = {k: paths.root / f".{name}.tmp-{os.getpid()}" for k, name in TEST_FILES.items()}
    try:
        torch.save(world.test.features.contiguous(), tmp["test_features"])
        torch.save(world.test_state(), tmp["test_world"])
        _write_lines(tmp["items_test"], _json_list(world.test.items))
        files = {}
        for k, name in TEST_FILES.items():
            data = tmp[k].read_bytes()
            files[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            os.replace(tmp[k], paths.root / name)
    except OSError as err:
        for f in tmp.values():
            f.unlink(missing_ok=True)
        raise LeverError(f"could not write the held-out split into {paths.root}: {err.strerror or err}") from None
    manifest = {"generator_version": GENERATOR_VERSION, "key": cfg.key(), "files": files}
    (paths.root / TEST_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    log(
        f"generating the held-out test split ({cfg.n_val} questions) into {paths.root} ... done in {time.perf_counter() - start:.1f} s"
    )
    return paths


def ensure_bench(cache_root: Path, cfg: BenchConfig | None = None, log: Callable[[str], None] = print) -> BenchPaths:
    """The benchmark for `cfg` under `cache_root / bench-<key>`: generated on first use (one log line), reused after."""
    cfg = cfg or BenchConfig()
    cache_root = Path(cache_root)
    target = cache_root / f"bench-{cfg.key()}"
    paths = BenchPaths.at(target)
    if is_complete(target):
        return paths
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".bench-{cfg.key()}.tmp-", dir=cache_root))
    except OSError as err:
        raise LeverError(
            f"cannot create the benchmark cache in {cache_root}: {err.strerror}", hint="choose a writable cache directory"
        ) from None
    _remove_stale(cache_root)
    start = time.perf_counter()
    try:
        write_bench(cfg, tmp)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)  # also on Ctrl-C: leave nothing half-made
        if isinstance(err, OSError) or (isinstance(err, RuntimeError) and "write" in str(err).lower()):
            raise LeverError(
                f"could not write the benchmark into {cache_root}: {getattr(err, 'strerror', None) or err}",
                hint="free some space (or choose a writable cache directory) and run the same command again",
            ) from None
        raise
    _move_into_place(tmp, target)
    log(
        f"generating the bundled benchmark (seed {cfg.seed}, {cfg.n_queries} queries) into {target} "
        f"... done in {time.perf_counter() - start:.1f} s"
    )
    return paths


def is_complete(root: Path, name: str = MANIFEST) -> bool:
    """True when `root` holds a manifest and every file it lists with the recorded size."""
    try:
        manifest = json.loads((root / name).read_text())
        return manifest["generator_version"] == GENERATOR_VERSION and all(
            (root / name).stat().st_size == meta["bytes"] for name, meta in manifest["files"].items()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def write_bench(cfg: BenchConfig, root: Path) -> dict[str, Any]:
    """Generate every file into the existing directory `root`, manifest last; returns the manifest."""
    world = make_world(cfg)
    vlm = SimVLM(world.vlm_state())
    candidates = make_candidates(cfg, world, vlm)
    paths = BenchPaths.at(root)
    torch.save(world.train.features.contiguous(), paths.features)
    torch.save(world.val.features.contiguous(), paths.val_features)
    torch.save(world.vlm_state(), paths.world)
    _write_lines(paths.items_train, _json_list(world.train.items))
    _write_lines(paths.items_val, _json_list(world.val.items))
    _write_lines(paths.candidates, _json_object(candidates))
    files = {}
    for name in FILES.values():
        data = (root / name).read_bytes()
        files[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "key": cfg.key(),
        "settings": cfg.model_dump(),
        "files": files,
        "stats": candidate_stats(candidates),
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def candidate_stats(data: dict[str, Any]) -> dict[str, Any]:
    """Share of all-negative / all-positive / mixed queries and group sizes (failed candidates skipped)."""
    sizes, neg, pos = [], 0, 0
    n_cands = n_failed = 0
    for key, entry in data.items():
        if key == "_meta":
            continue
        cands = entry["pointer_candidates"]
        ok = [c["vqa_correct"] for c in cands if not c["eval_failed"]]
        n_cands += len(cands)
        n_failed += len(cands) - len(ok)
        sizes.append(len(cands))
        neg += sum(ok) == 0
        pos += sum(ok) == len(ok)
    n = max(len(sizes), 1)
    return {
        "queries": len(sizes),
        "candidates": n_cands,
        "failed": n_failed,
        "all_negative": round(neg / n, 4),
        "all_positive": round(pos / n, 4),
        "mixed": round(1 - (neg + pos) / n, 4),
        "group_min": min(sizes, default=0),
        "group_max": max(sizes, default=0),
        "group_mean": round(sum(sizes) / n, 2),
    }


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename tmp -> target atomically; if another process won the race, keep theirs and drop ours."""
    for _ in range(2):
        try:
            os.rename(tmp, target)
            return
        except OSError:
            if is_complete(target):
                shutil.rmtree(tmp, ignore_errors=True)
                return
            # A stale, incomplete directory is in the way (not one we would trust): move it aside and retry.
            stale = target.with_name(f".{target.name}.stale-{os.getpid()}")
            try:
                os.rename(target, stale)
                shutil.rmtree(stale, ignore_errors=True)
            except OSError:
                pass
    shutil.rmtree(tmp, ignore_errors=True)
    raise LeverError(
        f"cannot move the generated benchmark into {target}",
        hint="check the cache directory's permissions, or delete it and retry",
    )


def _remove_stale(cache_root: Path, max_age_s: float = 3600.0) -> None:
    """Delete temporary directories left by generations killed outright (older than any live one could be)."""
    now = time.time()
    for leftover in cache_root.glob(".bench-*.tmp-*"):
        try:
            if now - leftover.stat().st_mtime > max_age_s:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass


def _json_list(items: list[dict[str, Any]]) -> str:
    # One record per line: diff-friendly and byte-stable (insertion key order, Python float repr).
    return "[\n" + ",\n".join(json.dumps(it) for it in items) + "\n]\n"


def _json_object(obj: dict[str, Any]) -> str:
    return "{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in obj.items()) + "\n}\n"


def _write_lines(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
