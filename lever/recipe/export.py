"""Export: a trained recipe's selected checkpoint in another project's layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lever.errors import LeverError
from lever.train.checkpoint import checkpoint_info, load_verified
from lever.train.original_ckpt import save_v2, save_v3

from .evaluate import checkpoint_for
from .recipe import Recipe

EXPORT_FORMATS = ("lever-plus-v2", "lever-plus-v3")


def export_checkpoint(r: Recipe, fmt: str, out: Path, force: bool = False) -> dict[str, Any]:
    """Write a trained plan's selected checkpoint in another project's layout; returns what was written.

    lever-plus-v2: the original's v2 Lightning checkpoint (lever.train.original_ckpt.save_v2), which its
    v2 inference reads; one attention layer only (v2 has one).
    lever-plus-v3: the original's v3 checkpoint (save_v3: model_state_dict, epoch, phase, kl_beta, metrics), which
    its v3 loader reads exactly, any number of layers; kl_beta is the epoch's logged `kl/beta` (a GRPO stage)
    or the plan's grpo.kl.beta.
    Only model.arch = "lever-plus-v3" maps (its weights are the original's, name for name), its V4 heads included:
    their parameters keep the original's names, and the file carries the `model_type` its V4 trainers write.
    """
    if fmt not in EXPORT_FORMATS:
        raise LeverError(f"--format {fmt!r} is not known", hint=f"use one of {', '.join(EXPORT_FORMATS)}")
    lp = r.lp
    if not r.trains:
        raise LeverError(
            f"plan {lp.name} has selector.kind = '{lp.plan.selector.kind}': it trains nothing, so it has no checkpoint",
            hint="export a plan with a trained selector (selector.kind = 'learned')",
        )
    if lp.plan.model.arch != "lever-plus-v3":
        raise LeverError(
            f"plan {lp.name} has model.arch = '{lp.plan.model.arch}': lever's selector has other layers than the "
            "original's (docs/architecture.md), so its weights cannot be written in the original's layout",
            hint="train with model.arch = 'lever-plus-v3' (plans/original/) to export to the original",
        )
    check_out(out, r, fmt, force)
    entry = checkpoint_for(r.run, None)
    path, fix = r.run.path_of(entry.checkpoint), r.run.retrain_fix(entry.stage)
    state = load_verified(path, entry.sha256, fix)
    if fmt == "lever-plus-v2":
        save_v2(out, state, entry.epoch)
    else:
        metrics = (checkpoint_info(path, fix) or {}).get("metrics") or {}
        beta = metrics.get("kl/beta", lp.plan.grpo.kl.beta)
        save_v3(out, state, max(entry.epoch - 1, 0), entry.kind, beta, metrics)  # its epochs count from 0
    return {"out": str(out), "stage": entry.stage, "epoch": entry.epoch, "format": fmt}


EXAMPLE_NAMES = {"lever-plus-v2": "selector_v2format.ckpt", "lever-plus-v3": "selector_v3.pt"}


def check_out(out: Path, r: Recipe, fmt: str = "lever-plus-v2", force: bool = False) -> None:
    """Refuse an output that would overwrite something: a folder, a file inside the runs folder, an input, or
    an existing file (unless `force`)."""
    out, example = Path(out), EXAMPLE_NAMES[fmt]
    if out.is_dir():
        raise LeverError(f"-o {out} is a folder", hint=f"name a file, e.g. -o {out / example}")
    full, runs = out.resolve(), r.ws.runs_dir.resolve()
    if full.is_relative_to(runs):
        raise LeverError(
            f"-o {out} is inside the runs folder {r.ws.runs_dir}, whose files lever verifies and never overwrites",
            hint=f"write the export elsewhere, e.g. -o exports/{example}",
        )
    inputs = [r.sources.candidates, r.sources.features]
    if r.plan.start.kind == "checkpoint":
        inputs.append(r.ws.path(r.plan.start.checkpoint))
    for p in inputs:
        if Path(p).exists() and full == Path(p).resolve():
            raise LeverError(f"-o {out} is an input of the plan ({p}); it would be overwritten", hint="write to another file")
    if out.exists() and not force:
        raise LeverError(f"-o {out} already exists", hint="name another file, or pass --force to overwrite it")
