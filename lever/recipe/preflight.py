"""Checks run before any training: everything a recipe will need later, so nothing fails after hours of training."""

from __future__ import annotations

from lever.errors import LeverError
from lever.eval.preflight import check_eval
from lever.eval.world import EvalInputs
from lever.io import check_readable

from .recipe import Recipe


def preflight(r: Recipe, evaluate: bool = True) -> None:
    """Raise a LeverError for the first thing the recipe will need but cannot have.

    Training: the selection metric and the data files (checked when the recipe was built), the start
    checkpoint, the candidate data and features read and their rows checked (read once: training uses
    the same; a plan that trains nothing reads only its features). With `evaluate`: the evaluation's inputs
    (`lever.eval.preflight.check_eval`).
    """
    if evaluate:  # the protocol and eval files first: a bad setting fails before any data is read or generated
        eval_inputs(r)  # checked here, once: evaluation uses what passed
    if r.trains and r.plan.start.kind == "checkpoint":
        check_readable(r.ws.path(r.plan.start.checkpoint), "start.checkpoint file")
    r.train_features  # noqa: B018  the candidate data read and checked when the plan trains (a baseline selector reads none)
    check_behaviour(r)
    if evaluate:
        eval_preflight(r)


def eval_inputs(r: Recipe) -> EvalInputs:
    """The recipe's checked evaluation inputs (`Recipe.eval_inputs`, checked once), an error named with the plan
    whose settings ask for them."""
    try:
        return r.eval_inputs
    except LeverError as err:
        raise LeverError(f"{r.lp.path}: {err.args[0]}", hint=err.hint) from None


def eval_preflight(r: Recipe) -> None:
    """The evaluation's inputs (`lever.eval.preflight.check_eval`: model folders and their weight files, eval
    images decoded, the features against the CLIP model): `lever run` checks them before training, `lever
    evaluate` before the VLM answers."""
    check_eval(eval_inputs(r), r.train_features, r.features_file, f"{r.lp.path}: ", r.log)


def check_behaviour(r: Recipe) -> None:
    """grpo.off_policy = "truncated_is" weights by the data's behaviour log-probs (per pick at is_level "token"):
    a data file without them is refused now, not after the RCE stage has trained."""
    grpo = r.plan.grpo
    if grpo.off_policy == "none" or not any(s.kind == "grpo" for s in r.stages):
        return
    token = grpo.is_level == "token"
    if not r.loaded.data.has_behaviour(steps=token):
        what = "per-pick behaviour log-probs ('behaviour_step_logps')" if token else "behaviour log-probs ('behaviour_logp')"
        raise LeverError(
            f"{r.lp.path}: grpo.off_policy = {grpo.off_policy!r} (is_level {grpo.is_level!r}) needs {what}, "
            f"and the candidate data {r.sources.candidates} holds none",
            hint="regenerate the data with `lever data generate` (it records each sequence's behaviour log-probs), "
            'or set grpo.off_policy = "none"',
        )
