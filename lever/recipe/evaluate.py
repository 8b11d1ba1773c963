"""Evaluating a recipe: which checkpoint, verified; the evaluation folder of its key; scoring (lever.eval); the record.

`lever run` calls `train_and_evaluate`, `lever evaluate` calls `evaluate`; the CLI only parses and renders.
"""

from __future__ import annotations

import shutil
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

from lever.errors import DamagedState, LeverError
from lever.eval.distributed import barrier, ranks, release, serve
from lever.eval.evaluate import Progress, eval_key, generation_key, rescore, score
from lever.eval.reward_cache import Budget
from lever.eval.world import eval_world
from lever.io import file_lock
from lever.model import SelectorBase, build_selector
from lever.records import SelectorChoice, StageEntry
from lever.runs.layout import EvalDir, RunDir
from lever.runs.trackers import Trackers
from lever.train.checkpoint import checkpoint_info, epoch_digest, load_into, load_verified, state_digest
from lever.train.folder import checkpoint_epochs, checkpoint_path, read_result
from lever.train.stage import Reporter, SilentReporter

from .preflight import eval_inputs, eval_preflight
from .recipe import Recipe
from .train import RunOutcome, finished_selection, train


@dataclass
class Evaluated:
    """One seed's evaluation: where it lives and its verified summary."""

    run: RunDir
    eval_dir: EvalDir
    summary: dict[str, Any]


def checkpoint_for(run: RunDir, epoch: int | None) -> StageEntry | SelectorChoice:
    """The run's verified selection, or epoch `epoch` of its final stage (recorded as a hand pick); a plan that
    trains nothing gives its baseline selector (and has no epochs)."""
    state = run.state
    selected = run.selected() if state in ("trained", "done") else None
    if selected is None and state in ("trained", "done"):
        raise DamagedState(f"{run.selected_file} is missing but the run is marked {state}", hint=run.fix)
    if selected is None:
        status = run.status()
        why = f"{state}: {status.message}" if status and status.message else state or "never started"  # its own words
        raise LeverError(
            f"{run.path} has no selected checkpoint: the run has not finished training ({why})",
            hint=f"run `{run.command('run')}` first",
        )
    if epoch is None:
        return selected
    if isinstance(selected, SelectorChoice):
        raise LeverError(f"--epoch {epoch}: {run.plan} trains nothing (selector '{selected.selector}'), so it has no epochs")
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
    if isinstance(entry, SelectorChoice):
        raise LeverError(
            f"{r.lp.path}: selector.kind = '{entry.selector}' trains nothing, so the plan has no checkpoint",
            hint="name a plan with a trained selector (selector.kind = 'learned')",
        )
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
    preflight: bool = True,
) -> Evaluated:
    """Evaluate a trained seed run (its selected checkpoint, or `epoch` of its final stage); the run becomes `done`.

    It holds the run's lock (one evaluation or training of a run at a time). Before the VLM answers anything
    the evaluation's inputs are checked as `lever run`'s preflight checks them (model folders and their weight
    files, every eval image decoded). An evaluation has its own state: Ctrl-C, a failed write or a bad input
    never change the run's training status; how it ended is kept in eval/status.json, and the next evaluation
    names it and resumes from the partial answers. `preflight=False`: the caller checked the inputs already
    (`lever run`, before training)."""
    run, main = r.run, ranks().is_main
    if main and run.state not in ("trained", "done"):  # rank 0 alone records, under torchrun
        if r.trains:
            _adopt_stages(r)  # a plan that differs from a trained one only in eval.*: its stages, no training
        else:
            train(r, _Log(r.log))  # a baseline selector: recording it is all its "training" is
    barrier(ranks())
    checkpoint_for(run, epoch)  # a run that never trained fails here, before any data is read or generated
    if r.stale():  # stale, not failed: the status stays
        raise LeverError(
            f"{run.path} was trained on other candidate data or features than the plan's files hold now",
            hint=f"train it again first: {run.command('run')}",
        )
    try:
        with file_lock(run.lock, wait=False, what=f"run {run.path}") if main else nullcontext():
            last = run.eval_status() if main else None
            if last:
                r.log(f"{run.path}: its last evaluation did not finish ({last['state']}: {last.get('message')})")
            try:
                ev, summary = _evaluate(r, epoch, redo, progress, preflight)
            except KeyboardInterrupt:
                _eval_end(run, "interrupted", "stopped by Ctrl-C or SIGTERM; the same command resumes it from its answers")
                raise
            except LeverError as err:
                _eval_end(run, "failed", str(err))
                raise
            if main:
                run.set_eval_status(None)
                if epoch is None:
                    run.set_state("done")
    except OSError as err:  # a full disk or a read-only folder; the run's training status stays
        message = f"could not write {err.filename or run.eval_root}: {err.strerror or err}"
        _eval_end(run, "failed", message)
        raise LeverError(
            message, hint="free some space (or fix the folder's permissions) and run the same command again"
        ) from None
    return Evaluated(run, ev, summary)


def _eval_end(run: RunDir, state: str, message: str) -> None:
    """Record how an unfinished evaluation ended (rank 0; a disk that refuses it leaves the message to the user)."""
    if ranks().is_main:
        try:
            run.set_eval_status(state, message)
        except OSError:
            pass


def _identity(entry: StageEntry | SelectorChoice) -> str:
    """The field of an evaluation's `checkpoint` record that names what picked its demonstrations: the checkpoint's
    SHA-256, or a baseline selector's key."""
    return "key" if isinstance(entry, SelectorChoice) else "sha256"


def _evaluate(
    r: Recipe, epoch: int | None, redo: bool, progress: Progress | None, preflight: bool
) -> tuple[EvalDir, dict[str, Any]]:
    run, spec = r.run, r.plan.eval
    if r.trains:
        entry, model, digest = selected_model(r, epoch)
    else:  # a baseline selector: no weights; its key stands where the weights' digest stands in the evaluation's key
        entry, model = checkpoint_for(run, epoch), None
        digest = entry.sha256
    world = eval_world(eval_inputs(r), r.features_file, r.log, r.train_features)
    ev = run.eval_dir(eval_key(digest, world, spec, r.seed))
    generation = generation_key(digest, world.identity, spec.model_dump(mode="json"), r.seed)
    rk = ranks()
    found = None
    if redo or not ev.complete:
        found = generation_source(r, ev, entry, digest, generation) if redo or not ev.partials() else None
        if found is None and preflight:  # the VLM will answer: its inputs are checked first (a redo's answers stay)
            eval_preflight(r)
    if redo:
        if rk.is_main and ev.path.exists():
            shutil.rmtree(ev.path)
        barrier(rk)
    try:
        return ev, _answer(r, ev, entry, model, world, epoch, found, generation, progress)
    except OSError as err:  # a write that failed names its file; else the evaluation's folder
        if not err.filename:
            err.filename = str(ev.path)
        raise


def _answer(
    r: Recipe,
    ev: EvalDir,
    entry: StageEntry | SelectorChoice,
    model: SelectorBase | None,
    world: Any,
    epoch: int | None,
    found: tuple[EvalDir, list[dict[str, Any]]] | None,
    generation: str,
    progress: Progress | None,
) -> dict[str, Any]:
    """The evaluation's summary: served from `ev` when finished, re-scored from `found`, or answered by the VLM."""
    run, spec, rk = r.run, r.plan.eval, ranks()
    if ev.complete:
        summary, _ = ev.read()
        if (summary.get("checkpoint") or {}).get(_identity(entry)) != entry.sha256:
            raise DamagedState(f"{ev.summary_file} is not an evaluation of {entry.checkpoint}", hint=run.eval_fix)
        r.log(f"evaluation cached in {ev.path}")
    else:
        if isinstance(entry, SelectorChoice):
            checkpoint: dict[str, Any] = {"selector": entry.selector, "reason": entry.reason, "key": entry.key}
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
        if found is not None:
            source, rows = found
            name = run.folder.store_rel(source.path)
            summary = rescore(ev, source, rows, world, spec, checkpoint, source_name=name, generation=generation)
            r.log(f"evaluation: the VLM's answers of {name} re-scored with metric {world.protocol.metric} (no generation)")
        else:
            summary = score(
                model,
                ev,
                world,
                spec,
                r.seed,
                checkpoint,
                selector=r.plan.selector,
                device=r.plan.device,
                log=r.log,
                progress=progress,
                generation=generation,
            )
    if epoch is None and rk.is_main:  # the selected checkpoint's evaluation is the one tables compare; --epoch ones are extras
        run.mark_selected_eval(ev)
    return summary


def generation_source(
    r: Recipe, ev: EvalDir, entry: StageEntry | SelectorChoice, digest: str, generation: str
) -> tuple[EvalDir, list[dict[str, Any]]] | None:
    """A finished evaluation whose raw outputs this one can re-score: the same checkpoint (`entry`'s SHA-256,
    whose weights have `digest`) and the same generation key, in this run or in another run of the plan with
    the same seed (a run made with other eval.* settings). Its rows are verified before they are used; a
    damaged one is passed over (and named), never re-scored. None when there is none: the VLM answers."""
    run = r.run
    runs = [run] + [run.folder.run(r.name, h, r.seed) for h in run.folder.hashes(r.name) if h != run.spec_hash]
    for other in runs:
        for folder in sorted(other.eval_root.glob("*/summary.json")) if other.eval_root.is_dir() else []:
            cand = other.eval_dir(folder.parent.name)
            if cand.path == ev.path:
                continue
            try:
                summary = cand.summary() or {}
                ck, inputs, settings = summary.get("checkpoint") or {}, summary.get("inputs"), summary.get("eval")
                if ck.get(_identity(entry)) != entry.sha256 or not isinstance(inputs, dict) or not isinstance(settings, dict):
                    continue
                if generation_key(digest, inputs, settings, r.seed) != generation:
                    continue
                return cand, cand.read()[1]
            except LeverError as err:  # damaged: its outputs cannot be vouched for
                r.log(f"evaluation: not re-scoring {cand.path}: {err.args[0]}")
    return None


class _Log(SilentReporter):
    """A reporter that passes its messages to the recipe's log."""

    def __init__(self, log: Any):
        self.log = log

    def info(self, message: str) -> None:
        self.log(message)


def _adopt_stages(r: Recipe) -> None:
    """Record the trained stages in a run that never trained, when a trained run of the same plan and seed differs
    from it only in eval.* settings (`lever evaluate PLAN eval.metric=vqa-latest` names a run folder of its own,
    since the spec hash covers every setting). Stage keys do not depend on eval settings, so this is the
    training of `lever run` finding every stage finished: its folders are verified first, so nothing is trained
    here. Without such a run, nothing happens (and `checkpoint_for` says the run has not been trained)."""
    run, mine = r.run, {k: v for k, v in r.lp.spec_dict().items() if k != "eval"}
    for h in run.folder.hashes(r.name):
        other = run.folder.run(r.name, h, r.seed)
        if h == run.spec_hash or other.state not in ("trained", "done"):
            continue
        try:
            spec = other.spec() or {}
            if {k: v for k, v in spec.items() if k != "eval"} != mine:
                continue
            if finished_selection(replace(r, run=other)) is None:  # trained on other inputs than the files hold now
                continue
            stages = other.stages()
            last = len(stages) - 1
            if [s.stage for s in stages] != [s.name for s in r.stages] or any(
                read_result(other.path_of(s.dir), r.plan.select, r.plan.select.epoch if i == last else None, s.key) is None
                for i, s in enumerate(stages)
            ):
                continue
        except LeverError:
            continue
        r.log(f"{run.path}: the plan differs from {other.path} only in eval settings; recording its trained stages")
        train(r, _Log(r.log))
        return


def train_and_evaluate(
    r: Recipe,
    reporter: Reporter | None = None,
    *,
    evaluate_it: bool = True,
    redo: bool = False,
    retrain_stage: str | None = None,
    progress: Progress | None = None,
    budget: Budget | None = None,
) -> tuple[RunOutcome, Evaluated | None]:
    """The recipe for one seed: train the stages, select, then evaluate (`budget`: `train`'s VLM call budget)."""
    rep = reporter or SilentReporter()
    rk = ranks()
    trackers = Trackers(r.ws.loggers, r.run, r.lp) if r.ws.loggers and rk.is_main else None
    try:
        if rk.is_main:  # under torchrun rank 0 trains alone; each rank answers its share of training's VLM prompts
            outcome = train(r, trackers.wrap(rep) if trackers else rep, redo=redo, retrain_stage=retrain_stage, budget=budget)
            release(rk, outcome, rep.info)
        else:
            outcome = serve(rk, lambda: r.scoring.backend.inner, rep.info)
        fresh = trackers is not None and outcome.state != "already"  # a finished run was logged when it ran
        if fresh:
            trackers.backfill(outcome.run.metrics() or [])
        if not evaluate_it:
            return outcome, None
        # A finished evaluation is verified before it is reused; redoing it is `lever evaluate PLAN --redo`'s job.
        ev = evaluate(r, progress=progress, preflight=False)  # `lever run`'s preflight checked its inputs
        if fresh:
            trackers.evaluation(ev.summary)
        return outcome, ev
    finally:
        if trackers is not None:
            trackers.close()
