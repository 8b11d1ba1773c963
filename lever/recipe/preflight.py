"""Checks run before any training: everything a recipe will need later, so nothing fails after hours of training."""

from __future__ import annotations

from lever.eval.preflight import check_eval
from lever.io import check_readable

from .recipe import Recipe


def preflight(r: Recipe, evaluate: bool = True) -> None:
    """Raise a LeverError for the first thing the recipe will need but cannot have.

    Training: the selection metric and the data files (checked when the recipe was built), the start
    checkpoint, the candidate data and features read and their rows checked (read once: training uses
    the same). With `evaluate`: the evaluation's inputs (`lever.eval.preflight.check_eval`).
    """
    if r.plan.start.kind == "checkpoint":
        check_readable(r.ws.path(r.plan.start.checkpoint), "start.checkpoint file")
    loaded = r.loaded
    if evaluate:
        check_eval(r.ws, r.plan.eval, loaded.features, r.sources.features, f"{r.lp.path}: ", r.log, r.plan.data.dataset)
