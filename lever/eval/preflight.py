"""Checks of an evaluation's inputs run before any training (`lever.recipe.preflight` calls them), so nothing fails after hours of training.

Cheap by design: files are opened and counted, model folders are read for their configs,
processor files and weight indexes only (every weight file an index names must exist; no weights
are read). Images: every eval question's image is decoded (at 1/8 scale, JPEG draft mode: a
truncated file still fails), the demonstration candidates' only in a bounded sample
(`DECODE_SAMPLE`, evenly spaced rows): decoding all 9,009 OK-VQA train images would add a
minute to every run's start, and a sample of 256 finds a failure share of 1% or more with
probability above 0.9. Training and evaluation repeat the checks they depend on; this only
moves the failures to the start.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from torch import Tensor

from lever.errors import LeverError
from lever.spec.schema import EvalSpec

from .backend import Item
from .world import EvalInputs, check_eval_counts, check_okvqa_rows, heldout_split, load_split, split_sizes


def check_eval(inputs: EvalInputs, features: Tensor, features_path: Path, where: str, log: Callable[[str], None] = print) -> None:
    """Raise a LeverError for the first thing an evaluation of `inputs` (its files checked by `check_eval_files`)
    will need but cannot have.

    eval.questions and eval.pool_size against the questions there are, the train features against the
    dataset's train questions and the CLIP width, that the VLM's processor and model class load, missing
    images within eval.max_failed, and that the workspace's CLIP model re-embeds a few train rows as the
    features file has them. `where` prefixes count errors (the plan file).
    """
    ws, spec = inputs.ws, inputs.spec
    sizes = split_sizes(inputs.ds, log)
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
    check_weight_files(ws.path(ws.models.vlm), "models.vlm")
    check_weight_files(ws.path(ws.models.clip), "models.clip")
    train_items = check_missing_images(inputs, log)
    from .clip import check_clip_space

    clip_dir, st = ws.path(ws.models.clip), features_path.stat()
    cfg = (clip_dir / "config.json").stat()
    seen = (str(clip_dir.resolve()), cfg.st_mtime_ns, str(features_path.resolve()), st.st_size, st.st_mtime_ns)
    if seen not in _CLIP_CHECKED:  # `lever run A B C` on one features file loads CLIP for this once
        check_clip_space(train_items[:4], features, clip_dir, features_path)
        _CLIP_CHECKED.add(seen)


_CLIP_CHECKED: set[tuple] = set()  # (CLIP folder, its config's mtime, features file, size, mtime) that passed
DECODE_SAMPLE = 256  # demonstration-candidate images decoded by the preflight (evenly spaced rows)
INDEX_GLOBS = ("*.safetensors.index.json", "*.bin.index.json")


def check_weight_files(model_dir: Path, key: str) -> None:
    """Every weight file a sharded model folder's index (`*.safetensors.index.json`: its `weight_map`) names must
    be in the folder: a missing shard is named now, not when the model loads after training."""
    for index in sorted(p for g in INDEX_GLOBS for p in Path(model_dir).glob(g)):
        try:
            names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise LeverError(
                f"{key} = {model_dir}: {index.name} cannot be read as a weight index ({type(e).__name__}: {e})",
                hint="download the model folder again",
            ) from None
        missing = [n for n in names if not (Path(model_dir) / n).is_file()]
        if missing:
            raise LeverError(
                f"{key} = {model_dir}: {len(missing)} of the {len(names)} weight files that {index.name} names are "
                f"missing: {', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}",
                hint="finish the model download (every shard in the index), or point the workspace at a complete folder",
            )


def decodes(path: str) -> bool:
    """Whether an image file opens and decodes (JPEG at 1/8 scale: the whole stream is still read)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
        return True
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False


def check_missing_images(inputs: EvalInputs, log: Callable[[str], None] = print) -> list[Item]:
    """Count the images missing or not decoding among the eval questions and the demonstration candidates; a
    share above `eval.max_failed` of either is an error naming the first files (each fails questions later).

    Every eval question's image is decoded; of the demonstration candidates, DECODE_SAMPLE evenly spaced
    images, their failure share applied to all (module docstring). Returns the train items.
    """
    spec: EvalSpec = inputs.spec
    train = load_split(inputs.ds, "train", log)
    groups = {"train (demonstration candidates)": train}
    if "val" in spec.splits:
        groups["val"] = load_split(inputs.ds, "val", log, None if spec.questions == "all" else spec.questions)
    if "test" in spec.splits:
        groups["test"] = heldout_split(inputs.ds, spec, log)
    for name, items in groups.items():
        asked = Counter(it.image for it in items if it.image is not None)  # image file -> its questions (VQAv2: ~5)
        present = [p for p in asked if Path(p).is_file()]  # each file once, however many questions ask about it
        missing = [p for p in asked if not Path(p).is_file()]
        step = 1 if name in ("val", "test") else max(1, -(-len(present) // DECODE_SAMPLE))
        tried = present[::step]
        broken = [p for p in tried if not decodes(p)]
        # the share of questions that fail: those on a missing image, and those on a broken one (sampled: its rate)
        on_present = sum(asked[p] for p in present)
        failing = sum(asked[p] for p in broken) if step == 1 else len(broken) / max(len(tried), 1) * on_present
        share = (sum(asked[p] for p in missing) + failing) / max(len(items), 1)
        if not missing and not broken:
            continue
        n = len(asked)
        what = f"{len(missing)} of {n} {name} images are missing" if missing else f"{n} {name} images:"
        if broken:
            sampled = "decoded" if step == 1 else "sampled"
            what += f"{' and' if missing else ''} {len(broken)} of the {len(tried)} {sampled} do not decode"
        first = ", ".join(str(m) for m in (missing + broken)[:3])
        if share > spec.max_failed:
            raise LeverError(
                f"{what} ({share:.1%} fail, above eval.max_failed = {spec.max_failed:.1%}), e.g. {first}",
                hint="check the workspace's image folders (copy again the files that do not decode); an unreadable "
                "image fails its question (and every question that picks it as a demonstration)",
            )
        log(f"warning: {what} ({share:.1%} fail), e.g. {first}")
    return train
