"""Where a plan's named data lives: the workspace's files, or the bundled benchmark generated on demand."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lever.data.candidates import CandidateData
from lever.errors import LeverError
from lever.io import is_input_file, stat_input
from lever.spec import Workspace
from lever.spec.workspace import DEFAULT_DATASET

# Candidate-data names the bundled benchmark provides. `k64` is the same ragged file as
# `main` (the log's k64_v3 data); `balanced` drops its uniform-reward groups.
BENCH_CANDIDATES = ("main", "k64", "balanced")


@dataclass
class TrainSources:
    candidates: Path
    features: Path


def bench_config(ws: Workspace):
    """The bundled benchmark's settings of this workspace (its `[bench]` table over the defaults)."""
    from lever.bench import BenchConfig

    return BenchConfig.parse(ws.bench, where=f"{ws.source}: [bench]") if ws.bench else BenchConfig()


def bench_paths(ws: Workspace, log: Callable[[str], None] = print):
    """Generate (once) and return the bundled benchmark of this workspace's settings."""
    from lever.bench import ensure_bench

    return ensure_bench(ws.cache_dir, bench_config(ws), log=log)


def _balanced(paths, log: Callable[[str], None]) -> Path:
    """The benchmark's `balanced` file: its main file without uniform-reward groups (made once)."""
    from lever.data.balance import BalanceOptions, balance_file

    out = Path(paths.root) / "candidates_balanced.json"
    if not out.is_file():
        balance_file(Path(paths.candidates), out, BalanceOptions(drop_uniform=True), log=log)
    return out


def _lookup(kind: str, ref: str, table: dict[str, str], ws: Workspace) -> Path:
    if ref in table:
        return ws.path(table[ref])
    path = ws.path(ref)
    if path.suffix and stat_input(path, f"{kind} file") is not None:
        return path
    names = ", ".join(sorted(table)) or "(none)"
    raise LeverError(
        f"data.{kind} = '{ref}': not a name in the workspace ({ws.source}) nor an existing file", hint=f"names defined: {names}"
    )


def resolve_train_sources(
    ws: Workspace, candidates: str, features: str, log: Callable[[str], None] = print, dataset: str = DEFAULT_DATASET
) -> TrainSources:
    """Map the plan's data.candidates / data.features to files, looked up in the tables of its data.dataset."""
    if not ws.is_bundled:
        ds = ws.dataset(dataset)
        return TrainSources(_lookup("candidates", candidates, ds.candidates, ws), _lookup("features", features, ds.features, ws))
    ws.dataset(dataset)  # the bundled benchmark has one dataset: another name is an error
    direct = Path(candidates)
    if direct.suffix == ".json" and is_input_file(direct, "candidate-data file"):
        cand = direct
        paths = bench_paths(ws, log)
    else:
        if candidates not in BENCH_CANDIDATES:
            raise LeverError(
                f"data.candidates = '{candidates}': the bundled benchmark provides {', '.join(BENCH_CANDIDATES)}",
                hint="or give a path to a candidate-data JSON file, or configure a workspace (lever.toml)",
            )
        paths = bench_paths(ws, log)
        cand = _balanced(paths, log) if candidates == "balanced" else Path(paths.candidates)
    if features == "main":
        feat = Path(paths.features)
    elif is_input_file(Path(features), "features file"):
        feat = Path(features)
    else:
        raise LeverError(f"data.features = '{features}': the bundled benchmark provides 'main'")
    return TrainSources(cand, feat)


def resolve_features(ws: Workspace, features: str, log: Callable[[str], None] = print, dataset: str = DEFAULT_DATASET) -> Path:
    """Map the plan's data.features to a file, without the candidate data (a plan that trains nothing), looked up
    in the tables of its data.dataset."""
    if not ws.is_bundled:
        return _lookup("features", features, ws.dataset(dataset).features, ws)
    ws.dataset(dataset)  # the bundled benchmark has one dataset: another name is an error
    if features == "main":
        return Path(bench_paths(ws, log).features)
    if is_input_file(Path(features), "features file"):
        return Path(features)
    raise LeverError(f"data.features = '{features}': the bundled benchmark provides 'main'")


def load_features(path: Path) -> torch.Tensor:
    """One float tensor [N_train, d] saved with torch.save (tensors only are unpickled)."""
    if not is_input_file(path, "features file"):
        raise LeverError(f"features file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise LeverError(f"features file {path} could not be read: {err}") from None
    if isinstance(obj, dict) and len(obj) == 1:
        obj = next(iter(obj.values()))
    if not isinstance(obj, torch.Tensor) or obj.dim() != 2 or not obj.is_floating_point():
        shape = tuple(obj.shape) if isinstance(obj, torch.Tensor) else type(obj).__name__
        raise LeverError(f"features file {path}: expected one float tensor [N_train, d], got {shape}")
    if not torch.isfinite(obj).all():
        raise LeverError(f"features file {path}: contains NaN or infinite values")
    return obj.float()


def check_feature_rows(data: CandidateData, features: torch.Tensor, path: Path) -> None:
    """The features must hold a row for every train index the candidate data refers to."""
    need = int(max(int(data.query_ids.max()), int(data.pools.max()))) + 1
    if features.shape[0] < need:
        raise LeverError(
            f"features file {path} has {features.shape[0]} rows, but the candidate data refers to train index {need - 1}",
            hint="the features must hold one row per train item (row i = train item i)",
        )
