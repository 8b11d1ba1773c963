"""The leaderboard: plans x shot counts, each cell the accuracy with its 95% interval, and which plan is best.

Per column (a shot count, or the mean over the shot counts with demonstrations), the plan with the highest
accuracy is tested against every other plan with the paired sign-flip test over the same questions (what
`lever compare` uses). The m = plans - 1 p-values are Holm-corrected (`significance.holm`). When every
corrected p is below alpha, the best plan is marked `best`: it beats each of the others. Otherwise the
plans not significantly below the best, the best included, are marked `tied`: the data cannot tell them
apart. A column with one plan marks nothing.

Plans answered over different question sets (another `eval.questions`, a failed evaluation redone with
other settings) are compared on the questions all of them answered in that column, and a note says so;
with no question in common the leaderboard refuses.

Every number comes from the runs' stored per-question results (`lever.report.results`); seeds are
averaged per question, as `lever compare` does.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lever.errors import LeverError
from lever.runs.layout import RunsFolder
from lever.spec.load import plan_files, plan_name
from lever.spec.workspace import DEFAULT_DATASET

from .breakdown import check_by, type_views
from .copying import copy_flags, lacks_texts, percent, vote_accuracy
from .export import _clean, _csv_value, _md_table, latex_escape
from .matrix import QuestionMatrix, check_sources, pair, question_matrix
from .results import PlanRuns, damaged_ok, named_plans, rescore_plan, test_note
from .significance import ALPHA, MAX_RESAMPLES, N_RESAMPLES, accuracy_interval, holm, near, paired_test
from .tables import fixed, plain_grid, split_columns

MEAN = "mean"
FAMILIES = ("column", "table")  # what one Holm correction spans: each column's tests, or every column's at once


@dataclass
class Entry:
    """One plan in one column."""

    accuracy: float  # percent, over the column's questions, seeds averaged per question
    lo: float  # 95% percentile bootstrap interval of the accuracy, over questions
    hi: float
    n_questions: int
    n_seeds: int
    std: float | None = None  # of the seeds' accuracies (sample std); None with one seed
    p: float | None = None  # paired sign-flip test against the column's best (None for the best itself)
    p_holm: float | None = None  # the same, Holm-corrected over its family (the column's m tests, or the table's)
    mark: str = ""  # "best" | "tied" | ""
    copy_rate: float | None = None  # percent of answers equal to a chosen demonstration's answer
    majority_vote: float | None = None  # percent: VQA accuracy of a majority vote over the demonstrations' answers
    interval: str = "questions"  # what lo, hi resample: "questions" (one seed) or "seeds and questions"
    resamples: int | None = None  # drawn for the test against the best (more where it was near alpha)
    exact: bool = False  # its p came from every sign vector
    borderline: bool = False  # its (adjusted) p within Monte Carlo error of alpha at the most resamples


@dataclass
class Column:
    label: str  # "1", "2", ... or "mean"
    shots: list[int]  # the shot counts it averages (one for a shot column)
    entries: dict[str, Entry]  # plan -> entry; a plan not evaluated at these shots is absent
    best: str | None = None
    n_questions: int = 0  # the questions every plan of the column answered
    note: str | None = None  # set when plans answered different questions


@dataclass
class Row:
    name: str
    spec_hash: str | None
    overrides: list[str] = field(default_factory=list)
    n_seeds: int = 0
    n_planned: int = 0  # seeds the plan names (a run in progress has fewer evaluated)
    missing: str | None = None  # why the row has no numbers (a damaged run: the file and the repair)
    failed: int = 0  # failed answers (scored 0) on the split, over seeds and shot counts
    answered: int = 0


@dataclass
class Leaderboard:
    split: str
    plans: list[Row]
    columns: list[Column]
    alpha: float
    metric: str | None  # the metric the stored answers were scored again with (None: as evaluated)
    notes: list[str] = field(default_factory=list)
    footnote: str = ""
    family: str = "column"  # what one Holm correction spans (FAMILIES)
    source: str | None = None  # the dataset (and benchmark world) every plan answered


# ---------------------------------------------------------------- which plans


def evaluated_plans(root: Path, plans_dir: Path, split: str) -> tuple[list[PlanRuns], list[str]]:
    """Every plan (a file in the plans folder, or runs in the runs folder) whose current runs are evaluated on
    `split`, and one line for each plan with runs that are not shown (why, and how to name them)."""
    names = sorted({plan_name(p, plans_dir) for p in plan_files(plans_dir)} | set(RunsFolder(root).plans()))
    shown, skipped = [], []
    for name in names:
        if not RunsFolder(root).hashes(name):
            continue  # a plan file never run: nothing to say
        pr = damaged_ok(name, root, plans_dir)
        if (pr.missing is None and any(r.shots(split) for r in pr.evaluated_runs)) or is_damaged(pr):
            shown.append(pr)  # a damaged plan is one marked row
        else:
            why = pr.missing or f"not evaluated on {split}"
            skipped.append(f"{name}: {why} ({pr.command})" if pr.command else f"{name}: {why}")
    return shown, skipped


def check_evaluated(plans: list[PlanRuns], split: str) -> None:
    """Raise when a named plan has nothing to show on `split`: a leaderboard with holes is not one a paper prints."""
    bad = []
    for pr in plans:
        if is_damaged(pr):
            continue  # one marked row
        if pr.missing is not None:
            bad.append(f"{pr.name}: {pr.missing}" + (f" — {pr.command}" if pr.command else ""))
        elif not any(r.shots(split) for r in pr.evaluated_runs):
            bad.append(f"{pr.name}: not evaluated on {split} (the plan's eval.splits)")
    if bad:
        raise LeverError("nothing to show for " + "; ".join(bad), hint="run what each names, or leave the plan out")


def leaderboard_plans(refs: list[str], root: Path, plans_dir: Path, split: str) -> tuple[list[PlanRuns], list[str]]:
    """The plans a leaderboard ranks and its notes: `refs` (names, files, plan@HASH; a plan named twice is one row),
    each known and evaluated on `split`, else an error; with no refs, every evaluated plan (`evaluated_plans`)."""
    if not refs:
        found, skipped = evaluated_plans(root, plans_dir, split)
        if not any(not is_damaged(pr) for pr in found):
            raise LeverError(
                f"no plan under {root} has evaluated runs of its plan file as it is now, on {split}"
                + "".join(f"\n  {line}" for line in skipped),
                hint="run one (lever run plans/plan5.toml), or name runs of another spec hash as plan@HASH "
                "(lever runs lists them)",
            )
        return found, [f"not shown: {line}" for line in skipped]
    found = named_plans(refs, root, plans_dir)
    check_evaluated(found, split)
    return found, []


def is_damaged(pr: PlanRuns) -> bool:
    return (pr.missing or "").startswith("damaged")


def dataset_of(pr: PlanRuns) -> str:
    """The dataset a plan's runs answered (its data.dataset; okvqa when the spec leaves it at the default)."""
    return ((pr.spec or {}).get("data") or {}).get("dataset", DEFAULT_DATASET)


def one_dataset(plans: list[PlanRuns], name: str | None, named: bool) -> tuple[list[PlanRuns], list[str]]:
    """The plans of one dataset, and a note per plan left out: question ids of two datasets are not the same
    questions, so a leaderboard never pairs them. `name` None: the plans' one dataset (an error when they span
    several). Plans the user named (`named`) that are of another dataset are an error, not left out. A damaged plan
    (its dataset unknown) stays, as its marked row."""
    damaged = [pr for pr in plans if is_damaged(pr)]
    kept, notes = _one_dataset([pr for pr in plans if not is_damaged(pr)], name, named)
    return kept + damaged, notes


def _one_dataset(plans: list[PlanRuns], name: str | None, named: bool) -> tuple[list[PlanRuns], list[str]]:
    found = sorted({dataset_of(pr) for pr in plans})
    if name is None:
        if len(found) > 1:
            by = "; ".join(f"{d}: {', '.join(pr.name for pr in plans if dataset_of(pr) == d)}" for d in found)
            raise LeverError(
                f"these plans answered questions of different datasets ({by}); their questions cannot be paired",
                hint=f"rank one dataset at a time: --dataset {found[0]} (or name plans of one dataset)",
            )
        return plans, []
    other = [pr for pr in plans if dataset_of(pr) != name]
    if named and other:
        raise LeverError(
            f"--dataset {name}: {', '.join(f'{pr.name} ({dataset_of(pr)})' for pr in other)} answered another dataset",
            hint="leave those plans out, or drop --dataset",
        )
    kept = [pr for pr in plans if dataset_of(pr) == name]
    if not kept:
        raise LeverError(f"--dataset {name}: no evaluated plan answered it", hint=f"datasets with runs: {', '.join(found)}")
    return kept, [f"not shown: {pr.name} (dataset {dataset_of(pr)})" for pr in other]


def load_leaderboard(
    refs: list[str],
    root: Path,
    plans_dir: Path,
    split: str = "val",
    *,
    metric: str | None = None,
    alpha: float = ALPHA,
    n_resamples: int = N_RESAMPLES,
    only_dataset: str | None = None,
    family: str = "column",
) -> Leaderboard:
    """What `lever leaderboard` shows: the plans (`leaderboard_plans`) of one dataset (`one_dataset`), re-scored
    with `metric` when given; `family` is what one Holm correction spans (FAMILIES)."""
    plans, notes = _ranked(refs, root, plans_dir, split, metric, only_dataset, family)
    return build_leaderboard(plans, split, alpha=alpha, n_resamples=n_resamples, metric=metric, notes=notes, family=family)


def load_leaderboards_by(
    refs: list[str],
    root: Path,
    plans_dir: Path,
    by: str,
    split: str = "val",
    *,
    metric: str | None = None,
    alpha: float = ALPHA,
    n_resamples: int = N_RESAMPLES,
    only_dataset: str | None = None,
    family: str = "column",
) -> dict[str, Leaderboard]:
    """`lever leaderboard --by answer_type`: `load_leaderboard` once per type of `by`, every plan restricted to that
    type's questions (`lever.report.breakdown.type_views`): each cell, interval and test is the type's."""
    check_by(by)
    plans, notes = _ranked(refs, root, plans_dir, split, metric, only_dataset, family)
    return {
        t: build_leaderboard(views, split, alpha=alpha, n_resamples=n_resamples, metric=metric, notes=list(notes), family=family)
        for t, views in type_views(plans, split, by).items()
    }


def _ranked(
    refs: list[str], root: Path, plans_dir: Path, split: str, metric: str | None, only_dataset: str | None, family: str
) -> tuple[list[PlanRuns], list[str]]:
    """The plans a leaderboard ranks, re-scored with `metric` when given, and its notes."""
    if family not in FAMILIES:
        raise LeverError(f"--family {family!r} is not a family", hint=f"use one of: {', '.join(FAMILIES)}")
    plans, notes = leaderboard_plans(refs, root, plans_dir, split)
    plans, left_out = one_dataset(plans, only_dataset, named=bool(refs))
    notes = notes + left_out
    if metric is not None:
        for pr in plans:
            if pr.missing is None:
                rescore_plan(pr, metric)
    if split == "test":
        notes.append(test_note([pr.name for pr in plans], root))
    return plans, notes


# ---------------------------------------------------------------- building


def _restricted_percent(m: QuestionMatrix | None, ids: np.ndarray) -> float | None:
    """Mean over seeds of each seed's percent (defined entries) on the questions `ids`; None when undefined."""
    if m is None:
        return None
    vals = m.restrict(ids).values
    per_seed = [percent(v) for v in vals]
    return float(np.mean(per_seed)) if all(p is not None for p in per_seed) else None


def build_column(
    plans: list[PlanRuns], split: str, label: str, shots: list[int], alpha: float, n_resamples: int, seed: int
) -> Column:
    """One column: each plan's entry on the questions all plans answered (`matrix.pair`), the best, the tests."""
    col = Column(label, shots, {})
    mats = {pr.name: m for pr in plans if (m := question_matrix(pr, split, shots)) is not None}
    if not mats:
        return col
    mats, col.note = pair(mats, f"shots {label}")
    col.n_questions = next(iter(mats.values())).n
    by_name = {pr.name: pr for pr in plans}
    for name, m in mats.items():
        acc, lo, hi = accuracy_interval(m.values, n_resamples=n_resamples, seed=seed)
        seeds = m.seed_means()
        col.entries[name] = Entry(
            accuracy=float(np.mean(seeds)),
            lo=lo,
            hi=hi,
            n_questions=m.n,
            n_seeds=len(m.seeds),
            std=float(np.std(seeds, ddof=1)) if seeds.shape[0] > 1 else None,
            copy_rate=_restricted_percent(question_matrix(by_name[name], split, shots, copy_flags), m.ids),
            majority_vote=_restricted_percent(question_matrix(by_name[name], split, shots, vote_accuracy), m.ids),
            interval="questions" if len(m.seeds) == 1 else "seeds and questions",
        )
    test_column(col, mats, alpha, n_resamples, seed)
    return col


def test_column(col: Column, mats: dict[str, QuestionMatrix], alpha: float, n_resamples: int, seed: int) -> None:
    """The best entry (highest accuracy; the first on an exact tie) and its paired test against every other
    (`significance.paired_test`: over questions, and over seeds where a side has two or more)."""
    if len(col.entries) < 2:
        return
    best = max(col.entries, key=lambda k: col.entries[k].accuracy)  # max keeps the first of equals
    col.best = best
    for k in col.entries:
        if k != best:
            t = paired_test(mats[k].values, mats[best].values, n_resamples, seed, alpha, mats[k].seeds == mats[best].seeds)
            e = col.entries[k]
            e.p, e.resamples, e.exact, e.borderline = t.p, t.resamples, t.exact, t.borderline


def mark(columns: list[Column], alpha: float, family: str) -> None:
    """Holm-adjust the tests against each column's best and mark the columns: per column (`family` "column": m =
    plans - 1 tests each) or over the whole table ("table": every column's tests in one family)."""
    groups = [[c] for c in columns] if family == "column" else [columns]
    for group in groups:
        tested = [(c, k) for c in group for k, e in c.entries.items() if e.p is not None]
        for (c, k), adj in zip(tested, holm([c.entries[k].p for c, k in tested])):  # type: ignore[misc]
            e = c.entries[k]
            e.p_holm = adj
            if not e.exact and e.resamples and near(adj, alpha, e.resamples, scale=len(tested)):
                e.borderline = True
    for c in columns:
        for e in c.entries.values():
            e.mark = ""
        if c.best is not None:
            adjusted = {k: e.p_holm for k, e in c.entries.items() if e.p_holm is not None}
            for k, m in marks(c.best, adjusted, alpha).items():  # type: ignore[arg-type]
                c.entries[k].mark = m


def marks(best: str, p_holm: dict[str, float], alpha: float = ALPHA) -> dict[str, str]:
    """What each plan of a column is marked, from the best plan and the others' Holm-corrected p-values against it.

    Every adjusted p below alpha: {best: "best"}. Otherwise the best and every plan whose adjusted p is not
    below alpha (not significantly worse than the best): "tied".
    """
    tied = [k for k, p in p_holm.items() if not p < alpha]
    if not tied:
        return {best: "best"}
    return {best: "tied", **{k: "tied" for k in tied}}


def mean_shots(plans: list[PlanRuns], split: str) -> list[int]:
    """The shot counts of the mean column: those >= 1 that every plan with demonstrations was evaluated at."""
    sets = [{s for r in pr.evaluated_runs for s in r.shots(split) if s >= 1} for pr in plans]
    sets = [s for s in sets if s]
    return sorted(set.intersection(*sets)) if sets else []


def shots_label(shots: list[int]) -> str:
    """[1, 2, 3, 4] -> "1-4"; [1, 2, 4] -> "1,2,4"."""
    if len(shots) > 2 and shots == list(range(shots[0], shots[-1] + 1)):
        return f"{shots[0]}-{shots[-1]}"
    return ",".join(map(str, shots))


def build_leaderboard(
    plans: list[PlanRuns],
    split: str = "val",
    *,
    alpha: float = ALPHA,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    metric: str | None = None,
    notes: list[str] | None = None,
    family: str = "column",
) -> Leaderboard:
    """The leaderboard of `plans` (evaluated on `split`): a column per shot count and one for their mean. Plans with
    nothing to show (`missing`: damaged, not evaluated) are rows marked with why, without numbers."""
    shown = [pr for pr in plans if pr.missing is None]
    source = check_sources(shown)
    shots = sorted({s for pr in shown for r in pr.evaluated_runs for s in r.shots(split)})
    columns = [build_column(shown, split, str(s), [s], alpha, n_resamples, seed) for s in shots]
    notes = list(notes or [])
    avg = mean_shots(shown, split)
    if len(avg) > 1:
        columns.append(build_column(shown, split, MEAN, avg, alpha, n_resamples, seed))
    elif len(shots) > 1:
        notes.append("no mean column: the plans share fewer than two shot counts with demonstrations")
    mark(columns, alpha, family)
    redrawn = False
    for c in columns:  # an adjusted p near alpha is drawn again with the most resamples, then corrected again
        again = [k for k, e in c.entries.items() if e.borderline and (e.resamples or MAX_RESAMPLES) < MAX_RESAMPLES]
        if again and c.best is not None:
            mats, _ = pair({pr.name: m for pr in shown if (m := question_matrix(pr, split, c.shots)) is not None}, c.label)
            for k in again:
                t = paired_test(
                    mats[k].values, mats[c.best].values, MAX_RESAMPLES, seed, alpha, mats[k].seeds == mats[c.best].seeds
                )
                e = c.entries[k]
                e.p, e.resamples, e.exact, e.borderline = t.p, t.resamples, t.exact, t.borderline
            redrawn = True
    if redrawn:
        mark(columns, alpha, family)
    notes += [c.note for c in columns if c.note]
    rows = []
    for pr in plans:
        row = Row(pr.name, pr.spec_hash, pr.overrides, len(pr.evaluated_runs), n_planned=pr.n_planned)
        if pr.missing is not None:
            row.missing = f"{pr.missing}" + (f" ({pr.command})" if pr.command else "")
        for run in pr.evaluated_runs:
            for qr in ((run.results or {}).get(split) or {}).values():
                row.failed += qr.n_failed
                row.answered += qr.n
        if row.missing is None and row.n_planned > row.n_seeds:
            notes.append(f"{row.name}: {row.n_seeds} of {row.n_planned} planned seeds evaluated (a run in progress?)")
        rows.append(row)
    lacking = [pr.name for pr in shown if any(lacks_texts(r, split) for r in pr.evaluated_runs)]
    if lacking:
        notes.append(
            f"no copy rate or majority vote for {', '.join(lacking)}: their rows predate the demonstrations' answers; "
            "`lever evaluate PLAN` once re-scores the stored outputs into rows that hold them (no VLM)"
        )
    n_q = max((c.n_questions for c in columns), default=0)
    seeds = any(r.n_seeds > 1 for r in rows)
    kinds = {e.interval for c in columns for e in c.entries.values()}
    m = sum(e.p is not None for c in columns for e in c.entries.values())
    note = footnote(split, n_q, alpha, metric, seeds, kinds, family, m)
    return Leaderboard(split, rows, columns, alpha, metric, notes, note, family, str(source) if source else None)


def footnote(
    split: str,
    n_questions: int,
    alpha: float,
    metric: str | None,
    seeds: bool = False,
    kinds: set[str] | None = None,
    family: str = "column",
    n_tests: int = 0,
) -> str:
    size = f"{n_questions} questions, " if n_questions else ""
    scored = f"re-scored with metric {metric}; " if metric else ""
    kinds = kinds or {"questions"}
    over = (
        "over questions"
        if kinds == {"questions"}
        else "over seeds and questions"
        if kinds == {"seeds and questions"}
        else "over questions for one seed, over seeds and questions (two-level) for more"
    )
    spans = (
        "each column's tests against its best (m = plans - 1 per column)"
        if family == "column"
        else f"every column's tests at once (m = {n_tests}; --family column corrects per column)"
    )
    return (
        f"VQA accuracy (%) on {split}, {size}{scored}[95% bootstrap interval {over}]; "
        f"* = best: above every other plan in a paired test over the same questions (sign-flip with one seed a side, "
        f"two-level bootstrap with more), Holm-corrected, alpha = {alpha:g}, family: {spans}; ~ = tied for best: "
        f"not significantly below the best after Holm (no plan is significantly best); ? = borderline: within Monte "
        f"Carlo error of alpha at {MAX_RESAMPLES:,} resamples" + ("; ± = std over seeds." if seeds else ".")
    )


# ---------------------------------------------------------------- rendering

FORMATS = ("json", "markdown", "csv", "latex")
COPY_NOTE = (
    "copy = % of answers equal (VQA-normalised) to one of the chosen demonstrations' answers; vote = VQA accuracy (%) "
    "of a model-free majority vote over those answers (ties: the one shown first). An accuracy near the vote with a "
    "high copy rate means the selector's gain is the demonstrations' answers, not the model's use of them."
)


def _header(col: Column) -> str:
    return f"mean {shots_label(col.shots)}" if col.label == MEAN else col.label


def _cell(e: Entry | None, style: str = "plain") -> str:
    """`58.10 [54.6, 61.5]` with the column's mark: plain `*` best, `~` tied; markdown bold / italic; latex bold /
    underlined."""
    if e is None:
        return "—" if style != "latex" else "--"
    acc = fixed(e.accuracy) + (f"±{fixed(e.std)}" if e.std is not None else "") + ("?" if e.borderline else "")
    interval = f"[{fixed(e.lo, 1)}, {fixed(e.hi, 1)}]"
    if style == "latex":
        acc = acc.replace("±", r" $\pm$ ")
        acc = {"best": f"\\textbf{{{acc}}}", "tied": f"\\underline{{{acc}}}"}.get(e.mark, acc)
        return f"{acc} {{\\scriptsize {interval}}}"
    if style == "markdown":  # no `~` mark here: GitHub reads a pair of single tildes as strikethrough
        return {"best": f"**{acc}**", "tied": f"_{acc}_"}.get(e.mark, acc) + f" {interval}"
    return acc + {"best": "*", "tied": "~"}.get(e.mark, "") + f" {interval}"


def table(lb: Leaderboard, style: str = "plain") -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the accuracy table."""
    headers = ["plan"] + [_header(c) for c in lb.columns]
    return headers, [
        [r.name, *(_cell(c.entries.get(r.name), style) for c in lb.columns)] if r.missing is None
        else [r.name, r.missing, *([""] * (len(lb.columns) - 1))] if lb.columns else [r.name]
        for r in lb.plans
    ]  # fmt: skip


def copy_table(lb: Leaderboard) -> tuple[list[str], list[list[str]]] | None:
    """Headers and rows of copy rate / majority vote per plan and column; None when no plan has them."""
    if all(e.copy_rate is None for c in lb.columns for e in c.entries.values()):
        return None

    def cell(e: Entry | None) -> str:
        if e is None or (e.copy_rate is None and e.majority_vote is None):
            return "—"
        return " / ".join("—" if x is None else f"{x:.1f}" for x in (e.copy_rate, e.majority_vote))

    headers = ["plan"] + [f"{_header(c)} copy / vote" for c in lb.columns]
    return headers, [[r.name] + [cell(c.entries.get(r.name)) for c in lb.columns] for r in lb.plans]


def _runs_line(lb: Leaderboard) -> str:
    def seeds(r: Row) -> str:
        if r.n_planned > r.n_seeds and r.n_seeds:
            return f" ({r.n_seeds}/{r.n_planned} seeds)"
        return f" ({r.n_seeds} seeds)" if r.n_seeds > 1 else ""

    parts = [(r.name if "@" in r.name else f"{r.name}@{r.spec_hash}") + ("*" if r.overrides else "") + seeds(r)
             for r in lb.plans if r.spec_hash]  # fmt: skip
    lines = ["Runs: " + ", ".join(parts)]
    lines += [f"* {r.name}: overrides {' '.join(r.overrides)}" for r in lb.plans if r.overrides]
    failed = [f"{r.name} {r.failed} of {r.answered}" for r in lb.plans if r.failed]
    if failed:
        lines.append("Failed answers, scored 0: " + ", ".join(failed))
    return "\n".join(lines)


def title(lb: Leaderboard) -> str:
    return f"Leaderboard: accuracy (%) on {lb.split} by shot count" + (f" ({lb.source})" if lb.source else "")


def _grids(headers: list[str], rows: list[list[str]], width: int | None) -> list[str]:
    """The table as one grid, or as several that fit `width` (each with the plan column, the shot columns in order)."""
    cols = split_columns(headers, rows, [[i] for i in range(1, len(headers))], width)
    return [plain_grid([headers[i] for i in c], [[r[i] for i in c] for r in rows]) for c in cols]


def render_plain(lb: Leaderboard, width: int | None = None) -> str:
    """The leaderboard as plain text; with `width`, each table cut into tables of the columns that fit beside the
    plan names (as `lever.report.tables.split_columns`)."""
    parts = [title(lb), "\n\n".join(_grids(*table(lb), width)), lb.footnote]
    copying = copy_table(lb)
    if copying:
        parts += ["", f"Beyond copying (%) on {lb.split}", "\n\n".join(_grids(*copying, width)), COPY_NOTE]
    parts += ["", _runs_line(lb), *(f"note: {n}" for n in lb.notes)]
    return "\n".join(parts) + "\n"


def to_markdown(lb: Leaderboard) -> str:
    note = lb.footnote.replace("* = best", "bold = best").replace("~ = tied", "italic = tied")
    parts = [f"### {title(lb)}", "", _md_table(*table(lb, "markdown"), numeric=True), "", f"_{note}_"]
    copying = copy_table(lb)
    if copying:
        parts += ["", f"### Beyond copying (%) on {lb.split}", "", _md_table(*copying, numeric=True), "", f"_{COPY_NOTE}_"]
    parts += ["", _runs_line(lb), *(f"\nNote: {n}" for n in lb.notes)]
    return "\n".join(parts) + "\n"


def to_latex(lb: Leaderboard) -> str:
    """A booktabs tabular of the accuracy table: bold = best (Holm), underlined = tied for best."""
    headers, rows = table(lb, "latex")
    lines = [
        f"% {latex_escape(lb.footnote)}",
        "% bold = best (above every other plan, paired sign-flip test, Holm); underlined = tied for best",
        *(f"% note: {latex_escape(n)}" for n in lb.notes),
        f"\\begin{{tabular}}{{l{'r' * len(lb.columns)}}}",
        r"\toprule",
        " & ".join(latex_escape(h) for h in headers) + r" \\",
        r"\midrule",
        *(" & ".join([latex_escape(r[0]), *r[1:]]) + r" \\" for r in rows),
        r"\bottomrule",
        r"\end{tabular}",
    ]
    return "\n".join(lines) + "\n"


CSV_COLUMNS = [
    "split", "plan", "spec_hash", "column", "shots", "accuracy", "ci_lo", "ci_hi", "std", "n_seeds", "n_questions",
    "p_vs_best", "p_holm", "mark", "copy_rate", "majority_vote",
]  # fmt: skip


def to_csv(lb: Leaderboard) -> str:
    """Long format: one line per (plan, column) with an entry."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in lb.plans:
        for c in lb.columns:
            e = c.entries.get(r.name)
            if e is None:
                continue
            line = _clean(
                {
                    "split": lb.split, "plan": r.name, "spec_hash": r.spec_hash, "column": c.label,
                    "shots": " ".join(map(str, c.shots)), "accuracy": e.accuracy, "ci_lo": e.lo, "ci_hi": e.hi,
                    "std": e.std, "n_seeds": e.n_seeds, "n_questions": e.n_questions, "p_vs_best": e.p,
                    "p_holm": e.p_holm, "mark": e.mark, "copy_rate": e.copy_rate, "majority_vote": e.majority_vote,
                }
            )  # fmt: skip
            w.writerow({k: _csv_value(v) for k, v in line.items()})
    return buf.getvalue()


def to_json(lb: Leaderboard) -> str:
    return json.dumps(_clean(asdict(lb)), indent=2, allow_nan=False) + "\n"


def export(lb: Leaderboard, fmt: str) -> str:
    """Render `lb` in one of FORMATS."""
    return {"json": to_json, "markdown": to_markdown, "csv": to_csv, "latex": to_latex}[fmt](lb)
