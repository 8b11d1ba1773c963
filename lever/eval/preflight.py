"""Checks of an evaluation's inputs run before any training (`lever.recipe.preflight` calls them), so nothing fails after hours of training.

Cheap by design: files are opened and counted, model folders are read for their configs and
processor files only (no weights). Training and evaluation repeat the checks they depend on;
this only moves the failures to the start.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import Tensor

from lever.errors import LeverError
from lever.spec import Workspace
from lever.spec.schema import EvalSpec

from .backend import Item
from .sources import check_eval_counts, check_eval_files, check_okvqa_rows, split_sizes


def check_eval(
    ws: Workspace, spec: EvalSpec, features: Tensor, features_path: Path, where: str, log: Callable[[str], None] = print
) -> None:
    """Raise a LeverError for the first thing an evaluation with `spec` will need in `ws` but cannot have.

    The workspace's eval files and image folders, eval.questions and eval.pool_size against the questions
    there are, the train features against the OK-VQA train questions and the CLIP width, that the VLM's
    processor and model class load, missing images within eval.max_failed, and that the workspace's CLIP
    model re-embeds a few train rows as the features file has them. `where` prefixes count errors (the plan file).
    """
    check_eval_files(ws, spec)
    sizes = split_sizes(ws, log)
    check_eval_counts(spec, sizes, where)
    if ws.is_bundled:
        return
    from .clip import clip_width
    from .hf import check_vlm

    check_okvqa_rows(features, features_path, sizes["train"])
    width = clip_width(ws.path(ws.models.clip))
    if features.shape[1] != width:
        raise LeverError(
            f"features {features_path} are {features.shape[1]} wide, but the CLIP model {ws.models.clip} embeds in {width}: "
            "the eval questions' features would not match the train features",
            hint="compute the train features with the workspace's CLIP model",
        )
    check_vlm(ws.path(ws.models.vlm))
    train_items = check_missing_images(ws, spec, log)
    from .clip import check_clip_space

    clip_dir, st = ws.path(ws.models.clip), features_path.stat()
    cfg = (clip_dir / "config.json").stat()
    seen = (str(clip_dir.resolve()), cfg.st_mtime_ns, str(features_path.resolve()), st.st_size, st.st_mtime_ns)
    if seen not in _CLIP_CHECKED:  # `lever run A B C` on one features file loads CLIP for this once
        check_clip_space(train_items[:4], features, clip_dir, features_path)
        _CLIP_CHECKED.add(seen)


_CLIP_CHECKED: set[tuple] = set()  # (CLIP folder, its config's mtime, features file, size, mtime) that passed


def check_missing_images(ws: Workspace, spec: EvalSpec, log: Callable[[str], None] = print) -> list[Item]:
    """Count the images missing from the eval questions and the demonstration candidates; more than
    `eval.max_failed` of either is an error naming the first files (each one fails questions later).

    Returns the train items (the demonstration candidates).
    """
    from .okvqa import load_okvqa

    o = ws.okvqa
    train = load_okvqa(ws.path(o.train_questions), ws.path(o.train_annotations), ws.path(o.train_images), "train", None)
    groups = {"train (demonstration candidates)": train}
    if "val" in spec.splits:
        groups["val"] = load_okvqa(
            ws.path(o.val_questions), ws.path(o.val_annotations), ws.path(o.val_images), "val", spec.questions
        )
    for name, items in groups.items():
        missing = [it.image for it in items if it.image is not None and not Path(it.image).is_file()]
        if not missing:
            continue
        share = len(missing) / len(items)
        first = ", ".join(str(m) for m in missing[:3])
        if share > spec.max_failed:
            raise LeverError(
                f"{len(missing)} of {len(items)} {name} images are missing ({share:.1%}, above eval.max_failed = "
                f"{spec.max_failed:.1%}), e.g. {first}",
                hint="check the workspace's image folders; a missing image fails its question (and every question "
                "that picks it as a demonstration)",
            )
        log(f"warning: {len(missing)} of {len(items)} {name} images are missing ({share:.1%}), e.g. {first}")
    return train
