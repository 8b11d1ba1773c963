"""The per-question matrix: where stored results become aligned numbers, once, for every report.

A value is keyed by (dataset, split, question id, shot count, seed). `question_matrix` gives one plan's values
on one split and shot set: ids [n] (sorted), values [seeds, n], the seed numbers; averaged over the shot set when it
holds several (the mean row / column), on the questions every seed answered at every shot count. `Source` is the
dataset (and, on the bundled benchmark, the simulated world) the questions come from: `pair` sets matrices of one
source side by side on the questions all of them answered, and refuses what cannot be paired.

`lever compare`, `lever run`'s and `lever sweep`'s tables (`lever.report.tables`) and `lever leaderboard`
(`lever.report.leaderboard`) read their numbers through here. A breakdown (by answer type, say) is a `values`
function that leaves the rows outside the group NaN.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lever.errors import LeverError
from lever.spec.workspace import DEFAULT_DATASET

from .results import PlanRuns, QuestionResults, RunData


@dataclass(frozen=True)
class Source:
    """Where a run's questions come from: question ids of two sources are not the same questions."""

    dataset: str  # data.dataset
    world: str | None = None  # the bundled benchmark's world (its generator settings); None on a real dataset

    def __str__(self) -> str:
        return f"{self.dataset} (benchmark world {self.world})" if self.world else self.dataset


def run_source(run: RunData) -> Source:
    """The dataset of a run's spec (okvqa when left at the default) and the world its evaluation recorded."""
    dataset = ((run.spec or {}).get("data") or {}).get("dataset", DEFAULT_DATASET)
    inputs = (run.summary or {}).get("inputs") or {}
    world = inputs.get("world") if inputs.get("backend") == "sim" else None
    return Source(str(dataset), str(world) if world else None)


def plan_source(pr: PlanRuns) -> Source | None:
    """The one source of a plan's evaluated runs (None when none is evaluated); seeds of two sources are an error."""
    found = sorted({run_source(r) for r in pr.evaluated_runs}, key=str)
    if len(found) > 1:
        raise LeverError(
            f"{pr.name}: its seed runs answered questions of different sources ({'; '.join(map(str, found))})",
            hint="evaluate every seed in one workspace (lever evaluate PLAN), or name one spec hash as plan@HASH",
        )
    return found[0] if found else None


def check_sources(plans: list[PlanRuns]) -> Source | None:
    """The one source of `plans`; an error naming each plan's when they differ (another dataset or another simulated
    world: the same question id is another question)."""
    by = {pr.name: s for pr in plans if (s := plan_source(pr)) is not None}
    found = sorted(set(by.values()), key=str)
    if len(found) > 1:
        names = "; ".join(f"{s}: {', '.join(k for k, v in by.items() if v == s)}" for s in found)
        raise LeverError(
            f"these plans answered questions of different datasets or benchmark worlds ({names}); they cannot be paired",
            hint="compare plans of one dataset and world (leaderboard: --dataset picks one dataset)",
        )
    return found[0] if found else None


def accuracy(qr: QuestionResults) -> np.ndarray:
    return qr.accuracy


@dataclass
class QuestionMatrix:
    """One plan's per-question values on one split and shot set: values[s, i] is seed seeds[s] on question ids[i]."""

    ids: np.ndarray  # [n] int64, sorted
    values: np.ndarray  # [seeds, n] float64; NaN: not defined for that seed and question (a `values` function's gap)
    seeds: list[int | None]

    @property
    def n(self) -> int:
        return int(self.ids.shape[0])

    def restrict(self, ids: np.ndarray) -> QuestionMatrix:
        """The same values on the questions `ids` (a subset of self.ids)."""
        keep = np.isin(self.ids, ids)
        return QuestionMatrix(self.ids[keep], self.values[:, keep], self.seeds)

    def seed_means(self) -> np.ndarray:
        """[seeds] each seed's mean over the questions, in percent."""
        return self.values.mean(axis=1) * 100.0


def question_matrix(
    pr: PlanRuns,
    split: str,
    shots: list[int],
    values: Callable[[QuestionResults], np.ndarray | None] = accuracy,
) -> QuestionMatrix | None:
    """`values(qr)` per seed, averaged over `shots` (NaN entries left out of the average), on the questions every seed
    answered at every shot count; None when a seed lacks one of the shot counts or `values` gives None."""
    per_seed = []
    for run in pr.evaluated_runs:
        qrs = [run.question_results(split, s) for s in shots]
        if any(q is None or q.n == 0 for q in qrs):
            return None  # why: mixing seeds with and without rows would bias the pairing
        vals = [values(q) for q in qrs]  # type: ignore[arg-type]
        if any(v is None for v in vals):
            return None
        per_seed.append(list(zip(qrs, vals)))
    if not per_seed:
        return None
    ids = per_seed[0][0][0].question_ids
    for seed in per_seed:
        for qr, _ in seed:
            ids = np.intersect1d(ids, qr.question_ids)
    rows = []
    for seed in per_seed:
        stacked = np.stack([v[np.searchsorted(qr.question_ids, ids)] for qr, v in seed])  # [shots, n]
        defined = (~np.isnan(stacked)).sum(axis=0)  # [n]; NaN entries (no demonstration, failed) are left out
        total = np.where(np.isnan(stacked), 0.0, stacked).sum(axis=0)
        rows.append(np.where(defined > 0, total / np.maximum(defined, 1), np.nan))
    return QuestionMatrix(ids, np.stack(rows), [r.seed for r in pr.evaluated_runs])


def pair(mats: dict[str, QuestionMatrix], where: str) -> tuple[dict[str, QuestionMatrix], str | None]:
    """The matrices on the questions all of them answered, and a note giving each one's count when they differ.
    No question in common is an error (exit 2) naming the counts."""
    if not mats:
        return {}, None
    common = None
    for m in mats.values():
        common = m.ids if common is None else np.intersect1d(common, m.ids)
    sizes = ", ".join(f"{k} {m.n}" for k, m in mats.items())
    if common is None or common.size == 0:
        raise LeverError(
            f"{where}: the plans answered no question in common ({sizes})",
            hint="evaluate them on the same questions (eval.questions, eval.splits), or name fewer plans",
        )
    note = None
    if any(m.n != common.size for m in mats.values()):
        note = f"{where}: plans answered different questions ({sizes}); every plan is scored on the {common.size} all of them answered"
    return {k: m.restrict(common) for k, m in mats.items()}, note
