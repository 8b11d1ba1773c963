"""Checks run before any training: everything a recipe will need later, so nothing fails after hours of training."""

from __future__ import annotations

from lever.eval.preflight import check_eval
from lever.io import check_readable

from .recipe import Recipe


def preflight(r: Recipe, evaluate: bool = True) -> None:
    """Raise a LeverError for the first thing the recipe will need but cannot have.

    Training: the selection metric and the data files (checked when the recipe was built), the start
    checkpoint, the candidate data and features read and their rows checked (read once: training uses
    the same; a plan that trains nothing reads only its features). With `evaluate`: the evaluation's inputs
    (`lever.eval.preflight.check_eval`).
    """
    if r.trains and r.plan.start.kind == "checkpoint":
        check_readable(r.ws.path(r.plan.start.checkpoint), "start.checkpoint file")
    features = r.train_features  # with the candidate data when the plan trains (a baseline selector reads none)
    if evaluate:
        check_eval(r.ws, r.plan.eval, features, r.features_file, f"{r.lp.path}: ", r.log, r.plan.data.dataset)
