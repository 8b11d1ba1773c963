"""The baseline a plan is compared with, and whether `lever run PLAN` has to run it first.

The comparison table of `lever run PLAN` sets the plan against the `baseline` plan file of
the same plans folder (`plans/baseline.toml` for `plans/plan5.toml`, `plans/original/baseline.toml`
for `plans/original/plan5.toml`). On a fresh runs folder that baseline has no runs, so
`lever run PLAN` runs it too, first (`--no-baseline` skips it). It costs little: a plan
extending the baseline shares its RCE stage (same stage key), which is trained once and reused,
so the baseline adds only its evaluation.

The baseline gets the command's overrides, so that it shares the plan's RCE stage and is
evaluated on the same questions and shot counts, except the overrides of what it does not
run or select by: `grpo.*` and `phases` (it has no GRPO stage; `grpo.epochs=3` would give it
one) and `select.*` (they pick the plan's final stage's epoch). A plan that starts from the
baseline itself (`start.kind=plan start.plan=baseline`) shares no stage with it: the baseline
then gets only the `eval.*` and `seeds` overrides (its stages are those the plan started from). It runs for the seeds the plan
runs (`--seed`, else each plan's seeds).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lever.errors import LeverError
from lever.spec import LoadedPlan, Workspace, load_plan
from lever.spec.load import parse_override, plan_name

from .recipe import Recipe, recipes
from .train import finished

BASELINE = "baseline"  # the file stem of a plans folder's baseline plan
NOT_SHARED = ("grpo", "phases", "select")  # override roots that do not apply to the baseline (module docstring)


@dataclass
class Baseline:
    """The baseline of a command's plans: the plan (with the overrides that apply to it) and its seed runs
    that are not finished (trained and evaluated on today's inputs), which `lever run` runs after the plans."""

    lp: LoadedPlan
    todo: list[Recipe]
    skipped: list[str]  # the command's overrides left out for the baseline


def baseline_overrides(overrides: list[str], name: str = BASELINE) -> tuple[list[str], list[str]]:
    """(the overrides that apply to the baseline `name`, those left out): everything but `grpo.*`, `phases` and
    `select.*`; only `eval.*` and `seeds` when they start the plan from the baseline itself (`start.plan=baseline`:
    the plan shares no stage with it, it continues from the baseline as the baseline file defines it)."""
    parsed = [(text, *parse_override(text)) for text in overrides]
    from_itself = any(keys == ["start", "plan"] and value == name for _, keys, value in parsed)
    kept, skipped = [], []
    for text, keys, _ in parsed:
        left_out = keys[0] not in ("eval", "seeds") if from_itself else keys[0] in NOT_SHARED
        (skipped if left_out else kept).append(text)
    return kept, skipped


def plan_baseline(
    plans: list[LoadedPlan], overrides: list[str], ws: Workspace, seed: int | None, log: Callable[[str], None] = print
) -> Baseline | None:
    """The baseline to compare `plans` with, and its runs still to do; None when one of the plans is a baseline
    file itself (the table uses `baseline` as before) or the first plan's folder has no baseline file.

    The baseline is the `baseline.toml` beside the first plan that trains (a selector that trains nothing, such
    as `plans/baselines/similar_both`, has no RCE stage to share), with the overrides that apply to it
    (`baseline_overrides`); its runs are one per seed the plans run (`seed`, else each plan's seeds)."""
    anchor = next((lp for lp in plans if lp.plan.selector.trains), None)
    if anchor is None or any(lp.path.stem == BASELINE for lp in plans):
        return None
    path = anchor.path.parent / f"{BASELINE}.toml"
    if not path.is_file():
        return None
    kept, skipped = baseline_overrides(overrides, plan_name(path, ws.plans_dir))
    try:
        lp = load_plan(path, kept, ws.plans_dir)
    except LeverError as err:
        skip = "or run with --no-baseline (then no comparison table unless the baseline has runs)"
        raise LeverError(
            f"the baseline for the comparison table does not take this command's overrides: {err.args[0]}",
            hint=f"{err.hint}; {skip}" if err.hint else skip,
        ) from None
    seeds = [seed] if seed is not None else list(dict.fromkeys(s for p in plans for s in p.plan.seeds))
    todo = [r for r in (Recipe.build(lp, ws, s, log) for s in seeds) if not finished(r)]
    return Baseline(lp, todo, skipped)


@dataclass
class RunOrder:
    """What `lever run PLAN...` does, in order: the plans' recipes, then the baseline's runs still to do."""

    plans: list[LoadedPlan]
    todo: list[Recipe]  # every seed run, the baseline's last (it reuses the stages the plans trained)
    base: Baseline | None  # the baseline the table compares with, when it comes from the plans folder

    def named(self, r: Recipe) -> bool:
        """Whether `r` is a run of a plan the command named (--redo and --retrain-stage act on those only)."""
        return self.base is None or all(r is not b for b in self.base.todo)

    def first_seed(self, r: Recipe) -> bool:
        """Whether `r` is its plan's first run in the order (where its header is printed)."""
        return next(x for x in self.todo if x.lp is r.lp) is r

    def reference(self) -> tuple[str, str | None]:
        """The baseline of the comparison table: a baseline the command named, else the plans folder's, by (name, hash)."""
        ref = next((lp for lp in self.plans if lp.name == BASELINE), self.base.lp if self.base is not None else None)
        return (ref.name, ref.hash) if ref is not None else (BASELINE, None)


def run_order(
    plans: list[LoadedPlan],
    overrides: list[str],
    ws: Workspace,
    seed: int | None,
    *,
    evaluate: bool,
    with_baseline: bool,
    log: Callable[[str], None] = print,
) -> RunOrder:
    """The recipes of `lever run`: one per plan and seed, then (when evaluating, unless `with_baseline` is off) the
    plans folder's baseline runs that are missing. A baseline that cannot take the overrides is an error only when
    it would run (`with_baseline`); otherwise the table looks for one with the same settings."""
    todo = recipes(plans, ws, seed, log)
    base = None
    if evaluate:
        try:
            base = plan_baseline(plans, overrides, ws, seed, log)
        except LeverError:
            if with_baseline:  # the error says --no-baseline skips it
                raise
    if base is not None and not with_baseline:
        base.todo = []
    if base is not None and base.todo:
        seeds = ", ".join(str(r.seed) for r in base.todo)
        left_out = f" (without {' '.join(base.skipped)})" if base.skipped else ""
        log(
            f"{base.lp.name}: no evaluated run for seed {seeds} with these settings{left_out}; running it too, for "
            "the comparison table (--no-baseline skips it)"
        )
        todo = todo + base.todo
    return RunOrder(plans, todo, base)
