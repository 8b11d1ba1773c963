"""The recipe of one run: a plan, a workspace and a seed, worked out once.

`Recipe.build` resolves everything a run's commands need before any of them runs: the stages
(`Plan.stages()`), the dataset (`lever.data.sources`), the data files and their content keys, the evaluation
inputs (checked once: `eval_inputs`), and the run folder. The candidate
data and features are read once per process and content (`Recipe.loaded`), so `lever run A B C`
on one data file reads it once. Preflight, training, evaluation, the table, sweeps and export
all take a Recipe; nothing below works these values out again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from torch import Tensor

from lever.data.candidates import CandidateData
from lever.data.reader import load_candidates
from lever.data.sources import (
    Dataset,
    TrainSources,
    check_feature_rows,
    load_features,
    resolve_dataset,
    resolve_features,
    resolve_train_sources,
)
from lever.errors import LeverError
from lever.eval.rollout import Scoring
from lever.eval.world import EvalInputs, check_eval_files
from lever.keys import file_digest
from lever.model import SelectorBase, build_selector
from lever.runs.layout import RunDir, RunsFolder
from lever.spec import LoadedPlan, Plan, Workspace
from lever.spec.schema import REWARD_METRICS, Stage
from lever.train.plandata import Split, split_data
from lever.train.stage import STAGE_METRICS


@dataclass
class Loaded:
    """A run's training inputs, read and checked: candidate data and features [N_train, d] on CPU."""

    data: CandidateData
    features: Tensor


_LOADED: dict[tuple[str, ...], Loaded] = {}  # by (file, content key) of both inputs; the latest two are kept
LOADS = {"inputs": 0}  # how many times inputs were read from disk (a test checks one `lever run` reads them once)


def load_inputs(sources: TrainSources, inputs: dict[str, str], ws: Workspace, log: Callable[[str], None]) -> Loaded:
    """The candidate data and features of `sources`, read once per process and content."""
    key = (str(sources.candidates), inputs["candidates"], str(sources.features), inputs["features"])
    if key not in _LOADED:
        # every listed sequence: each plan drops the repeats or keeps them (data.duplicates, split_data)
        data = load_candidates(sources.candidates, cache_dir=ws.cache_dir / "candidates", log=log, duplicates="keep")
        features = load_features(sources.features)
        check_feature_rows(data, features, sources.features)
        LOADS["inputs"] += 1
        while len(_LOADED) >= 2:  # `lever run A B C` over two data files keeps both; memory stays bounded
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = Loaded(data, features)
    return _LOADED[key]


def check_select_metric(plan: Plan, where: Path) -> None:
    """Fail before any work when select.metric is not logged by every stage of the plan (a plan without stages
    selects no epoch)."""
    if not plan.stages():
        return
    logged = set.intersection(*(set(STAGE_METRICS[s.kind]) for s in plan.stages()))
    logged |= set(REWARD_METRICS)  # logged by every stage when select.metric names one (lever.eval.rollout)
    if plan.select.metric not in logged:
        raise LeverError(
            f"{where}: select.metric = '{plan.select.metric}' is not logged by every stage of this plan",
            hint=f"choose one of: {', '.join(sorted(logged))}",
        )


@dataclass
class Recipe:
    """One run of a plan: (plan, workspace, seed) with its stages, inputs and run folder, resolved once."""

    lp: LoadedPlan
    ws: Workspace
    seed: int
    stages: list[Stage]  # Plan.stages(): the one order of the stages
    run: RunDir  # <runs>/<plan>/<spec hash>/seed-<seed>
    log: Callable[[str], None] = field(default=print, repr=False)

    @classmethod
    def build(cls, lp: LoadedPlan, ws: Workspace, seed: int, log: Callable[[str], None] = print) -> Recipe:
        """The plan's stages and run folder; conflicts between settings fail here, before any work.
        The data files are resolved on first use (a command refused for another reason generates nothing)."""
        check_select_metric(lp.plan, lp.path)
        return cls(lp, ws, seed, lp.plan.stages(), RunsFolder(ws.runs_dir).run(lp.name, lp.hash, seed), log)

    @cached_property
    def dataset(self) -> Dataset:
        """The plan's dataset (data.dataset) in the workspace: its files per split, candidate data and features."""
        return resolve_dataset(self.ws, self.plan.data.dataset)

    @cached_property
    def eval_inputs(self) -> EvalInputs:
        """The evaluation's dataset, backend and protocol, its files checked (once: preflight and evaluation use these)."""
        return check_eval_files(self.dataset, self.plan.eval)

    @cached_property
    def sources(self) -> TrainSources:
        """The candidate data and features files (the bundled benchmark is generated here the first time)."""
        data = self.plan.data
        return resolve_train_sources(self.dataset, data.candidates, data.features, self.log)

    @cached_property
    def inputs(self) -> dict[str, str]:
        """The content keys of the data files: part of every stage key, recorded in the run's provenance (a plan
        that trains nothing reads no candidate data: only its features)."""
        memo = self.ws.digest_memo
        if not self.trains:
            return {"features": file_digest(self.features_file, memo)[:16]}
        return {
            "candidates": file_digest(self.sources.candidates, memo)[:16],
            "features": file_digest(self.sources.features, memo)[:16],
        }

    @property
    def trains(self) -> bool:
        """Whether the plan trains a selector (`selector.kind = "learned"`); a baseline selector has no stage."""
        return self.plan.selector.trains

    @cached_property
    def features_file(self) -> Path:
        """The train features file (data.features); a plan that trains nothing resolves no candidate data."""
        if self.trains:
            return self.sources.features
        return resolve_features(self.dataset, self.plan.data.features, self.log)

    @cached_property
    def train_features(self) -> Tensor:
        """The train features [N_train, d] (read once with the candidate data when the plan trains)."""
        return self.loaded.features if self.trains else load_features(self.features_file)

    @property
    def plan(self) -> Plan:
        return self.lp.plan

    @property
    def name(self) -> str:
        return self.lp.name

    @cached_property
    def loaded(self) -> Loaded:
        return load_inputs(self.sources, self.inputs, self.ws, self.log)

    @cached_property
    def split(self) -> Split:
        """The plan's filtered data, split into training and validation queries."""
        split = split_data(self.loaded.data, self.plan)
        if split.train.num_queries == 0:
            raise LeverError(f"{self.lp.path}: the plan's data filter leaves no training queries ({split.report})")
        return split

    @cached_property
    def scoring(self) -> Scoring:
        """How training asks the VLM (val/reward, refresh rounds, online GRPO): the workspace's backend behind the
        reward cache, the plan's protocol, metric and reward (built once; the VLM loads on its first answer)."""
        from lever.eval.rollout import build_scoring

        plan = self.plan
        return build_scoring(self.dataset, plan.eval, plan.reward, plan.device, self.log)

    def model(self, device: torch.device | str = "cpu") -> SelectorBase:
        """The plan's selector (`model.arch`), freshly initialised (seed the RNG first)."""
        return build_selector(self.loaded.features.shape[1], self.plan.model).to(device)

    def stale(self) -> list[str]:
        """The inputs that changed since the run was trained ([] when none did, or it never trained)."""
        recorded = (self.run.provenance() or {}).get("inputs")
        if not isinstance(recorded, dict):
            return []
        return [k for k in self.inputs if recorded.get(k) != self.inputs[k]]


def recipes(plans: list[LoadedPlan], ws: Workspace, seed: int | None, log: Callable[[str], None] = print) -> list[Recipe]:
    """One recipe per plan and seed (`seed`, else each of the plan's seeds), in order."""
    return [Recipe.build(lp, ws, s, log) for lp in plans for s in ([seed] if seed is not None else lp.plan.seeds)]
