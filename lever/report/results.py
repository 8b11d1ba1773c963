"""Load what a run directory holds: spec, status, metrics, selected checkpoint, eval results.

A run directory is ``<runs_root>/<plan>/<spec_hash>/seed-<seed>/``. Every loader here
returns ``None`` (or a ``missing`` reason) for a file that is absent or unreadable, so a
report over half-finished runs shows gaps instead of a traceback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lever import io
from lever.spec.load import plan_name as spec_plan_name


@dataclass
class QuestionResults:
    """Per-question outcome of one (split, shots) evaluation, sorted by question id."""

    question_ids: np.ndarray  # [n] int64, sorted, unique
    accuracy: np.ndarray  # [n] float64 in [0, 1] (VQA accuracy is fractional)
    failed: np.ndarray  # [n] bool

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
    status: dict | None = None
    metrics: list[dict] | None = None
    selected: dict | None = None
    summary: dict | None = None
    eval_key: str | None = None
    results: Results | None = None

    @property
    def state(self) -> str:
        return str((self.status or {}).get("state", "unknown"))

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

    def question_results(self, split: str, shots: int) -> QuestionResults | None:
        if not self.results:
            return None
        return self.results.get(split, {}).get(shots)


@dataclass
class PlanRuns:
    """All seed runs of one plan (its newest spec hash); ``missing`` says why there is nothing to show."""

    name: str
    runs: list[RunData] = field(default_factory=list)
    missing: str | None = None  # None | "not run" | "not evaluated"
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


def read_json(path: Path) -> Any | None:
    """A JSON file's content, or None when it is absent or not valid JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path) -> list[dict] | None:
    """The object lines of a JSONL file (a torn last line is skipped), or None when absent."""
    return io.read_jsonl(path) if path.is_file() else None


def latest_eval_dir(run_dir: Path) -> Path | None:
    """The evaluation of the run's selected checkpoint (named by ``eval/selected.json``), else the
    ``eval/<key>/`` dir whose summary.json (else results.jsonl) was modified last.

    Why: `lever evaluate --epoch N` adds evaluations of other epochs; tables compare selections.
    """
    eval_root = run_dir / "eval"
    if not eval_root.is_dir():
        return None
    pointer = read_json(eval_root / "selected.json")
    if isinstance(pointer, dict) and (eval_root / str(pointer.get("key")) / "summary.json").is_file():
        return eval_root / str(pointer["key"])
    best: tuple[float, Path] | None = None
    for name in ("summary.json", "results.jsonl"):
        for f in eval_root.glob(f"*/{name}"):
            mtime = f.stat().st_mtime
            if best is None or mtime > best[0]:
                best = (mtime, f.parent)
        if best is not None:
            return best[1]
    return None


def parse_results(rows: list[dict]) -> Results:
    """Group results.jsonl rows into split -> shots -> QuestionResults (a later duplicate row wins)."""
    grouped: dict[str, dict[int, dict[int, tuple[float, bool]]]] = {}
    for row in rows:
        try:
            split, shots, qid = str(row["split"]), int(row["shots"]), int(row["question_id"])
            acc = float(row.get("accuracy") or 0.0)
        except (KeyError, TypeError, ValueError):
            continue  # why: a malformed row should cost one question, not the report
        grouped.setdefault(split, {}).setdefault(shots, {})[qid] = (acc, bool(row.get("failed", False)))
    out: Results = {}
    for split, by_shots in grouped.items():
        out[split] = {}
        for shots, by_q in by_shots.items():
            qids = np.array(sorted(by_q), dtype=np.int64)
            out[split][shots] = QuestionResults(
                question_ids=qids,
                accuracy=np.array([by_q[q][0] for q in qids.tolist()], dtype=np.float64),
                failed=np.array([by_q[q][1] for q in qids.tolist()], dtype=bool),
            )
    return out


def _seed_of(run_dir: Path) -> int | None:
    name = run_dir.name
    if name.startswith("seed-"):
        try:
            return int(name[len("seed-") :])
        except ValueError:
            return None
    return None


def load_run(run_dir: Path, plan: str | None = None) -> RunData:
    """Read one ``<plan>/<hash>/seed-<n>/`` directory; absent or broken files become None.

    ``plan`` is the plan's name (it may hold a ``/``: ``original/plan5``); default: the folder's name.
    """
    run_dir = Path(run_dir)
    run = RunData(
        path=run_dir,
        plan=plan or run_dir.parent.parent.name,
        spec_hash=run_dir.parent.name,
        seed=_seed_of(run_dir),
        spec=read_json(run_dir / "spec.json"),
        status=read_json(run_dir / "status.json"),
        metrics=read_jsonl(run_dir / "metrics.jsonl"),
        selected=read_json(run_dir / "selected.json"),
    )
    eval_dir = latest_eval_dir(run_dir)
    if eval_dir is not None:
        run.eval_key = eval_dir.name
        run.summary = read_json(eval_dir / "summary.json")
        rows = read_jsonl(eval_dir / "results.jsonl")
        run.results = parse_results(rows) if rows else None
    return run


def plan_name(plan: str) -> str:
    """``plans/original/plan5.toml`` -> ``original/plan5``; a bare name (``plan5``, ``original/plan5``) is kept."""
    return spec_plan_name(plan)


def load_plan(plan: str, run_dirs: list[Path]) -> PlanRuns:
    """All seed runs of a plan, with a ``missing`` reason and the command that would fill it."""
    name = plan_name(plan)
    runs = [load_run(d, name) for d in sorted(run_dirs, key=lambda d: (_seed_of(d) is None, _seed_of(d) or 0, d.name))]
    pr = PlanRuns(name=name, runs=runs)
    if not runs:
        pr.missing, pr.command = "not run", f"lever run plans/{name}.toml"
    elif not pr.evaluated_runs:
        pr.missing, pr.command = "not evaluated", f"lever evaluate plans/{name}.toml"
    return pr


def selected_metrics(run: RunData) -> dict | None:
    """The metrics.jsonl row of the selected checkpoint (stage and epoch from selected.json)."""
    if not run.metrics or not run.selected:
        return None
    stage, epoch = run.selected.get("stage"), run.selected.get("epoch")
    for row in run.metrics:
        if row.get("stage") == stage and row.get("epoch") == epoch:
            return row
    return None


def scan_runs(root: Path) -> list[RunData]:
    """Every ``<plan>/<hash>/seed-*`` run under ``root``, sorted by plan, then newest hash first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = []
    for name, plan_dir in _plan_dirs(root):
        hash_dirs = sorted((h for h in plan_dir.iterdir() if h.is_dir()), key=lambda h: -h.stat().st_mtime)
        for hash_dir in hash_dirs:
            for seed_dir in sorted(hash_dir.glob("seed-*"), key=lambda d: (_seed_of(d) or 0, d.name)):
                if seed_dir.is_dir():
                    runs.append(load_run(seed_dir, name))
    return runs


def _plan_dirs(root: Path, prefix: str = "", depth: int = 0) -> list[tuple[str, Path]]:
    """(name, folder) of every plan under ``root``: a folder whose sub-folders hold ``seed-*`` runs.
    Plan families nest (``original/plan5``); ``_stages`` and hidden folders are skipped."""
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        if any(h.is_dir() and any(h.glob("seed-*")) for h in d.iterdir()):
            out.append((prefix + d.name, d))
        elif depth < 2:
            out += _plan_dirs(d, f"{prefix}{d.name}/", depth + 1)
    return out
