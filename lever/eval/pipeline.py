"""The whole recipe, one call per command: train a plan's seed (lever.runs), then evaluate it (lever.eval).

`lever run` calls `train_and_evaluate`, `lever evaluate` calls `evaluate_plan`; the CLI only
parses and renders. This module lives in the eval layer because it is the lowest layer that
sees both training and evaluation: `lever.runs` stays free of evaluation, so every arrow of
the house points one way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lever.errors import LeverError
from lever.runs.layout import EvalDir, RunDir
from lever.runs.recipe import input_keys, memo_file
from lever.runs.run import RunOutcome, end, run_dir_of, run_plan, write_failed
from lever.runs.sources import resolve_train_sources
from lever.spec import LoadedPlan, Workspace
from lever.train.stage import Reporter, SilentReporter

from .distributed import ranks
from .evaluate import Progress, checkpoint_for, evaluate_run


@dataclass
class Evaluated:
    """One seed's evaluation: where it lives and its verified summary."""

    run: RunDir
    eval_dir: EvalDir
    summary: dict[str, Any]


def evaluate_plan(
    lp: LoadedPlan,
    ws: Workspace,
    seed: int,
    *,
    epoch: int | None = None,
    redo: bool = False,
    log: Callable[[str], None] = print,
    progress: Progress | None = None,
) -> Evaluated:
    """Evaluate a trained seed run (its selected checkpoint, or `epoch` of its final stage); the run becomes `done`.

    Ctrl-C marks the run `interrupted` and a failed write marks it `failed` (the next `lever run`
    resumes the evaluation from its partial answers); other errors (bad input, damaged results) leave
    its status alone."""
    run = run_dir_of(ws, lp, seed)
    checkpoint_for(run, epoch)  # a run that never trained fails here, before any data is read or generated
    src = resolve_train_sources(ws, lp.plan.data.candidates, lp.plan.data.features, log)
    trained_on = (run.provenance() or {}).get("inputs")
    if trained_on is not None and trained_on != input_keys(src, memo_file(ws)):  # stale, not failed: the status stays
        raise LeverError(
            f"{run.path} was trained on other candidate data or features than the plan's files hold now",
            hint=f"train it again first: {run.command('run')}",
        )
    try:
        ev, summary = evaluate_run(
            run, lp.plan, ws, seed, epoch=epoch, features_path=src.features, redo=redo, log=log, progress=progress
        )
    except KeyboardInterrupt:
        if epoch is None:  # an extra --epoch evaluation says nothing about the run itself
            end(run, "interrupted", "evaluation stopped by Ctrl-C; `lever run` on the plan resumes it")
        raise
    except OSError as err:
        raise write_failed(run, err) from None
    if epoch is None and ranks().is_main:
        run.set_state("done")
    return Evaluated(run, ev, summary)


def train_and_evaluate(
    lp: LoadedPlan,
    ws: Workspace,
    seed: int,
    reporter: Reporter | None = None,
    *,
    evaluate: bool = True,
    redo: bool = False,
    retrain_stage: str | None = None,
    progress: Progress | None = None,
) -> tuple[RunOutcome, Evaluated | None]:
    """The recipe for one seed: prepare data, build the model, train the stages, select, then evaluate."""
    rep = reporter or SilentReporter()
    outcome = run_plan(lp, ws, seed, rep, redo=redo, retrain_stage=retrain_stage)
    if not evaluate:
        return outcome, None
    # A finished evaluation is verified before it is reused; redoing it is `lever evaluate PLAN --redo`'s job.
    return outcome, evaluate_plan(lp, ws, seed, log=rep.info, progress=progress)


EXPORT_FORMATS = ("lever-plus-v2",)


def export_checkpoint(lp: LoadedPlan, ws: Workspace, seed: int, fmt: str, out: Path) -> dict[str, Any]:
    """Write a trained plan's selected checkpoint in another project's layout; returns what was written.

    lever-plus-v2: the original's v2 Lightning checkpoint (lever.train.original_ckpt.save_v2), which its
    inference reads. Only model.arch = "lever-plus-v3" maps (its weights are the original's, name for name),
    with one attention layer (v2 has one).
    """
    from lever.train.checkpoint import load_weights
    from lever.train.original_ckpt import save_v2

    if fmt not in EXPORT_FORMATS:
        raise LeverError(f"--format {fmt!r} is not known", hint=f"use one of {', '.join(EXPORT_FORMATS)}")
    if lp.plan.model.arch != "lever-plus-v3":
        raise LeverError(
            f"plan {lp.name} has model.arch = '{lp.plan.model.arch}': lever's selector has other layers than the "
            "original's (docs/architecture.md), so its weights cannot be written in the original's layout",
            hint="train with model.arch = 'lever-plus-v3' (plans/original/) to export to the original",
        )
    ckpt = checkpoint_for(run_dir_of(ws, lp, seed), None)
    save_v2(out, load_weights(ckpt["path"]), ckpt.get("epoch") or 0)
    return {"out": str(out), "stage": ckpt["stage"], "epoch": ckpt["epoch"], "format": fmt}
