"""What a selector does beyond copying, from the stored per-question results.

With retrieved demonstrations a VLM often answers with one of the demonstrations' answers, so
retrieval can be close to a majority vote over them. Two numbers per plan and shot count say how
close:

* copy rate: the share of answers equal to one of the chosen demonstrations' answers (as the
  prompt shows them: each demonstration's most frequent human answer), both sides normalised as
  VQA accuracy normalises a prediction (`normalize_answer`: punctuation, number words, articles,
  contractions; what every metric applies to a prediction);
* majority vote: the VQA accuracy, under the metric the rows were scored with, of answering each
  question with the most frequent of its demonstrations' answers (counted after the same
  normalisation; ties go to the answer placed first in the prompt). No model is involved.

A question with no demonstration (zero shots) or a failed answer has no copy flag, and a question
with no demonstration has no vote: both are NaN and left out of the means.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from lever.eval.vqa import normalize_answer, vqa_accuracy

from .results import QuestionResults, RunData


def majority_vote(demo_answers: list[str]) -> str | None:
    """The most frequent demonstration answer after normalisation, as first shown; ties go to the one shown first.

    ["dog", "cat", "the dog"] -> "dog"; ["cat", "dog"] -> "cat"; [] -> None.
    """
    if not demo_answers:
        return None
    keys = [normalize_answer(a) for a in demo_answers]
    top = Counter(keys).most_common(1)[0][0]  # most_common keeps first-seen order among equal counts
    return demo_answers[keys.index(top)]


def copied(answer: str, demo_answers: list[str]) -> bool:
    """True when `answer` equals one of `demo_answers` after normalisation."""
    return normalize_answer(answer) in {normalize_answer(a) for a in demo_answers}


def copy_flags(qr: QuestionResults) -> np.ndarray | None:
    """[n] 1.0 where the answer copies a demonstration's answer, 0.0 where not, NaN with no demonstration or a
    failed answer; None when the rows do not record the demonstrations' answers."""
    if qr.answers is None or qr.demo_answers is None:
        return None
    return np.array(
        [
            np.nan if failed or not demos else float(copied(answer, demos))
            for answer, demos, failed in zip(qr.answers, qr.demo_answers, qr.failed.tolist())
        ],
        dtype=np.float64,
    )


def vote_accuracy(qr: QuestionResults) -> np.ndarray | None:
    """[n] VQA accuracy in [0, 1] of the majority vote over each question's demonstrations' answers, under the metric
    the rows were scored with; NaN with no demonstration; None when the rows do not record what it needs."""
    if qr.demo_answers is None or qr.human is None or qr.metric is None:
        return None
    votes = [majority_vote(demos) for demos in qr.demo_answers]
    return np.array(
        [np.nan if v is None else vqa_accuracy(v, human, qr.metric) for v, human in zip(votes, qr.human)], dtype=np.float64
    )


def percent(values: np.ndarray | None) -> float | None:
    """100 * the mean of the defined (non-NaN) entries; None when there are none."""
    if values is None:
        return None
    defined = values[~np.isnan(values)]
    return float(defined.mean() * 100.0) if defined.size else None


def lacks_texts(run: RunData, split: str) -> bool:
    """True when some of the run's rows on `split` do not record the demonstrations' answers (an older evaluation)."""
    return any(qr.demo_answers is None for qr in ((run.results or {}).get(split) or {}).values())
