"""Evaluating a recipe: which checkpoint, verified; the evaluation folder of its key; scoring (lever.eval); the record.

`lever run` calls `train_and_evaluate`, `lever evaluate` calls `evaluate`; the CLI only parses and renders.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from typing import Any

from lever.errors import DamagedState, LeverError
from lever.eval.distributed import barrier, ranks
from lever.eval.evaluate import Progress, eval_key, score
from lever.eval.sources import eval_world
from lever.model import SelectorBase, build_selector
from lever.records import StageEntry
from lever.runs.layout import EvalDir, RunDir
from lever.runs.trackers import Trackers
from lever.train.checkpoint import checkpoint_info, epoch_digest, load_into, load_verified, state_digest
from lever.train.stage import Reporter, SilentReporter, checkpoint_epochs, checkpoint_path

from .recipe import Recipe
from .train import RunOutcome, end, train, write_failed


@dataclass
class Evaluated:
    """One seed's evaluation: where it lives and its verified summary."""

    run: RunDir
    eval_dir: EvalDir
    summary: dict[str, Any]


def checkpoint_for(run: RunDir, epoch: int | None) -> StageEntry:
    """The run's verified selection, or epoch `epoch` of its final stage (recorded as a hand pick)."""
    state = run.state
    selected = run.selected() if state in ("trained", "done") else None
    if selected is None and state in ("trained", "done"):
        raise DamagedState(f"{run.selected_file} is missing but the run is marked {state}", hint=run.fix)
    if selected is None:
        raise LeverError(
            f"{run.path} has no selected checkpoint: the run has not finished training ({state or 'never started'})",
            hint=f"run `{run.command('run')}` first",
        )
    if epoch is None:
        return selected
    stage_dir = run.path_of(selected.dir)
    path = checkpoint_path(stage_dir, epoch)
    if not path.is_file():
        have = checkpoint_epochs(stage_dir)
        raise LeverError(
            f"--epoch {epoch}: stage '{selected.stage}' has no such checkpoint",
            hint=f"its epochs are {have[0]}-{have[-1]}" if have else "it has no checkpoints",
        )
    fix = run.retrain_fix(selected.stage)
    info = checkpoint_info(path, fix) or {}
    return replace(
        selected,
        epoch=epoch,
        checkpoint=run.folder.store_rel(path),
        sha256=epoch_digest(path, epoch, fix),
        value=(info.get("metrics") or {}).get(selected.metric),
        reason=f"epoch {epoch} chosen with --epoch",
    )


def selected_model(r: Recipe, epoch: int | None = None, dim: int | None = None) -> tuple[StageEntry, SelectorBase, str]:
    """The run's selected (or `epoch`) checkpoint loaded into the plan's selector, its file verified against
    its recorded SHA-256: (entry, model in eval mode, digest of the weights)."""
    entry = checkpoint_for(r.run, epoch)
    state = load_verified(r.run.path_of(entry.checkpoint), entry.sha256, r.run.retrain_fix(entry.stage))
    model = build_selector(dim, r.plan.model) if dim is not None else r.model()
    load_into(model, state, entry.checkpoint)
    return entry, model.float().eval(), state_digest(state)


def evaluate(
    r: Recipe,
    *,
    epoch: int | None = None,
    redo: bool = False,
    progress: Progress | None = None,
) -> Evaluated:
    """Evaluate a trained seed run (its selected checkpoint, or `epoch` of its final stage); the run becomes `done`.

    Ctrl-C marks the run `interrupted` and a failed write marks it `failed` (the next `lever run`
    resumes the evaluation from its partial answers); other errors (bad input, damaged results) leave
    its status alone."""
    run = r.run
    checkpoint_for(run, epoch)  # a run that never trained fails here, before any data is read or generated
    if r.stale():  # stale, not failed: the status stays
        raise LeverError(
            f"{run.path} was trained on other candidate data or features than the plan's files hold now",
            hint=f"train it again first: {run.command('run')}",
        )
    try:
        ev, summary = _evaluate(r, epoch, redo, progress)
    except KeyboardInterrupt:
        if epoch is None:  # an extra --epoch evaluation says nothing about the run itself
            end(run, "interrupted", "evaluation stopped by Ctrl-C or SIGTERM; `lever run` on the plan resumes it")
        raise
    except OSError as err:
        raise write_failed(run, err) from None
    if epoch is None and ranks().is_main:
        run.set_state("done")
    return Evaluated(run, ev, summary)


def _evaluate(r: Recipe, epoch: int | None, redo: bool, progress: Progress | None) -> tuple[EvalDir, dict[str, Any]]:
    run, spec = r.run, r.plan.eval
    entry, model, digest = selected_model(r, epoch)
    world = eval_world(r.ws, spec, r.sources.features, r.log, r.loaded.features)
    ev = run.eval_dir(eval_key(digest, world, spec, r.seed))
    rk = ranks()
    if redo:
        if rk.is_main and ev.path.exists():
            shutil.rmtree(ev.path)
        barrier(rk)
    if ev.complete:
        summary, _ = ev.read()
        if (summary.get("checkpoint") or {}).get("sha256") != entry.sha256:
            raise DamagedState(f"{ev.summary_file} is not an evaluation of {entry.checkpoint}", hint=run.eval_fix)
        r.log(f"evaluation cached in {ev.path}")
    else:
        checkpoint = {
            "stage": entry.stage,
            "epoch": entry.epoch,
            "metric": entry.metric,
            "value": entry.value,
            "reason": entry.reason,
            "checkpoint": entry.checkpoint,
            "sha256": entry.sha256,
        }
        summary = score(model, ev, world, spec, r.seed, checkpoint, device=r.plan.device, log=r.log, progress=progress)
    if epoch is None and rk.is_main:  # the selected checkpoint's evaluation is the one tables compare; --epoch ones are extras
        run.mark_selected_eval(ev)
    return ev, summary


def train_and_evaluate(
    r: Recipe,
    reporter: Reporter | None = None,
    *,
    evaluate_it: bool = True,
    redo: bool = False,
    retrain_stage: str | None = None,
    progress: Progress | None = None,
) -> tuple[RunOutcome, Evaluated | None]:
    """The recipe for one seed: train the stages, select, then evaluate."""
    rep = reporter or SilentReporter()
    trackers = Trackers(r.ws.loggers, r.run, r.lp) if r.ws.loggers and ranks().is_main else None
    try:
        outcome = train(r, trackers.wrap(rep) if trackers else rep, redo=redo, retrain_stage=retrain_stage)
        fresh = trackers is not None and outcome.state != "already"  # a finished run was logged when it ran
        if fresh:
            trackers.backfill(outcome.run.metrics() or [])
        if not evaluate_it:
            return outcome, None
        # A finished evaluation is verified before it is reused; redoing it is `lever evaluate PLAN --redo`'s job.
        ev = evaluate(r, progress=progress)
        if fresh:
            trackers.evaluation(ev.summary)
        return outcome, ev
    finally:
        if trackers is not None:
            trackers.close()
