"""The comparison: shot table with paired significance, training table, spec differences.

``build_comparison`` turns loaded runs into plain dataclasses; ``render_plain`` and
``render_rich`` draw them. Exports (JSON, CSV, Markdown, LaTeX) live in ``export.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import numpy as np

from lever.data.stats import FLAT
from lever.runs.layout import RunDir
from lever.spec import diff_specs

from .copying import copy_flags, lacks_texts, percent, vote_accuracy
from .matrix import QuestionMatrix, check_sources, pair, question_matrix
from .results import PlanRuns, RunData, selected_metrics
from .significance import ALPHA, MAX_RESAMPLES, N_RESAMPLES, accuracy_interval, holm, near, paired_test

ADV_STD_FLOOR = FLAT  # below this at the selected epoch, GRPO had almost no signal
NEAR_ZERO_FLAG = "near-zero advantages"
AVG = "avg"


@dataclass
class Cell:
    """One plan at one row (a shot count or the average over shots)."""

    accuracy: float | None = None  # percent; mean over seeds
    std: float | None = None  # over seeds (sample std); None with one seed
    n_seeds: int = 0
    n_questions: int = 0
    acc_lo: float | None = None  # 95% interval of the accuracy (over questions; over seeds too with two or more)
    acc_hi: float | None = None
    delta: float | None = None  # points vs baseline (paired over common questions)
    lo: float | None = None  # 95% paired bootstrap interval of delta (`interval` says over what)
    hi: float | None = None
    p: float | None = None  # one seed a side: paired sign-flip test; else the two-level bootstrap p
    p_holm: float | None = None  # p Holm-adjusted over its family (`Comparison.families`)
    p_mcnemar: float | None = None  # one seed a side only
    p_mcnemar_seeds: list[float] | None = None  # several seeds, the same on both sides: McNemar per seed pair
    interval: str | None = None  # what the delta's interval resamples: "questions" | "seeds and questions"
    resamples: int | None = None  # drawn for this cell (more than the default where a verdict was near its threshold)
    borderline: bool = False  # a verdict within Monte Carlo error of its threshold at MAX_RESAMPLES
    exact: bool = False  # p from every sign vector: no Monte Carlo error
    best: bool = False
    copy_rate: float | None = None  # percent of answers equal to a chosen demonstration's answer (lever.report.copying)
    majority_vote: float | None = None  # percent: VQA accuracy of a majority vote over the demonstrations' answers

    @property
    def within_noise(self) -> bool | None:
        if self.lo is None or self.hi is None or np.isnan(self.lo):
            return None
        return self.lo <= 0.0 <= self.hi


@dataclass
class ShotRow:
    label: str  # "1".."4" or "avg"
    cells: dict[str, Cell]  # plan name -> cell


@dataclass
class PlanColumn:
    name: str
    baseline: bool = False
    n_seeds: int = 0
    spec_hash: str | None = None
    overrides: list[str] = field(default_factory=list)  # the runs were made with these key.path=value overrides
    missing: str | None = None  # why there is nothing to show
    command: str | None = None  # what to run
    n_planned: int = 0  # seeds the plan names (a run in progress has fewer evaluated)
    improved: int = 0  # shot rows with delta > 0
    improved_significant: int = 0  # ... whose Holm-adjusted p is below ALPHA
    n_shots: int = 0
    failed: int = 0  # answers that failed (scored 0) on this split, over seeds and shot counts
    answered: int = 0  # all answers on this split, over seeds and shot counts


@dataclass
class TrainingRow:
    plan: str
    seed: int | None
    state: str
    stage: str | None
    epoch: int | None
    reason: str | None
    val_loss: float | None
    ppo_loss: float | None
    kl: float | None
    adv_std: float | None
    flags: list[str] = field(default_factory=list)
    message: str | None = None


@dataclass
class SpecDiff:
    plan: str
    key: str
    baseline: Any
    value: Any


@dataclass
class Comparison:
    split: str
    baseline: str
    plans: list[PlanColumn]  # baseline first
    rows: list[ShotRow]
    training: list[TrainingRow]
    spec_diffs: list[SpecDiff]
    n_questions: int
    footnote: str
    metric: str | None = None  # the VQA metric every run's stored answers were scored again with (None: as evaluated)
    copy_missing: list[str] = field(default_factory=list)  # plans whose rows lack the demonstrations' answers: the fix
    # plan -> shot count -> (mean demonstrations used, % stopped early), for plans whose selector can stop (model.stop)
    shots_used: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # different question sets, runs in progress
    source: str | None = None  # the dataset (and benchmark world) every plan answered


# ---------------------------------------------------------------- building


class _PlanView:
    """Which shot counts a row reads for one plan: a zero-shot plan (only 0 shots evaluated) is the same prompt at
    any shot count, so each row compares with its 0-shot results; `shots` are the shot counts the average row
    averages."""

    def __init__(self, plan: PlanRuns, split: str, shots: list[int]):
        self.plan, self.runs = plan, plan.evaluated_runs
        self.split, self.shots = split, shots
        self.zero_only = bool(self.runs) and all(r.shots(split) == [0] for r in self.runs)

    def shots_of(self, label: int | str) -> list[int]:
        if self.zero_only:
            return [0]
        return list(self.shots) if label == AVG else [int(label)]

    def seed_accuracies(self, label: int | str) -> list[float]:
        """Each seed's accuracy from its summary (runs whose rows are not stored): the mean over the row's shots."""
        accs = []
        for run in self.runs:
            per_shot = [run.accuracy(self.split, s) for s in self.shots_of(label)]
            if per_shot and all(a is not None for a in per_shot):
                accs.append(float(np.mean(per_shot)))  # type: ignore[arg-type]
        return accs

    def matrix(self, label: int | str) -> QuestionMatrix | None:
        return question_matrix(self.plan, self.split, self.shots_of(label)) if self.runs else None


def _cell(view: _PlanView, label: int | str, mat: QuestionMatrix | None, n_resamples: int, seed: int) -> Cell:
    """Accuracy (mean over seeds on the row's paired questions), its std over seeds and its interval."""
    if mat is None:  # summary numbers only: no pairing, no interval
        accs = view.seed_accuracies(label)
        if not accs:
            return Cell()
        return Cell(float(np.mean(accs)), float(np.std(accs, ddof=1)) if len(accs) > 1 else None, len(accs))
    seeds = mat.seed_means()  # [seeds] percent
    acc, lo, hi = accuracy_interval(mat.values, n_resamples=n_resamples, seed=seed)
    cell = Cell(
        accuracy=float(np.mean(seeds)),
        std=float(np.std(seeds, ddof=1)) if seeds.shape[0] > 1 else None,
        n_seeds=int(seeds.shape[0]),
        n_questions=mat.n,
        acc_lo=lo,
        acc_hi=hi,
    )
    if label != AVG:  # the average row's are filled from the shot rows
        cell.copy_rate, cell.majority_vote = beyond_copying(view.runs, view.split, view.shots_of(label)[0])
    return cell


def beyond_copying(runs: list[RunData], split: str, shots: int) -> tuple[float | None, float | None]:
    """(copy rate, majority-vote accuracy) in percent at one shot count, mean over the seed runs; None where a run's
    rows do not record the demonstrations' answers or no question had a demonstration."""
    qrs = [run.question_results(split, shots) for run in runs]
    copy = [None if qr is None else percent(copy_flags(qr)) for qr in qrs]
    vote = [None if qr is None else percent(vote_accuracy(qr)) for qr in qrs]
    return _mean_all(copy), _mean_all(vote)


def _mean_all(values: list[float | None]) -> float | None:
    """The mean over seeds; None when a seed has no value (a mean over some seeds would be another number)."""
    return float(np.mean(values)) if values and all(v is not None for v in values) else None


def _mean_defined(values: list[float | None]) -> float | None:
    """The mean of the values that are not None (the shot counts with demonstrations); None when none are."""
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _fill_delta(
    cell: Cell, base: Cell, mb: QuestionMatrix | None, mp: QuestionMatrix | None, n_resamples: int, seed: int
) -> None:
    """The plan's delta against the baseline: paired over the row's questions (and seeds) when both have rows."""
    if cell.accuracy is None or base.accuracy is None:
        return
    if mb is None or mp is None:
        cell.delta = cell.accuracy - base.accuracy  # summary only: no per-question pairing
        return
    t = paired_test(mb.values, mp.values, n_resamples=n_resamples, seed=seed, paired_seeds=mb.seeds == mp.seeds)
    cell.delta, cell.lo, cell.hi, cell.p = t.delta, t.lo, t.hi, t.p
    cell.p_mcnemar, cell.p_mcnemar_seeds, cell.interval = t.p_mcnemar, t.p_mcnemar_seeds, t.interval
    cell.resamples, cell.borderline = t.resamples, t.borderline
    cell.exact = t.exact


def correct(rows: list[ShotRow], plans: list[str], shot_labels: list[str], alpha: float = ALPHA) -> list[str]:
    """Holm-adjust each cell's p over its family, in place; one line per family saying what it holds.

    The average row is the pre-declared primary comparison: its family is the plans' average rows (one test per plan
    facing the baseline). The shot rows (`shot_labels`) are secondary: one family of every plan's shot rows. A p within
    Monte Carlo error of alpha after adjustment (family size times its error) marks the cell borderline."""
    by = {r.label: r for r in rows}
    families = [("primary", [AVG]), ("shot rows", shot_labels)]
    lines = []
    for name, labels in families:
        cells = [by[lab].cells[p] for lab in labels if lab in by for p in plans]
        cells = [c for c in cells if c.p is not None and not np.isnan(c.p)]
        if not cells:
            continue
        for c, adj in zip(cells, holm([c.p for c in cells])):  # type: ignore[misc]
            c.p_holm = adj
            if not c.exact and c.resamples and near(adj, alpha, c.resamples, scale=len(cells)):
                c.borderline = True
        what = "the average row of each plan" if name == "primary" else f"shot rows {', '.join(labels)} of each plan"
        lines.append(f"{name}: {len(cells)} test(s) ({what})")
    return lines


def training_rows(plan: PlanRuns) -> list[TrainingRow]:
    """One row per seed run: the selected epoch, its metrics, and the flags raised."""
    rows = []
    for run in plan.runs:
        sel = run.selected
        m = selected_metrics(run) or {}
        flags = list(run.status.flags) if run.status else []
        adv_std = _num(m.get("adv/std"))
        if adv_std is not None and adv_std < ADV_STD_FLOOR and NEAR_ZERO_FLAG not in flags:
            flags.append(NEAR_ZERO_FLAG)
        rows.append(
            TrainingRow(
                plan=plan.name,
                seed=run.seed,
                state=run.state,
                stage=sel.stage if sel else None,
                epoch=sel.epoch if sel else None,
                reason=sel.reason if sel else None,
                val_loss=_num(m.get("val/loss", sel.value if sel else None)),
                ppo_loss=_num(m.get("losses/ppo")),
                kl=_num(m.get("kl/value")),
                adv_std=adv_std,
                flags=flags,
                message=run.status.message if run.status else None,
            )
        )
    return rows


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def build_comparison(
    plans: list[PlanRuns],
    baseline: PlanRuns,
    split: str = "val",
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    metric: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Comparison:
    """The full comparison of ``plans`` against ``baseline`` on one split (baseline is column one); ``metric``
    names the metric the runs were re-scored with (`lever.report.results.rescore_plan`) for the footnote;
    ``progress(done, total)`` hears of each paired test (a two-level bootstrap over 3 seeds and 800 questions
    takes about half a second, so 13 plans x 5 rows take a while).

    Plans of different datasets or benchmark worlds are an error; each row pairs the plans on the questions all of
    them answered (a note gives the counts when they differ; none in common is an error)."""
    everyone = [baseline]
    for p in plans:
        if all(p.name != q.name for q in everyone):  # why: a plan named twice is one column
            everyone.append(p)
    source = check_sources(everyone)
    shots = sorted({s for p in everyone for r in p.evaluated_runs for s in r.shots(split)}) or [1, 2, 3, 4]
    labels: list[int | str] = [*shots, AVG]
    # the average is over the shot counts with demonstrations (as the leaderboard's mean): a zero-shot plan in the
    # table adds a 0 row but no plan without a 0-shot result loses its average
    averaged = [s for s in shots if s > 0] or shots
    views = {p.name: _PlanView(p, split, averaged) for p in everyone}

    rows, notes, paired = [], [], {}
    done, total = 0, len(labels) * (len(everyone) - 1)
    for label in labels:
        mats = {k: m for k, v in views.items() if (m := v.matrix(label)) is not None}
        mats, note = pair(mats, f"shots {label}")
        notes += [note] if note else []
        base_cell = _cell(views[baseline.name], label, mats.get(baseline.name), n_resamples, seed)
        cells = {baseline.name: base_cell}
        for p in everyone[1:]:
            cell = _cell(views[p.name], label, mats.get(p.name), n_resamples, seed)
            _fill_delta(cell, base_cell, mats.get(baseline.name), mats.get(p.name), n_resamples, seed)
            cells[p.name] = cell
            done += 1
            if progress is not None:
                progress(done, total)
            paired[(str(label), p.name)] = (base_cell, mats.get(baseline.name), mats.get(p.name))
        top = max((c.accuracy for c in cells.values() if c.accuracy is not None), default=None)
        for c in cells.values():
            c.best = top is not None and c.accuracy is not None and c.accuracy >= top - 1e-9
        rows.append(ShotRow(str(label), cells))
    for name, cell in rows[-1].cells.items():  # the average row: over the shot counts that have a value
        cell.copy_rate = _mean_defined([r.cells[name].copy_rate for r in rows[:-1]])
        cell.majority_vote = _mean_defined([r.cells[name].majority_vote for r in rows[:-1]])

    # "improved" counts the shot rows the average spans: not the average, and not 0 shots (the same prompt for all)
    counted = [r for r in rows[:-1] if int(r.label) in averaged]
    families = correct(rows, [p.name for p in everyone[1:]], [r.label for r in counted])
    # an adjusted p near alpha is drawn again with the most resamples, then the families corrected again
    again = [(r, k) for r in rows for k, c in r.cells.items() if c.borderline and (c.resamples or MAX_RESAMPLES) < MAX_RESAMPLES]
    total += len(again)
    for r, k in again:
        base_cell, mb, mp = paired[(r.label, k)]
        _fill_delta(r.cells[k], base_cell, mb, mp, MAX_RESAMPLES, seed)
        done += 1
        if progress is not None:
            progress(done, total)
    if again:
        families = correct(rows, [p.name for p in everyone[1:]], [r.label for r in counted])
    columns = []
    for p in everyone:
        col = PlanColumn(
            name=p.name,
            baseline=p is baseline,
            n_seeds=len(p.evaluated_runs),
            n_planned=p.n_planned,
            spec_hash=p.spec_hash,
            overrides=p.overrides,
            missing=p.missing,
            command=p.command,
            n_shots=sum(r.cells[p.name].accuracy is not None and r.cells[baseline.name].accuracy is not None for r in counted),
        )
        for run in p.evaluated_runs:
            for res in ((run.results or {}).get(split) or {}).values():
                col.failed += res.n_failed
                col.answered += res.n
        if col.missing is None and all(r.cells[p.name].accuracy is None for r in rows):
            col.missing, col.command = f"not evaluated on {split}", f"lever evaluate plans/{p.name}.toml"
        for r in counted:
            c = r.cells[p.name]
            col.improved += int(c.delta is not None and c.delta > 0)
            col.improved_significant += int(c.delta is not None and c.delta > 0 and c.p_holm is not None and c.p_holm < ALPHA)
        if col.missing is None and col.n_planned > col.n_seeds:
            notes.append(f"{p.name}: {col.n_seeds} of {col.n_planned} planned seeds evaluated (a run in progress?)")
        columns.append(col)

    training = [t for p in everyone for t in training_rows(p)]
    diffs = []
    if baseline.spec is not None:
        for p in everyone[1:]:
            if p.spec is not None:
                diffs += [SpecDiff(p.name, k, va, vb) for k, va, vb in diff_specs(baseline.spec, p.spec)]

    n_q = max((c.n_questions for r in rows[:-1] for c in r.cells.values()), default=0)
    kinds = {c.interval for r in rows for c in r.cells.values() if c.interval}
    note = footnote(split, n_q, kinds, families)
    if metric is not None:
        note = f"VQA accuracy re-scored with metric {metric} from the stored answers; {note}"
    copy_missing = []
    for p in everyone:
        lacking = [r for r in p.evaluated_runs if lacks_texts(r, split)]
        if lacking:
            cmd = RunDir(lacking[0].path).command("evaluate")
            copy_missing.append(f"{p.name}: run `{cmd}` once (re-scores the stored outputs, no VLM)")
    return Comparison(
        split, baseline.name, columns, rows, training, diffs, n_q, note, metric, copy_missing,
        shots_used(everyone, split, shots), notes, str(source) if source else None,
    )  # fmt: skip


def shots_used(plans: list[PlanRuns], split: str, shots: list[int]) -> dict[str, dict[str, tuple[float, float]]]:
    """Per plan that can stop early: per shot count, the mean over seeds of (demonstrations used, % stopped early)."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for p in plans:
        per = {}
        for s in shots:
            vals = [v for run in p.evaluated_runs if (v := run.shots_used(split, s)) is not None]
            if vals:
                per[str(s)] = (float(np.mean([v[0] for v in vals])), float(np.mean([v[1] for v in vals])))
        if per:
            out[p.name] = per
    return out


def shots_used_table(cmp: Comparison) -> tuple[list[str], list[list[str]]]:
    """Mean demonstrations used per shot count (the shot count is a cap for a selector with STOP) and the share of
    selections that stopped early; empty when no plan can stop."""
    labels = [r.label for r in cmp.rows if r.label != AVG]
    body = [
        [name, *(f"{per[k][0]:.2f} ({per[k][1]:.0f}% early)" if k in per else "" for k in labels)]
        for name, per in cmp.shots_used.items()
    ]
    return ["shots used", *labels], body


def interval_note(kinds: set[str]) -> str:
    """What an interval covers: over questions (one seed a side), over seeds and questions (two or more)."""
    if kinds == {"seeds and questions"}:
        return "95% CI = two-level paired bootstrap over seeds and questions"
    if kinds == {"questions"} or not kinds:
        return "95% CI = paired bootstrap over questions (one seed a side)"
    return "95% CI = paired bootstrap over questions where both sides have one seed, over seeds and questions where one has more"


def footnote(split: str, n_questions: int, kinds: set[str] | None = None, families: list[str] | None = None) -> str:
    """What the marks mean, with the size of one point in questions."""
    size = f"{n_questions} questions: 1 point = {n_questions / 100:g} questions; " if n_questions else ""
    family = f" (Holm families: {'; '.join(families)})" if families else ""
    return (
        f"{split}, {size}Δ = plan - baseline in points, paired over the same questions; "
        f"{interval_note(kinds or set())}; ~ = within noise (the CI includes 0); "
        "p = two-sided paired sign-flip test (one seed a side) or two-level bootstrap p (more seeds); "
        f"p adj = Holm-adjusted, the average row the primary comparison{family}; "
        f"? = borderline: within Monte Carlo error of its threshold at {MAX_RESAMPLES:,} resamples; "
        "* = best in row; ± = std over seeds."
    )


# ---------------------------------------------------------------- formatting


def fixed(x: float, digits: int = 2, sign: bool = False) -> str:
    """The one rounding rule of every table: the value to 9 decimals (binary noise gone: 51.42499999999 is 51.425),
    then half away from zero at `digits` (51.425 -> 51.43); `sign` writes a + on positives."""
    q = Decimal(f"{x:.9f}").quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    if q == 0:
        q = abs(q)  # why: never "-0.00"
    return f"{q:+}" if sign else f"{q}"


def arrow(delta: float | None) -> str:
    if delta is None:
        return ""
    d = Decimal(fixed(delta))  # why: the arrow must agree with the two decimals shown
    return "↑" if d > 0 else "↓" if d < 0 else "="


def fmt_acc(c: Cell, mark_best: bool = True) -> str:
    if c.accuracy is None:
        return "—"
    s = fixed(c.accuracy) + (f"±{fixed(c.std)}" if c.std is not None else "")
    return s + ("*" if mark_best and c.best else "")


def fmt_delta(c: Cell) -> str:
    if c.delta is None:
        return "—"
    noise = " ~" if c.within_noise else ""
    noise += "?" if c.borderline else ""
    a = arrow(c.delta)
    return f"{a}{fixed(abs(c.delta))}{noise}" if a == "=" else f"{a}{fixed(c.delta, sign=True)}{noise}"


def fmt_ci(c: Cell) -> str:
    if c.lo is None or c.hi is None or np.isnan(c.lo):
        return "—"
    return f"[{fixed(c.lo, sign=True)}, {fixed(c.hi, sign=True)}]"


def fmt_p(p: float | None) -> str:
    if p is None or np.isnan(p):
        return "—"
    if p < 0.0001:
        return f"{p:.1e}"  # why: never a p of 0.0000
    return fixed(p, 4) if p < 0.001 else fixed(p, 3)


def fmt_num(x: float | None, digits: int = 4) -> str:
    return "—" if x is None else f"{x:.{digits}g}"


def fmt_value(v: Any) -> str:
    return "—" if v is None else str(v)


def plan_headers(col: PlanColumn) -> list[str]:
    """Column headers of one plan: accuracy only for the baseline or a missing plan, else Δ, CI, p too."""
    if col.baseline:
        return [col.name if col.name == "baseline" else f"{col.name} (baseline)"]
    return [col.name] if col.missing else [col.name, "Δ", "95% CI", "p", "p adj"]


def plan_cells(col: PlanColumn, c: Cell, rich: bool = False) -> list[str]:
    """The text of one plan's cells in a shot row; with ``rich``, markup for colour and bold."""
    if col.missing:
        return [col.missing]
    acc = fmt_acc(c)
    if col.baseline:
        return [f"[bold]{acc}[/]" if rich and c.best else acc]
    out = [acc, fmt_delta(c), fmt_ci(c), fmt_p(c.p), fmt_p(c.p_holm)]
    if rich:
        a = arrow(c.delta)
        colour = {"↑": "green", "↓": "red"}.get(a, "default")
        strong = "bold " if c.within_noise is False else ""
        out = [f"[bold]{acc}[/]" if c.best else acc, f"[{strong}{colour}]{out[1]}[/]", *(f"[dim]{x}[/]" for x in out[2:])]
    return out


def improved_cells(col: PlanColumn) -> list[str]:
    if col.baseline or col.missing:
        return [""]
    return ["", f"{col.improved}/{col.n_shots}", f"{col.improved_significant} sig. (adj)", "", ""]


def shot_table(cmp: Comparison, rich: bool = False) -> tuple[list[str], list[list[str]]]:
    """Headers and text rows of the shot table (shared by plain text, Markdown and rich)."""
    headers = ["shots"] + [h for col in cmp.plans for h in plan_headers(col)]
    body = [[row.label] + [x for col in cmp.plans for x in plan_cells(col, row.cells[col.name], rich)] for row in cmp.rows]
    body.append(["improved"] + [x for col in cmp.plans for x in improved_cells(col)])
    return headers, body


COPY_NOTE = (
    "copy = % of answers equal (VQA-normalised) to one of the chosen demonstrations' answers; "
    "vote = VQA accuracy (%) of a model-free majority vote over those answers; compare with the accuracy above."
)


def copy_table(cmp: Comparison) -> tuple[list[str], list[list[str]]] | None:
    """Headers and rows of the beyond-copying table (copy rate and majority vote per plan and shot row); None when no
    plan has them."""
    cols = [c for c in cmp.plans if any(r.cells[c.name].copy_rate is not None for r in cmp.rows)]
    if not cols:
        return None
    headers = ["shots"] + [h for c in cols for h in (f"{c.name} copy", f"{c.name} vote")]
    body = [
        [row.label] + [_pct2(x) for c in cols for x in (row.cells[c.name].copy_rate, row.cells[c.name].majority_vote)]
        for row in cmp.rows
    ]
    return headers, body


def copy_missing_lines(cmp: Comparison) -> list[str]:
    return [f"No copy rate for {line}" for line in cmp.copy_missing]


def _pct2(x: float | None) -> str:
    return "—" if x is None else fixed(x)


TRAINING_HEADERS = ["plan", "seed", "state", "selected", "reason", "val loss", "PPO loss", "KL", "adv std", "flags"]


def training_table(cmp: Comparison) -> list[list[str]]:
    out = []
    for t in cmp.training:
        sel = (f"{t.stage} {t.epoch}" if t.epoch is not None else t.stage) if t.stage is not None else "—"
        flags = ", ".join(t.flags) + (f" ({t.message})" if t.message else "")
        out.append(
            [
                t.plan,
                fmt_value(t.seed),
                t.state,
                sel,
                fmt_value(t.reason),
                fmt_num(t.val_loss),
                fmt_num(t.ppo_loss),
                fmt_num(t.kl),
                fmt_num(t.adv_std),
                flags or "—",
            ]
        )
    return out


DIFF_HEADERS = ["plan", "key", "baseline", "plan value"]


def diff_table(cmp: Comparison) -> list[list[str]]:
    return [[d.plan, d.key, fmt_value(d.baseline), fmt_value(d.value)] for d in cmp.spec_diffs]


def missing_lines(cmp: Comparison) -> list[str]:
    """One line per missing plan: why, and the command (or the choice) that fills the gap."""
    return [
        f"{c.name}: {c.missing} — " + (f"run `{c.command}`" if (c.command or "").startswith("lever ") else str(c.command))
        for c in cmp.plans
        if c.missing
    ]


def failures_line(cmp: Comparison) -> str | None:
    """Failed answers (scored 0) per plan, when any: a number that hides them is not the number it says."""
    parts = [f"{c.name} {c.failed} of {c.answered}" for c in cmp.plans if c.failed]
    return "Failed answers, scored 0: " + ", ".join(parts) if parts else None


def runs_line(cmp: Comparison) -> str:
    """Which spec hash every column is, with the overrides a run was made with marked `*`."""

    def ref(c: PlanColumn) -> str:  # a sweep's derived plan (plan5@grpo.lr=1e-5) already has its `@`; plan@HASH its hash
        if c.name.endswith(f"@{c.spec_hash}"):
            return c.name
        return f"{c.name} ({c.spec_hash})" if "@" in c.name else f"{c.name}@{c.spec_hash}"

    def seeds(c: PlanColumn) -> str:
        return f" ({c.n_seeds}/{c.n_planned} seeds)" if c.n_planned > c.n_seeds and c.n_seeds else ""

    parts = [ref(c) + ("*" if c.overrides else "") + seeds(c) for c in cmp.plans if c.spec_hash]
    notes = [f"* {c.name}: overrides {' '.join(c.overrides)}" for c in cmp.plans if c.overrides]
    return "\n".join(["Runs: " + ", ".join(parts), *notes])


# ---------------------------------------------------------------- fitting a width
#
# A table fits a terminal of `width` columns: a column of long text (flags, reasons, inputs) moves into numbered
# notes below it, a table of several plans' columns becomes several tables, each with the plans that fit beside the
# columns every piece repeats (shots, the baseline). Names and hashes are never cut. width None (output to a file or
# pipe, or --wide): the table as it is, one record a line.

PLAIN_FRAME = (2, 0)  # plain_grid and compact_table: two spaces between columns
RICH_FRAME = (3, 4)  # a boxed rich table (the shot table): a rule and a space either side between columns; the edges
NONE = ("", "—", "0")  # a folded cell with one of these says nothing: no note


def grid_width(headers: list[str], rows: list[list[str]], frame: tuple[int, int] = PLAIN_FRAME) -> int:
    """Characters one line of the table takes: its widest cells plus the frame (gap between columns, outer edge)."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    gap, edge = frame
    return sum(widths) + gap * max(len(widths) - 1, 0) + edge


def closed_gap(headers: list[str], rows: list[list[str]], width: int | None) -> int:
    """Spaces between columns: 2, or 1 when the table (its long columns already folded) is still wider than `width`
    (a zero-shot column beside 1-4 shots and a long plan name, say): closer columns rather than a cut or wrapped cell."""
    return 1 if width is not None and grid_width(headers, rows) > width else 2


def fold_columns(
    headers: list[str], rows: list[list[str]], fold: list[str], width: int | None, frame: tuple[int, int] = PLAIN_FRAME
) -> tuple[list[str], list[list[str]], list[str]]:
    """(headers, rows, notes) that fit `width`: the `fold` columns, one at a time in that order until the table fits,
    leave the table; each distinct value they held (but those in NONE) becomes a note `[n] column: value`, and a
    `note` column names a row's notes. Unchanged when it fits already or `width` is None."""
    if width is None or grid_width(headers, rows, frame) <= width:
        return headers, rows, []
    headers, rows = [*headers, "note"], [[*r, ""] for r in rows]
    notes: dict[str, int] = {}
    refs: list[list[int]] = [[] for _ in rows]
    for name in fold:
        if name not in headers:
            continue
        i = headers.index(name)
        for r, ref in zip(rows, refs):
            if r[i] not in NONE:
                ref.append(notes.setdefault(f"{name}: {r[i]}", len(notes) + 1))
            del r[i]
            r[-1] = ",".join(map(str, ref))
        del headers[i]
        if grid_width(headers, rows, frame) <= width:
            break
    if not notes:
        headers, rows = headers[:-1], [r[:-1] for r in rows]
    return headers, rows, [f"[{n}] {text}" for text, n in notes.items()]


def split_columns(
    headers: list[str], rows: list[list[str]], groups: list[list[int]], width: int | None, frame: tuple[int, int] = PLAIN_FRAME
) -> list[list[int]]:
    """The column indices of each table a wide table is cut into to fit `width`: every piece keeps the columns no group
    holds (the row label, the baseline) and takes whole groups (one plan's columns) in order while they fit; a group
    too wide for any piece is a piece of its own. One piece (every column) when it fits or `width` is None."""
    every = list(range(len(headers)))
    grouped = {i for g in groups for i in g}
    fixed = [i for i in every if i not in grouped]

    def fits(cols: list[int]) -> bool:
        return grid_width([headers[i] for i in cols], [[r[i] for i in cols] for r in rows], frame) <= width

    if width is None or fits(every):
        return [every]
    pieces: list[list[int]] = []
    current: list[int] = []
    for g in groups:
        if current and not fits(sorted(fixed + current + g)):
            pieces.append(sorted(fixed + current))
            current = []
        current += g
    if current or not pieces:
        pieces.append(sorted(fixed + current))
    return pieces


def _pick(headers: list[str], rows: list[list[str]], cols: list[int]) -> tuple[list[str], list[list[str]]]:
    return [headers[i] for i in cols], [[r[i] for i in cols] for r in rows]


def shot_groups(cmp: Comparison) -> list[list[int]]:
    """The shot table's columns of each plan but the baseline (column 0 is the shot count)."""
    groups, i = [], 1
    for col in cmp.plans:
        n = len(plan_headers(col))
        if not col.baseline:
            groups.append(list(range(i, i + n)))
        i += n
    return groups


TRAINING_FOLD = ["reason", "flags"]  # the training table's long columns, folded into notes in this order


# ---------------------------------------------------------------- rendering


def plain_grid(headers: list[str], rows: list[list[str]], gap: int = 2) -> str:
    """A fixed-width text table: first column left-aligned, the rest right-aligned, `gap` spaces between columns."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    sep = " " * gap

    def line(cells: list[str]) -> str:
        parts = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return sep.join(parts).rstrip()

    return "\n".join([line(headers), sep.join("-" * w for w in widths), *(line(r) for r in rows)])


def render_plain(cmp: Comparison, width: int | None = None) -> str:
    """The whole comparison as plain text (for pipes and files); with `width`, every table fits that many columns."""
    headers, body = shot_table(cmp)
    pieces = split_columns(headers, body, shot_groups(cmp), width)
    parts = [title(cmp)]
    for n, cols in enumerate(pieces):
        parts += ([""] if n else []) + [plain_grid(*_pick(headers, body, cols))]
    parts += [cmp.footnote, runs_line(cmp), *note_lines(cmp)]
    if cmp.shots_used:
        parts += [
            "",
            "Demonstrations used (a selector with STOP may use fewer than its shot count)",
            plain_grid(*shots_used_table(cmp)),
        ]
    if failures_line(cmp):
        parts.append(failures_line(cmp))
    copying = copy_table(cmp)
    if copying:
        parts += ["", f"Beyond copying (%) on {cmp.split}"]
        for cols in split_columns(*copying, _pairs(copying[0]), width):
            parts.append(plain_grid(*_pick(*copying, cols)))
        parts.append(COPY_NOTE)
    parts += copy_missing_lines(cmp)
    if cmp.training:
        headers, body, notes = fold_columns(TRAINING_HEADERS, training_table(cmp), TRAINING_FOLD, width)
        parts += ["", "Training (selected checkpoint)", plain_grid(headers, body), *notes]
    if cmp.spec_diffs:
        parts += ["", f"Spec differences vs {cmp.baseline}", plain_grid(DIFF_HEADERS, diff_table(cmp))]
    if missing_lines(cmp):
        parts += ["", "Missing", *missing_lines(cmp)]
    return "\n".join(parts) + "\n"


def title(cmp: Comparison) -> str:
    return f"Accuracy (%) on {cmp.split} vs {cmp.baseline}" + (f" ({cmp.source})" if cmp.source else "")


def note_lines(cmp: Comparison) -> list[str]:
    return [f"note: {n}" for n in cmp.notes]


def render_rich(cmp: Comparison, console: Any, width: int | None = None) -> None:
    """Draw the comparison on a rich console: coloured deltas with arrows, best values in bold; with `width`, every
    table fits that many columns (a shot table of many plans becomes several, long columns become notes)."""
    from rich.markup import escape
    from rich.table import Table

    heading = escape(title(cmp))
    plain_headers, plain_body = shot_table(cmp)
    headers, body = shot_table(cmp, rich=True)
    pieces = split_columns(plain_headers, plain_body, shot_groups(cmp), width, RICH_FRAME)
    for n, cols in enumerate(pieces):
        last = n == len(pieces) - 1
        t = Table(title=heading if n == 0 else None, caption=escape(cmp.footnote) if last else None, caption_justify="left")
        for i in cols:
            t.add_column(escape(headers[i]), justify="left" if i == 0 else "right", style="bold" if i == 0 else None,
                         no_wrap=True)  # fmt: skip
        for i, line in enumerate(body):
            # why: rules set the average and the improved count apart from the shot rows
            t.add_row(*(line[c] for c in cols), end_section=i >= len(body) - 3, style="italic" if i == len(body) - 1 else None)
        console.print(t)
    if cmp.shots_used:
        console.print(
            _rich_table("Demonstrations used (a selector with STOP may use fewer than its shot count)", *shots_used_table(cmp))
        )
    copying = copy_table(cmp)
    if copying:
        for n, cols in enumerate(split_columns(*copying, _pairs(copying[0]), width)):
            console.print(_rich_table(f"Beyond copying (%) on {cmp.split}" if n == 0 else "", *_pick(*copying, cols)))
        console.print(f"[dim]{escape(COPY_NOTE)}[/]", highlight=False)
    for line in copy_missing_lines(cmp):
        console.print(f"[yellow]{escape(line)}[/]", highlight=False)
    if cmp.training:
        headers, rows, notes = fold_columns(TRAINING_HEADERS, training_table(cmp), TRAINING_FOLD, width)
        console.print(_rich_table("Training (selected checkpoint)", headers, rows))
        for line in notes:
            console.print(escape(line), highlight=False)
    if cmp.spec_diffs:
        console.print(_rich_table(f"Spec differences vs {cmp.baseline}", DIFF_HEADERS, diff_table(cmp)))
    console.print(escape(runs_line(cmp)), highlight=False)
    for line in note_lines(cmp):
        console.print(f"[yellow]{escape(line)}[/]", highlight=False)
    if failures_line(cmp):
        console.print(f"[yellow]{escape(failures_line(cmp))}[/]", highlight=False)
    for line in missing_lines(cmp):
        console.print(f"[yellow]missing[/] {escape(line)}", highlight=False)


def compact_table(title: str | None, gap: int = 2) -> Any:
    """A rich table framed like plain_grid (a rule under the headers, `gap` spaces between columns: 1 or 2): the most
    columns a terminal's width holds."""
    from rich import box
    from rich.table import Table

    pad = (0, 1) if gap > 1 else (0, 0)  # the box's blank divider is one space; padding adds the second
    return Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True,
        padding=pad,
    )  # fmt: skip


def _rich_table(title: str, headers: list[str], rows: list[list[str]]) -> Any:
    from rich.markup import escape

    t = compact_table(escape(title) if title else None)
    for i, h in enumerate(headers):
        t.add_column(escape(h), no_wrap=i == 0)  # why: the first column names the row (a plan): never cut
    for r in rows:
        t.add_row(*(escape(c) for c in r))
    return t


def _pairs(headers: list[str]) -> list[list[int]]:
    """The copy table's columns of each plan: (copy, vote) after the shot label."""
    return [[i, i + 1] for i in range(1, len(headers), 2)]
