"""Scoring demonstration sequences with the VLM: the one entry point of `lever data generate` and of
on-policy rewards.

A sequence is a query plus its ordered demonstrations. The backend answers it (the evaluation's
prompt protocol, beams and answer length) and, where it can, gives the probability of the query's
ground-truth answer after the prompt; the answer is post-processed and scored with the protocol's
VQA metric. On the `hf` backend both come from one prefill per prompt, batched without padding,
with each image encoded once (`lever.eval.hf`).
"""

from __future__ import annotations

from typing import Any

from .backend import Backend, Item, Request, Response
from .postprocess import postprocess
from .vqa import normalize_answer, relevance, vqa_accuracy


def score_requests(
    backend: Backend, metric: str, requests: list[Request], gt_probs: bool | list[float | None] = True, rel: bool = True
) -> list[dict[str, Any]]:
    """Score each request (a query and its ordered demonstrations); one record per request, in order.

    Each record holds the candidate-data fields (docs/data.md): `vqa_raw_generation` (the model's text),
    `vqa_pred_answer` (post-processed), `vqa_acc_score` (the VQA accuracy by `metric`, in [0, 1]),
    `vqa_correct` (acc > 0), `vqa_gt_prob` (p(ground truth | prompt); absent when there is none), the
    relevance fields, `vqa_eval_mode` and `eval_failed` (a question the model could not take scores 0 and
    says so). `lever.data.rewards.reward_of` turns them into a reward (`lever.eval.rollout.Scoring`).

    gt_probs: True = ask the backend for them (on `hf`, from the answer's own prefill), False = none, or
    the probabilities themselves. rel: compute the relevance fields (they cost more than the rest together, and only
    the reward hard_plus_gtprob_plus_rel reads them). From selector pointers over train rows:
    `Request("train", items[q], [items[j] for j in seq])`. Pass many requests at once (every sequence of
    every query of a step): the backend batches across them.
    """
    if isinstance(gt_probs, list):
        responses, probs = backend.answer(requests), gt_probs
    else:
        responses, probs = answer_with_gt_probs(backend, requests, gt_probs)
    judged: dict[tuple[str, tuple[str, ...]], tuple[str, float, dict[str, float]]] = {}  # one answer to one question
    return [_record(r.query, resp, p, metric, rel, judged) for r, resp, p in zip(requests, responses, probs)]


def answer_with_gt_probs(
    backend: Backend, requests: list[Request], gt_probs: bool = True
) -> tuple[list[Response], list[float | None]]:
    """The backend's answers and, when `gt_probs` and it can, its probabilities of the ground-truth answers."""
    if not gt_probs:
        return backend.answer(requests), [None] * len(requests)
    both = getattr(backend, "answer_with_gt_probs", None)
    if both is not None:
        return both(requests)
    fn = getattr(backend, "gt_probs", None)
    probs = fn(requests) if fn else [None] * len(requests)
    return backend.answer(requests), probs


def _record(query: Item, resp: Response, p: float | None, metric: str, rel: bool, judged: dict) -> dict[str, Any]:
    """The record of one answer. `judged`: the (prediction, accuracy, relevance) of answers already judged against the
    same human answers (a group's sequences mostly get a few distinct answers: post-processing, normalising and
    matching dominated the scoring of a batch on the simulated VLM), filled as it goes."""
    key = (resp.raw, tuple(query.answers))
    seen = None if resp.failed else judged.get(key)
    if seen is not None:
        pred, acc, rel_fields = seen
    else:
        pred = "" if resp.failed else postprocess(resp.raw)
        acc = 0.0 if resp.failed else vqa_accuracy(pred, query.answers, metric)
        rel_fields = relevance(pred, [normalize_answer(a) for a in query.answers]) if rel else {}
        if not resp.failed:
            judged[key] = (pred, acc, rel_fields)
    return {
        "vqa_raw_generation": resp.raw,
        "vqa_pred_answer": pred,
        "vqa_correct": int(acc > 0),
        "vqa_acc_score": round(acc, 4),
        **({} if p is None else {"vqa_gt_prob": round(p, 4)}),
        **rel_fields,
        "vqa_eval_mode": "error" if resp.failed else "vqaEval",
        "eval_failed": resp.failed,
    }
