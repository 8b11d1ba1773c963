"""Accuracy broken down by a question's type, as the official VQA evaluator reports it (`--by answer_type`).

A results row carries the dataset's `answer_type` (VQAv2: yes/no, number, other; OK-VQA: other; the bundled
benchmark: its own types, sport ... number) and, where the dataset has one, its `question_type`. The accuracy of
a type is the mean of its questions' VQA accuracies in percent, as the official evaluator's `perAnswerType`
(round(100 * sum / n, 2)).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Any

import numpy as np

from lever.errors import LeverError

from .results import PlanRuns, QuestionResults

BY = ("answer_type", "question_type")


def check_by(by: str) -> str:
    """`--by FIELD`: a field a results row can be grouped by."""
    if by not in BY:
        raise LeverError(f"--by {by!r} is not known", hint=f"use one of {', '.join(BY)}")
    return by


def missing_types(by: str, where: str) -> LeverError:
    """The error for results whose rows hold no `by` (exit 2): which, and why."""
    hint = (
        "the dataset's annotations have no such field (VQAv2 and OK-VQA have answer_type and question_type; the "
        "bundled benchmark has answer_type)"
    )
    return LeverError(
        f"{where}: its results rows hold no {by}, so accuracy cannot be broken down by it",
        hint=hint + "; an evaluation written before rows held it gets it by `lever evaluate PLAN` (a re-scoring, no VLM)",
    )


def by_type(rows: list[dict[str, Any]], by: str, where: str) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """split -> shots -> type -> {"accuracy": percent (2 decimals), "n": questions}, types sorted; rows without
    the field are an error naming `where`."""
    check_by(by)
    if any(by not in r for r in rows) or not rows:
        raise missing_types(by, where)
    acc: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in rows:
        acc[(r["split"], str(r["shots"]), str(r[by]))].append(float(r["accuracy"]))
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for (split, shots, t), values in sorted(acc.items(), key=lambda kv: (kv[0][0], int(kv[0][1]), kv[0][2])):
        cell = {"accuracy": round(100.0 * sum(values) / len(values), 2), "n": len(values)}
        out.setdefault(split, {}).setdefault(shots, {})[t] = cell
    return out


def _subset(qr: QuestionResults, keep: np.ndarray) -> QuestionResults:
    """The results of the questions `keep` [n] bool marks."""
    idx = np.flatnonzero(keep).tolist()

    def pick(values: list | None) -> list | None:
        return None if values is None else [values[i] for i in idx]

    return replace(
        qr,
        question_ids=qr.question_ids[keep],
        accuracy=qr.accuracy[keep],
        failed=qr.failed[keep],
        answers=pick(qr.answers),
        demo_answers=pick(qr.demo_answers),
        human=pick(qr.human),
        types={k: [v[i] for i in idx] for k, v in qr.types.items()},
    )


def type_views(plans: list[PlanRuns], split: str, by: str) -> dict[str, list[PlanRuns]]:
    """type -> the plans with every evaluated run's `split` results restricted to the questions of that type (types
    sorted): tables over these are the official per-type breakdown, with their intervals and tests. A run whose
    rows hold no `by` is an error naming it."""
    check_by(by)
    found: set[str] = set()
    for pr in plans:
        for run in pr.evaluated_runs:
            for qr in ((run.results or {}).get(split) or {}).values():
                if by not in qr.types:
                    raise missing_types(by, f"{pr.name} (seed {run.seed}, {run.path})")
                found.update(qr.types[by])
    out: dict[str, list[PlanRuns]] = {}
    for t in sorted(found):
        views = []
        for pr in plans:
            runs = []
            for run in pr.runs:
                results = run.results
                if results is not None and split in results:
                    restricted = {s: _subset(qr, np.array(qr.types[by]) == t) for s, qr in results[split].items()}
                    results = {**results, split: restricted}
                runs.append(replace(run, results=results))
            views.append(replace(pr, runs=runs))
        out[t] = views
    return out
