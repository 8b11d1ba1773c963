"""The recipe layer: one object per (plan, workspace, seed) that every command takes.

    recipe.py     Recipe: the stages, the data files and their content keys, the run folder, the inputs read once
    preflight.py  what a recipe will need, checked before any training
    train.py      the stages into their folders, the run's record (resume, reuse, redo)
    evaluate.py   the verified checkpoint, its evaluation folder, scoring through lever.eval, the record
    baseline.py   the baseline a plan is compared with, and its runs `lever run PLAN` does first
    sweep.py      a grid of derived plans x seeds through one executor
    export.py     the selected checkpoint in another project's layout

It sits above every other layer (spec, data, model, train, runs, eval, report); `lever_cli` parses,
calls one function here or in a lower layer, and renders.
"""

from .baseline import Baseline, RunOrder, plan_baseline, run_order
from .evaluate import Evaluated, checkpoint_for, evaluate, selected_model, train_and_evaluate
from .export import EXPORT_FORMATS, export_checkpoint
from .preflight import preflight
from .recipe import Recipe, recipes
from .sweep import EXECUTORS, SweepRun, run_sweep
from .train import RunOutcome, finished, train

__all__ = [
    "EXECUTORS",
    "Baseline",
    "EXPORT_FORMATS",
    "Evaluated",
    "Recipe",
    "RunOrder",
    "RunOutcome",
    "SweepRun",
    "checkpoint_for",
    "evaluate",
    "export_checkpoint",
    "finished",
    "plan_baseline",
    "preflight",
    "recipes",
    "run_order",
    "run_sweep",
    "selected_model",
    "train",
    "train_and_evaluate",
]
