"""From raw VQA files to what training reads: item features (`lever data embed`) and pools (`lever data pools`).

Row order everywhere is lever's: item i of a split is its i-th question by sorted question id
(as the original). A pools file is the original's "sampler cache" format, so either project
reads the other's:

    {"<query train row>": [K distinct train rows, never the query itself], ...}
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lever.data.sources import Dataset
from lever.device import resolve_device
from lever.errors import LeverError
from lever.io import atomic_write, write_json

from .backend import Item
from .select import random_pools, similar_pools
from .world import load_split

Progress = Callable[[int, int], None]  # (done, total)


# --------------------------------------------------------------------------- embed


def embed_split(
    ds: Dataset,
    split: str,
    out: Path,
    *,
    batch_size: int = 64,
    device: str = "auto",
    chunk: int = 1024,
    progress: Progress | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write the `[N, d]` features of a split of the dataset `ds` to `out` (torch.save'd float tensor, row i = item i).

    OK-VQA: CLIP features (lever.eval.clip) of the workspace's `models.clip`, computed in chunks of
    `chunk` items that are kept in the cache (keyed by the model's files and the items' files), so a
    killed run resumes at its last finished chunk and a second run with the same inputs only copies.
    An image that is missing or does not decode leaves its item the question's embedding alone; they are
    counted (each chunk keeps its list) and reported in one line. When no image file exists (checked
    before CLIP loads) or every image is unreadable, a LeverError, and nothing is written.
    The bundled benchmark has no images: its features are its simulated world's and are copied.
    """
    ws = ds.ws
    items = load_split(ds, split, log)
    if ws.is_bundled:
        paths = ds.bench(log)
        src = Path(paths.features if split == "train" else paths.val_features)
        atomic_write(out, lambda tmp: shutil.copyfile(src, tmp))
        feats = torch.load(out, weights_only=True)
        return {"out": str(out), "rows": feats.shape[0], "dim": feats.shape[1], "computed": 0, "source": "bundled benchmark"}
    if not ws.models.clip:
        raise LeverError(f"workspace {ws.source}: [models] clip is needed to embed", hint="point it at a local CLIP folder")
    from .clip import cache_key, clip_features, load_clip

    model_dir = ws.path(ws.models.clip)
    if not (model_dir / "config.json").is_file():
        raise LeverError(f"workspace {ws.source}: models.clip = {ws.models.clip!r} is not a model folder with a config.json")
    with_image = [it for it in items if it.image is not None]
    if with_image and not any(Path(it.image).is_file() for it in with_image):  # a stat each: cheap, before CLIP loads
        raise LeverError(
            f"none of the {len(with_image)} {split} images exists (e.g. {with_image[0].image})",
            hint=f"check {ds.table}.{split}_{'parquet' if ds.layout == 'parquet' else 'images'} in the workspace {ws.source}",
        )
    key = cache_key(items, model_dir)
    folder = ws.cache_dir / "embed" / f"{key[:24]}-{chunk}"  # chunk files are named by their first row
    folder.mkdir(parents=True, exist_ok=True)
    starts = list(range(0, len(items), chunk))
    todo = [s for s in starts if not _chunk_done(folder, s)]
    if todo:
        dev = str(resolve_device(device))
        model = load_clip(model_dir, dev)
        done = len(starts) - len(todo)
        if done:
            log(f"embed: resuming, {done} of {len(starts)} chunks already in the cache")
        for s in todo:
            bad: list[Item] = []
            feats = clip_features(items[s : s + chunk], model, batch_size=batch_size, device=dev, unreadable=bad)
            atomic_write(folder / f"{s:08d}.pt", lambda tmp, f=feats: torch.save(f, tmp))
            write_json(folder / f"{s:08d}.json", {"unreadable": [it.image for it in bad]})  # after the features: a chunk
            if progress:  # counts as done once both are there
                progress(min(s + chunk, len(items)), len(items))
    unreadable = [img for s in starts for img in json.loads((folder / f"{s:08d}.json").read_text())["unreadable"]]
    if with_image and len(unreadable) == len(with_image):
        raise LeverError(
            f"all {len(unreadable)} {split} images are unreadable (missing or not decodable, e.g. {unreadable[0]}): "
            "the features would be the questions' alone; nothing was written",
            hint=f"check {ds.table}.{split}_images in the workspace {ws.source} and the image files",
        )
    if unreadable:
        log(
            f"embed: {len(unreadable)} of {len(with_image)} {split} images unreadable (missing or not decodable, e.g. "
            f"{', '.join(unreadable[:3])}): those items use their question embedding alone"
        )
    feats = torch.cat([torch.load(folder / f"{s:08d}.pt", weights_only=True) for s in starts])  # [N, d]
    atomic_write(out, lambda tmp: torch.save(feats, tmp))
    return {
        "out": str(out), "rows": feats.shape[0], "dim": feats.shape[1], "computed": len(todo) * chunk,
        "cache": str(folder), "unreadable": len(unreadable),
    }  # fmt: skip


def _chunk_done(folder: Path, start: int) -> bool:
    """Whether the embed cache holds the chunk at `start`: its features and its list of unreadable images."""
    return (folder / f"{start:08d}.pt").is_file() and (folder / f"{start:08d}.json").is_file()


# --------------------------------------------------------------------------- pools


def make_pools(
    features: Tensor, *, k: int = 64, queries: int | None = 800, method: str = "similar", seed: int = 0
) -> dict[str, list[int]]:
    """Pools for training queries: {query row: K train rows}, the query never in its own pool.

    Queries: `queries` train rows drawn at random (seeded), sorted; all rows when None or at least N.
    method "similar": the K rows nearest to the query by cosine; "random": a seeded draw per query.
    """
    n = features.shape[0]
    if method not in ("similar", "random"):
        raise LeverError(f"pool method {method!r} is not known", hint="use similar or random")
    if not 1 <= k < n:
        raise LeverError(f"pool size {k} does not fit {n} train items", hint=f"use 1..{n - 1}")
    if queries is None or queries >= n:
        rows = torch.arange(n)
    elif queries < 1:
        raise LeverError(f"queries = {queries} is not valid", hint="use at least 1")
    else:
        rows = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:queries].sort().values
    if method == "similar":
        pools = similar_pools(features[rows], features, k, exclude=rows)
    else:
        pools = random_pools(rows.tolist(), n, k, seed, exclude=rows)
    return {str(q): p for q, p in zip(rows.tolist(), pools.tolist())}


def write_pools(path: Path, pools: dict[str, list[int]]) -> None:
    """The pools as the original's sampler cache (plain JSON, no other keys), written atomically."""
    write_json(path, pools)


def read_pools(path: Path, n_train: int) -> dict[int, list[int]]:
    """A pools file (lever's or the original's sampler cache) checked against `n_train` items; sorted by query row.

    Keys starting with "_" are ignored. Each pool: distinct rows in 0..n_train-1, without the query, all of one size.
    """
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LeverError(f"pools file {path} cannot be read: {e}", hint="make one with `lever data pools`") from None
    if not isinstance(raw, dict):
        raise LeverError(f"pools file {path}: expected an object {{query row: [train rows]}}")
    out: dict[int, list[int]] = {}
    sizes = set()
    for key, pool in raw.items():
        if key.startswith("_"):
            continue
        where = f"pools file {path}: query {key!r}"
        if not key.isdigit() or not isinstance(pool, list) or not all(isinstance(x, int) for x in pool):
            raise LeverError(f"{where}: expected a train row as key and a list of train rows")
        q = int(key)
        bad = [x for x in pool if not 0 <= x < n_train]
        if q >= n_train or bad:
            raise LeverError(f"{where}: row {bad[0] if bad else q} is outside the {n_train} train items")
        if len(set(pool)) != len(pool) or q in pool:
            raise LeverError(
                f"{where}: a pool must hold distinct rows and never the query itself",
                hint="rebuild it with `lever data pools`",
            )
        sizes.add(len(pool))
        out[q] = pool
    if not out or len(sizes) > 1:
        raise LeverError(f"pools file {path}: {'no pools' if not out else f'pools of several sizes {sorted(sizes)}'}")
    return dict(sorted(out.items()))
