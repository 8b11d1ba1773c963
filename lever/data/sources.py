"""Where a plan's named data lives: a workspace's dataset (its files per split, its candidate data and features),
or the bundled benchmark generated on demand.

The one module that answers it. `resolve_dataset(ws, name)` is the one place a dataset name is looked up (and where the
bundled benchmark's single dataset and the default dataset's older keys are decided); the recipe holds its plan's
`Dataset`, the data commands resolve theirs once, and every function below takes the `Dataset`, never a name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lever.data.candidates import CandidateData
from lever.errors import LeverError
from lever.io import is_input_file, stat_input
from lever.keys import file_digest
from lever.spec import Workspace
from lever.spec.workspace import DEFAULT_DATASET, DatasetPaths, OKVQAPaths

# Candidate-data names the bundled benchmark provides. `k64` is the same ragged file as
# `main` (the log's k64_v3 data); `balanced` drops its uniform-reward groups.
BENCH_CANDIDATES = ("main", "k64", "balanced")
BENCH_SPLITS = ("train", "val")  # the bundled benchmark's splits (items_<split>.json)


@dataclass
class TrainSources:
    candidates: Path
    features: Path


@dataclass(frozen=True)
class Dataset:
    """One dataset of a workspace, resolved once by `resolve_dataset(ws, name)`: its files per split, its candidate-data
    and feature tables. The bundled benchmark is one simulated dataset, generated on first use (`bench`)."""

    name: str
    table: str  # where it is configured, for messages: "okvqa" or "datasets.vqav2"
    ws: Workspace
    files: OKVQAPaths | DatasetPaths | None  # its files; None: the bundled benchmark, or a workspace that names none
    candidates: dict[str, str]
    features: dict[str, str]

    @property
    def is_bundled(self) -> bool:
        return self.ws.is_bundled

    @property
    def is_default(self) -> bool:
        """The top-level tables' dataset, whose keys were made before datasets had names."""
        return self.name == DEFAULT_DATASET

    def named(self) -> dict[str, str]:
        """What a key adds for this dataset: its name, except for the default one (its keys stay those made
        before datasets had names)."""
        return {} if self.is_default else {"dataset": self.name}

    def cache(self, kind: str) -> Path:
        """The dataset's folder of the workspace cache for `kind` (e.g. "clip")."""
        return self.ws.cache_dir / kind if self.is_default else self.ws.cache_dir / kind / self.name

    @property
    def layout(self) -> str:
        """ "bench" (the bundled benchmark's item files), "vqa" (questions / annotations JSON and image folders) or
        "parquet" (the Hugging Face layout: rows with the image bytes)."""
        if self.is_bundled:
            return "bench"
        return self.files.layout if isinstance(self.files, DatasetPaths) else "vqa"

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits the dataset has files for, in the order the workspace lists them (train first)."""
        if self.is_bundled:
            return BENCH_SPLITS
        if self.files is None:
            return ()
        if self.layout == "parquet":
            return tuple(self.files.parquet())  # type: ignore[union-attr]
        return tuple(dict.fromkeys(k.rsplit("_", 1)[0] for k in self.files.files()))

    def inputs(self) -> dict[str, str]:
        """Every file or folder of the dataset by workspace key (train_questions, ..., or train_parquet.0, ...);
        a LeverError when the workspace names none."""
        if self.files is None:
            raise LeverError(
                f"workspace {self.ws.source} has no [{self.table}] table: the dataset's question, annotation and "
                "image files are needed",
                hint="name them in the workspace (docs/datasets.md)",
            )
        if self.layout == "parquet":
            return {f"{split}_parquet.{i}": str(f) for split in self.splits for i, f in enumerate(self.parquet_files(split))}
        return self.files.files()

    def split_files(self, split: str) -> dict[str, Path]:
        """{"questions", "annotations", "images"} of `split` in the VQA layout, resolved against the workspace."""
        self._known(split)
        o = self.inputs()
        return {kind: self.ws.path(o[f"{split}_{kind}"]) for kind in ("questions", "annotations", "images")}

    def parquet_files(self, split: str) -> list[Path]:
        """The parquet files of `split`: each entry a file, a glob pattern or a folder (its *.parquet files), both
        expanded sorted; a pattern or folder that holds none is an error naming it."""
        self._known(split)
        out: list[Path] = []
        for pattern in self.files.parquet()[split]:  # type: ignore[union-attr]
            path = self.ws.path(pattern)
            if any(c in pattern for c in "*?[") or path.is_dir():
                found = sorted(path.glob("*.parquet") if path.is_dir() else path.parent.glob(path.name))
                if not found:
                    raise LeverError(
                        f"workspace {self.ws.source}: {self.table}.{split}_parquet {pattern!r} matches no parquet file"
                    )
                out.extend(found)
            else:
                out.append(path)
        return out

    def test_definition(self) -> dict[str, Any]:
        """What makes a VQA-format dataset's held-out `test` split (its table's test_* keys), for the evaluation key:
        the user's list by its digest, or the seeded draw's seed, size and start."""
        t = self.inputs() and self.files  # a workspace naming no files is an error here
        if t.test_questions:  # type: ignore[union-attr]
            path = self.ws.path(t.test_questions)  # type: ignore[union-attr]
            if not path.is_file():
                raise LeverError(
                    f"workspace {self.ws.source}: {self.table}.test_questions = {t.test_questions!r} does not exist",  # type: ignore[union-attr]
                    hint="a JSON list of val-split question ids, or leave it out for the seeded draw (docs/datasets.md)",
                )
            return {"questions": file_digest(path, self.ws.digest_memo)[:16]}
        return {"seed": t.test_seed, "size": t.test_size, "after": t.test_after}  # type: ignore[union-attr]

    def _known(self, split: str) -> None:
        if split not in self.splits:
            raise LeverError(f"split {split!r} is not known", hint=f"use {' or '.join(self.splits)}")

    def bench(self, log: Callable[[str], None] = print):
        """The bundled benchmark's files (generated the first time)."""
        return bench_paths(self.ws, log)


def resolve_dataset(ws: Workspace, name: str = DEFAULT_DATASET) -> Dataset:
    """The workspace's dataset `name`: the top-level tables for 'okvqa', else `[datasets.NAME]` (an unknown name,
    or another name than okvqa on the bundled benchmark, is an error naming it)."""
    if name == DEFAULT_DATASET:
        return Dataset(name, "okvqa", ws, ws.okvqa, ws.candidates, ws.features)
    if ws.is_bundled:
        raise LeverError(
            f"data.dataset = '{name}': the bundled benchmark is one simulated dataset, not '{name}'",
            hint=f"configure a workspace with a [datasets.{name}] table (docs/datasets.md)",
        )
    if name not in ws.datasets:
        known = ", ".join([DEFAULT_DATASET, *sorted(ws.datasets)])
        raise LeverError(
            f"dataset '{name}' is not in the workspace ({ws.source})",
            hint=f"datasets defined: {known}; add a [datasets.{name}] table (docs/datasets.md)",
        )
    d = ws.datasets[name]
    return Dataset(name, f"datasets.{name}", ws, d, d.candidates, d.features)


def bench_config(ws: Workspace) -> Any:
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


def resolve_train_sources(ds: Dataset, candidates: str, features: str, log: Callable[[str], None] = print) -> TrainSources:
    """Map the plan's data.candidates / data.features to files, looked up in the tables of its dataset."""
    ws = ds.ws
    if not ws.is_bundled:
        return TrainSources(_lookup("candidates", candidates, ds.candidates, ws), _lookup("features", features, ds.features, ws))
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


def resolve_features(ds: Dataset, features: str, log: Callable[[str], None] = print) -> Path:
    """Map the plan's data.features to a file, without the candidate data (a plan that trains nothing), looked up
    in the tables of its dataset."""
    ws = ds.ws
    if not ws.is_bundled:
        return _lookup("features", features, ds.features, ws)
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
