"""Load what a run holds for reports: spec, status, metrics, selected checkpoint, eval results.

Runs are read through `lever.runs.layout.RunDir`, the one owner of a run's files. A file
that is absent is ``None`` (a report over half-finished runs shows gaps); a file that is
damaged (cut, edited, a count or digest that does not match) is a DamagedState naming the
file and the command that repairs it: reports never show numbers they cannot vouch for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lever.errors import DamagedState, LeverError
from lever.keys import content_key
from lever.records import StageEntry, Status
from lever.runs.layout import RunDir, RunsFolder, summarise
from lever.runs.store import find_plan_runs, plan_name, split_ref
from lever.spec.load import plan_files, suggest


@dataclass
class QuestionResults:
    """Per-question outcome of one (split, shots) evaluation, sorted by question id."""

    question_ids: np.ndarray  # [n] int64, sorted, unique
    accuracy: np.ndarray  # [n] float64 in [0, 1] (VQA accuracy is fractional)
    failed: np.ndarray  # [n] bool
    # What copy rate and majority vote need (`lever.report.copying`); None when the rows do not record it
    # (an evaluation by a lever before rows held the demonstrations' answers).
    answers: list[str] | None = None  # [n] the post-processed answer
    demo_answers: list[list[str]] | None = None  # [n][shots] the chosen demonstrations' answers, as the prompt shows them
    human: list[list[str]] | None = None  # [n][10] the human answers
    metric: str | None = None  # the VQA metric the rows were scored with
    # The dataset's types of each question where every row holds them (answer_type, question_type): accuracy by
    # type (`lever.report.breakdown`). Absent: a dataset without the field, or rows from before rows held it.
    types: dict[str, list[str]] = field(default_factory=dict)  # field -> [n]

    @property
    def n(self) -> int:
        return int(self.question_ids.shape[0])

    @property
    def mean_percent(self) -> float:
        """Mean accuracy in percent; NaN when there are no questions."""
        return float(self.accuracy.mean() * 100.0) if self.n else float("nan")

    @property
    def n_failed(self) -> int:
        return int(self.failed.sum())


# split -> shots -> per-question results
Results = dict[str, dict[int, QuestionResults]]


@dataclass
class RunData:
    """Everything a report needs from one seed run directory (absent files are None)."""

    path: Path
    plan: str
    spec_hash: str
    seed: int | None
    spec: dict | None = None
    provenance: dict | None = None
    status: Status | None = None
    metrics: list[dict] | None = None
    selected: StageEntry | None = None
    summary: dict | None = None
    eval_key: str | None = None
    results: Results | None = None
    damage: DamagedState | None = None  # set by scan_runs for a run it could not read: nothing else is loaded

    @property
    def state(self) -> str:
        if self.damage is not None:
            return "damaged"
        return self.status.state if self.status else "unknown"

    @property
    def overrides(self) -> list[str]:
        """The key.path=value overrides the run was made with ([] for the plan file as written)."""
        return list((self.provenance or {}).get("overrides") or [])

    @property
    def inputs(self) -> dict:
        """Content keys of the files the run trained (and was evaluated) on."""
        out = dict((self.provenance or {}).get("inputs") or {})
        world = (self.summary or {}).get("inputs")
        if world:  # model folders, OK-VQA files, image folders, features: one key (the detail is in summary.json)
            out["eval"] = content_key(world)
        return out

    @property
    def evaluated(self) -> bool:
        return self.results is not None or self.summary is not None

    def splits(self) -> list[str]:
        """Splits with results (per-question rows, else the summary)."""
        if self.results:
            return sorted(self.results)
        return sorted(((self.summary or {}).get("splits") or {}).keys())

    def shots(self, split: str) -> list[int]:
        if self.results and split in self.results:
            return sorted(self.results[split])
        table = ((self.summary or {}).get("splits") or {}).get(split) or {}
        return sorted(int(k) for k in table)

    def accuracy(self, split: str, shots: int) -> float | None:
        """Accuracy in percent for (split, shots): from per-question rows, else summary.json."""
        if self.results and shots in self.results.get(split, {}):
            return self.results[split][shots].mean_percent
        table = ((self.summary or {}).get("splits") or {}).get(split) or {}
        entry = table.get(str(shots))
        if isinstance(entry, dict) and isinstance(entry.get("accuracy"), (int, float)):
            return float(entry["accuracy"])
        return None

    def shots_used(self, split: str, shots: int) -> tuple[float, float] | None:
        """(mean demonstrations used, percent of selections that stopped early) for (split, shots), from summary.json;
        None unless the selector can stop before its shot count (model.stop)."""
        entry = (((self.summary or {}).get("splits") or {}).get(split) or {}).get(str(shots))
        if isinstance(entry, dict) and isinstance(entry.get("shots_used"), (int, float)):
            return float(entry["shots_used"]), float(entry.get("stopped_early", 0.0))
        return None

    def question_results(self, split: str, shots: int) -> QuestionResults | None:
        if not self.results:
            return None
        return self.results.get(split, {}).get(shots)


@dataclass
class PlanRuns:
    """All seed runs of one plan (its newest spec hash); ``missing`` says why there is nothing to show."""

    name: str
    runs: list[RunData] = field(default_factory=list)
    missing: str | None = None  # None | "not run" | "not evaluated" | why no hash was chosen
    command: str | None = None  # what to run to fill the gap

    @property
    def evaluated_runs(self) -> list[RunData]:
        return [r for r in self.runs if r.evaluated]

    @property
    def spec(self) -> dict | None:
        return next((r.spec for r in self.runs if r.spec is not None), None)

    @property
    def spec_hash(self) -> str | None:
        return self.runs[0].spec_hash if self.runs else None

    @property
    def overrides(self) -> list[str]:
        return next((r.overrides for r in self.runs if r.overrides), [])

    @property
    def n_planned(self) -> int:
        """How many seeds the plan's spec names (0 when unknown): a run in progress has fewer evaluated."""
        seeds = (self.spec or {}).get("seeds")
        return len(seeds) if isinstance(seeds, list) else 0


def parse_results(rows: list[dict], metric: str | None = None) -> Results:
    """Group verified results.jsonl rows into split -> shots -> QuestionResults; `metric` is the one they were
    scored with. The texts copy rate and majority vote need are kept when every row of a group has them."""
    grouped: dict[str, dict[int, dict[int, dict]]] = {}
    for row in rows:
        grouped.setdefault(str(row["split"]), {}).setdefault(int(row["shots"]), {})[int(row["question_id"])] = row
    out: Results = {}
    for split, by_shots in grouped.items():
        out[split] = {}
        for shots, by_q in by_shots.items():
            qids = np.array(sorted(by_q), dtype=np.int64)
            ordered = [by_q[q] for q in qids.tolist()]
            texts = all(isinstance(r.get("demo_answers"), list) and isinstance(r.get("answers"), list) for r in ordered)
            out[split][shots] = QuestionResults(
                question_ids=qids,
                accuracy=np.array([float(r["accuracy"]) for r in ordered], dtype=np.float64),
                failed=np.array([bool(r.get("failed", False)) for r in ordered], dtype=bool),
                answers=[str(r.get("answer", "")) for r in ordered] if texts else None,
                demo_answers=[list(r["demo_answers"]) for r in ordered] if texts else None,
                human=[list(r["answers"]) for r in ordered] if texts else None,
                metric=metric,
                types={k: [str(r[k]) for r in ordered] for k in ("answer_type", "question_type") if all(k in r for r in ordered)},
            )
    return out


def load_run(run_dir: Path | RunDir, plan: str | None = None) -> RunData:
    """Read one seed run: absent files become None, damaged ones raise a DamagedState naming the file.

    ``plan`` is the plan's name (it may hold a ``/``: ``original/plan5``); default: the folder's name.
    """
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir), plan)
    data = RunData(
        path=run.path,
        plan=run.plan,
        spec_hash=run.spec_hash,
        seed=run.seed,
        spec=run.spec(),
        provenance=run.provenance(),
        status=run.status(),
        metrics=run.metrics(),
        selected=run.selected(),
    )
    ev = run.selected_eval(data.selected)
    if ev is not None:
        data.eval_key = ev.key
        data.summary, rows = ev.read()
        data.results = parse_results(rows, data.summary.get("metric"))
    return data


def evaluation_accuracies(eval_dir: Path) -> dict[str, dict[int, float]]:
    """split -> shots -> accuracy (percent, unrounded) of one evaluation folder, from its verified rows: what every
    table rounds once (summary.json holds them rounded to 2 decimals already)."""
    from lever.runs.layout import EvalDir

    _, rows = EvalDir(Path(eval_dir), f"evaluate again with `lever evaluate --redo` ({eval_dir})").read()
    return {split: {s: qr.mean_percent for s, qr in by.items()} for split, by in parse_results(rows).items()}


def rescore_plan(pr: PlanRuns, metric: str) -> PlanRuns:
    """Score every evaluated run of `pr` again with VQA metric `metric`, from the verified rows of its selected
    evaluation: each row's raw output, post-processed, against the human answers the
    row holds; failed questions score 0. Rows without the human answers (an evaluation from before rows held them)
    are an error whose hint re-scores that evaluation once with `lever evaluate` (no VLM: the same raw outputs)."""
    from lever.eval.evaluate import scored_row
    from lever.eval.vqa import VQA_METRICS

    if metric not in VQA_METRICS:
        raise LeverError(f"--metric {metric!r} is not a VQA metric", hint=f"use one of: {', '.join(VQA_METRICS)}")
    for data in pr.runs:
        if data.results is None:
            continue
        run = RunDir(data.path, data.plan)
        ev = run.selected_eval(data.selected)
        if ev is None:  # selected when loaded, gone now
            raise DamagedState(f"{run.eval_root / 'selected.json'} changed while it was read", hint=run.eval_fix)
        summary, rows = ev.read()
        if any(not isinstance(r.get("answers"), list) or not r["answers"] for r in rows):
            raise LeverError(
                f"{ev.results}: its rows do not hold the human answers (an evaluation by an older lever), so they cannot "
                f"be scored with --metric {metric}",
                hint=f"run `{run.command('evaluate')}` once: it re-scores the stored outputs (no VLM) into rows that do",
            )
        rows = [scored_row(r, r["answers"], metric) for r in rows]
        data.results = parse_results(rows, metric)
        data.summary = {**summary, "metric": metric, "splits": summarise(rows)}
    return pr


def load_plan(plan: str, run_dirs: list[Path] | list[RunDir]) -> PlanRuns:
    """All seed runs of a plan, with a ``missing`` reason and the command that would fill it."""
    name = plan_name(plan)
    dirs = [d if isinstance(d, RunDir) else RunDir(Path(d), name) for d in run_dirs]
    runs = [load_run(d) for d in sorted(dirs, key=lambda d: (d.seed is None, d.seed or 0, d.path.name))]
    if runs:
        name = runs[0].plan  # why: the run dir holds the plan's own name
    pr = PlanRuns(name=name, runs=runs)
    if not runs:
        pr.missing, pr.command = "not run", f"lever run plans/{name}.toml"
    elif not pr.evaluated_runs:
        pr.missing, pr.command = "not evaluated", RunDir(runs[0].path).command("evaluate")  # with its overrides
    return pr


def selected_metrics(run: RunData) -> dict | None:
    """The metrics.jsonl row of the selected checkpoint (stage and epoch from selected.json)."""
    if not run.metrics or not run.selected:
        return None
    stage, epoch = run.selected.stage, run.selected.epoch
    for row in run.metrics:
        if row.get("stage") == stage and row.get("epoch") == epoch:
            return row
    return None


def scan_runs(root: Path) -> list[RunData]:
    """Every run under the runs folder ``root``, sorted by plan, then newest hash first, then seed.

    A damaged run is still listed, as a RunData holding only its names and ``damage`` (the file, the problem
    and the repair): one damaged file hides none of the other runs, and none of its own numbers are shown."""
    found = []
    for run in RunsFolder(Path(root)).scan():
        try:
            found.append(load_run(run))
        except DamagedState as err:
            found.append(RunData(path=run.path, plan=run.plan, spec_hash=run.spec_hash, seed=run.seed, damage=err))
    return found


def damage_summary(run: RunData) -> str:
    """A damaged run's problem in a few words: the message with paths relative to the run (or its runs folder)."""
    text = str(run.damage.args[0]) if run.damage else ""
    root = run.path.parents[2 + run.plan.count("/")]
    return text.replace(f"{run.path}/", "").replace(f"{root}/", "")


def check_known(plan: str, plans_dir: Path, runs_root: Path) -> None:
    """Raise when `plan` names neither a plan file nor any run: a typo, not a plan waiting to be run."""
    ref, _ = split_ref(plan)  # plan5@1a2b names a run of plan5
    name = plan_name(ref)
    if (runs_root / name).is_dir() or Path(ref).is_file() or (plans_dir / f"{name}.toml").is_file():
        return
    plans = [plan_name(p, plans_dir) for p in plan_files(plans_dir)]
    runs = RunsFolder(runs_root).plans()
    known = sorted(set(plans) | set(runs))
    raise LeverError(
        f"plan '{plan}': no plan file {plans_dir / (name + '.toml')} and no runs under {runs_root}",
        hint=f"{suggest(name, known)}known plans: {', '.join(plans) or '(none)'}; plans with runs: {', '.join(runs) or '(none)'}",
    )


def current_hash(plan: str, plans_dir: Path) -> str | None:
    """The spec hash of the plan file as it is now (None when the plan has no file here)."""
    from lever.spec import load_plan as load_spec

    try:
        return load_spec(plan, (), plans_dir).hash
    except LeverError:
        return None


def plan_runs(plan: str, root: Path, plans_dir: Path, spec_hash: str | None = None) -> PlanRuns:
    """A plan's runs of one spec hash: `spec_hash`, else the one named as `plan@hash`, else the plan
    file's current one (in `plans_dir`); never silently another (the gap says which hashes exist and how to name one)."""
    ref, named = split_ref(plan)
    if spec_hash is not None:
        found = find_plan_runs(f"{ref}@{spec_hash}", root)
    else:
        found = find_plan_runs(plan, root, None if named else current_hash(ref, plans_dir))
    pr = load_plan(found.name, found.runs)
    if named and "=" in named:  # a sweep's derived plan keeps its own name: a column beside the base plan's
        pr.name = f"{pr.name}@{named}"
    if found.problem:
        pr.missing, pr.command = found.problem, found.hint
    return pr


def damaged_ok(plan: str, root: Path, plans_dir: Path) -> PlanRuns:
    """`plan_runs`, where a damaged run makes the plan one marked gap (`missing` names the file, `command` the
    repair) instead of an error: a report over many plans shows the others."""
    try:
        return plan_runs(plan, root, plans_dir)
    except DamagedState as err:
        name = plan_name(split_ref(plan)[0])
        return PlanRuns(name=name, missing=f"damaged: {err.args[0]}", command=err.hint)


def named_plans(refs: list[str], root: Path, plans_dir: Path) -> list[PlanRuns]:
    """The plans `refs` name (names, files, plan@HASH), each known (`check_known`), damaged ones as marked gaps
    (`damaged_ok`); a plan named twice is one; two spec hashes of one plan are two, named plan@HASH."""
    for ref in refs:
        check_known(ref, plans_dir, root)
    found: list[PlanRuns] = []
    for ref in refs:
        pr = damaged_ok(ref, root, plans_dir)
        if any(pr.name == q.name and pr.spec_hash == q.spec_hash for q in found):
            continue
        found.append(pr)
    twice = {pr.name for pr in found if sum(q.name == pr.name for q in found) > 1}
    for pr in found:  # why: one name for two hashes would be one row, or a column that drops a side
        if pr.name in twice and "@" not in pr.name and pr.spec_hash:
            pr.name = f"{pr.name}@{pr.spec_hash}"
    return found


def test_evaluations(name: str, root: Path) -> tuple[int, int]:
    """How often plan `name`'s results on the held-out `test` split were computed: (evaluation folders holding test
    results, over every spec hash and seed; spec hashes among them). Each look at test spends some of it: a
    choice made after several looks is a choice made on test."""
    folder = RunsFolder(Path(root))
    found, hashes = 0, set()
    for spec_hash in folder.hashes(name):
        for run in folder.seed_runs(name, spec_hash):
            root_ = run.eval_root
            for ev in sorted(root_.iterdir()) if root_.is_dir() else []:
                try:
                    summary = run.eval_dir(ev.name).summary() if ev.is_dir() else None
                except DamagedState:
                    continue
                if summary and "test" in (summary.get("splits") or {}):
                    found += 1
                    hashes.add(spec_hash)
    return found, len(hashes)


def test_note(names: list[str], root: Path) -> str:
    """The note a table on the test split carries: how often each plan's test results were computed."""
    parts = []
    for name in names:
        n, h = test_evaluations(plan_name(split_ref(name)[0]), root)
        parts.append(f"{name} {n} evaluation(s) under {h} spec hash(es)")
    return "held-out test split, computed so far: " + ", ".join(parts) + " (choose on val; confirm once on test)"
