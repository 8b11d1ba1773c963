"""The reports the commands print, each assembled here from the stored runs: `lever compare`, the table at the end of
`lever run`, the family table of `lever sweep` (all `Comparison`s, `lever.report.tables`), and the numbers a figure
draws (`shot_points`). `lever leaderboard`'s is `lever.report.leaderboard.load_leaderboard`. The CLI parses, calls
one of these, and renders what it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lever.errors import DamagedState, LeverError

from .breakdown import check_by, type_views
from .results import PlanRuns, named_plans, plan_runs, rescore_plan, test_note
from .significance import N_RESAMPLES
from .tables import AVG, Comparison, build_comparison


def load_comparison(
    plans: list[str],
    baseline: str,
    root: Path,
    plans_dir: Path,
    split: str = "val",
    *,
    metric: str | None = None,
    n_resamples: int = N_RESAMPLES,
    progress: Callable[[int, int], None] | None = None,
) -> Comparison:
    """`lever compare`: the plans `plans` name (names, files, plan@HASH) against `baseline`, re-scored with `metric`
    when given. A damaged plan is a marked column (the file and its repair); a damaged baseline is an error.
    `progress(done, total)` hears of each paired test."""
    base, others = _compared(plans, baseline, root, plans_dir, metric)
    return _comparison(others, base, split, root, metric, n_resamples, progress)


def load_comparisons_by(
    plans: list[str],
    baseline: str,
    root: Path,
    plans_dir: Path,
    by: str,
    split: str = "val",
    *,
    metric: str | None = None,
    n_resamples: int = N_RESAMPLES,
) -> dict[str, Comparison]:
    """`lever compare --by answer_type`: `load_comparison` once per type of `by`, every plan restricted to that
    type's questions (`lever.report.breakdown.type_views`), so each table's intervals and tests are the type's."""
    check_by(by)
    base, others = _compared(plans, baseline, root, plans_dir, metric)
    views = type_views([base, *others], split, by)
    return {t: _comparison(o, b, split, root, metric, n_resamples) for t, (b, *o) in views.items()}


def _compared(
    plans: list[str], baseline: str, root: Path, plans_dir: Path, metric: str | None
) -> tuple[PlanRuns, list[PlanRuns]]:
    """The baseline and the other plans of a comparison, loaded and re-scored with `metric` when given."""
    base, *others = named_plans([baseline, *plans], root, plans_dir)
    if (base.missing or "").startswith("damaged"):
        raise DamagedState(f"baseline {base.name}: {base.missing}", hint=base.command)
    others = [p for p in others if not (p.name == base.name and p.spec_hash == base.spec_hash)]
    named = others or [base]  # `lever compare baseline`: the baseline is the plan named
    if all(pr.missing for pr in named):  # no delta to show: a table of the baseline alone would exit 0
        gaps = "; ".join(f"{pr.name}: {pr.missing}" for pr in (base, *others) if pr.missing)
        hint = base.command if base.missing else named[0].command
        raise LeverError(f"no plan named has an evaluated run to compare ({gaps})", hint=hint)
    if metric is not None:
        for pr in (base, *others):
            if pr.missing is None:
                rescore_plan(pr, metric)
    return base, others


def _comparison(
    others: list[PlanRuns],
    base: PlanRuns,
    split: str,
    root: Path,
    metric: str | None,
    n_resamples: int,
    progress: Callable[[int, int], None] | None = None,
) -> Comparison:
    cmp = build_comparison(others, base, split=split, n_resamples=n_resamples, metric=metric, progress=progress)
    if split == "test":
        cmp.notes.append(test_note([c.name for c in cmp.plans], root))
    return cmp


@dataclass
class RunTables:
    """What `lever run` shows at its end: one comparison per split, the plans and baseline they were built from (the
    shot-curve figures draw them), or why there is no table."""

    tables: list[Comparison]
    plans: list[PlanRuns]
    base: PlanRuns | None
    why: str | None = None


def run_comparisons(
    plans: list[tuple[str, str, list[str]]], base_name: str, base_hash: str | None, root: Path, plans_dir: Path
) -> RunTables:
    """The table at the end of `lever run`: each (plan name, spec hash, eval splits) against the baseline (the one
    named or run in the command, else the baseline plan file's runs), one comparison per split the baseline is
    evaluated on; or why there is none."""
    base = plan_runs(base_name, root, plans_dir, base_hash)
    if base.missing:
        return RunTables([], [], None, f"no comparison table: {base_name} {base.missing} ({base.command})")
    mine = [plan_runs(name, root, plans_dir, spec_hash) for name, spec_hash, _ in plans]
    out = []
    for split in dict.fromkeys(sp for _, _, splits in plans for sp in splits):
        if any(split in r.splits() for r in base.runs):  # a split the baseline is not evaluated on has no deltas
            cmp = build_comparison(mine, base, split=split)
            if split == "test":  # how often these plans' test results were computed, beside them
                cmp.notes.append(test_note([c.name for c in cmp.plans], root))
            out.append(cmp)
    return RunTables(out, mine, base)


def sweep_comparison(
    members: list[tuple[str, str, str]], seeds: list[int], root: Path, plans_dir: Path, split: str
) -> Comparison:
    """`lever sweep`'s family table: every derived plan (name, its plan's name, spec hash; the base plan first)
    against the base plan, on the sweep's seeds."""
    columns: list[PlanRuns] = []
    for name, plan, spec_hash in members:
        pr = plan_runs(plan, root, plans_dir, spec_hash)
        pr.name = name
        pr.runs = [r for r in pr.runs if r.seed in seeds]
        columns.append(pr)
    return build_comparison(columns[1:], columns[0], split=split)


@dataclass
class ShotPoint:
    """One plan at one shot count (or the average, shots None) as a figure draws it: the numbers the tables print."""

    plan: str
    shots: int | None  # None: the average over the shot counts with demonstrations
    accuracy: float | None  # percent, mean over seeds
    lo: float | None  # 95% interval of the accuracy (over questions; over seeds and questions with two or more)
    hi: float | None
    n_seeds: int
    delta: float | None = None  # points vs the baseline (None for the baseline itself)
    delta_lo: float | None = None  # 95% interval of delta
    delta_hi: float | None = None
    p_holm: float | None = None  # Holm-adjusted p of delta over its family (the table's footnote names it)
    interval: str | None = None  # what the delta's interval resamples


def shot_points(cmp: Comparison) -> list[ShotPoint]:
    """Per plan and row of a comparison: accuracy with its interval, and delta with its interval and adjusted p."""
    out = []
    for row in cmp.rows:
        for col in cmp.plans:
            c = row.cells[col.name]
            out.append(
                ShotPoint(
                    col.name,
                    None if row.label == AVG else int(row.label),
                    c.accuracy,
                    c.acc_lo,
                    c.acc_hi,
                    c.n_seeds,
                    c.delta,
                    c.lo,
                    c.hi,
                    c.p_holm,
                    c.interval,
                )  # fmt: skip
            )
    return out
