"""CLIP item features (docs/data.md, Features), computed once and cached on disk.

emb(item) = normalise( (normalise(image_emb) + normalise(question_emb)) / 2 ),  d = projection dim
(512 for ViT-B/32). An item without an image, or whose image file cannot be read
(a warning says so), gets its normalised question embedding alone. `part` = "image" or
"question" gives one of the two embeddings alone (what a `similar` selector may rank by).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lever.errors import LeverError
from lever.eval.backend import Item
from lever.eval.hf import load_image, require_transformers
from lever.io import atomic_write
from lever.keys import content_key, model_fingerprint

ModelSpec = str | Path | tuple[Any, Any]  # a model folder, or an already-built (CLIPModel, CLIPProcessor)


def load_clip(model: ModelSpec, device: str = "cpu") -> tuple[Any, Any]:
    """(CLIPModel, CLIPProcessor) from a local folder, or the given pair, moved to `device` in eval mode."""
    if isinstance(model, tuple):
        clip, processor = model
    else:
        path = Path(model)
        if not (path / "config.json").is_file():
            raise LeverError(
                f"CLIP model directory {path} does not exist or has no config.json",
                hint="point it at a local CLIP checkpoint (e.g. clip-vit-base-patch32)",
            )
        transformers = require_transformers()
        clip = transformers.CLIPModel.from_pretrained(path)
        processor = transformers.CLIPProcessor.from_pretrained(path)
    return clip.to(device).eval(), processor


def clip_width(model_dir: Path) -> int:
    """The embedding width (projection_dim) of a local CLIP model, read from its config alone."""
    transformers = require_transformers()
    try:
        return int(transformers.AutoConfig.from_pretrained(model_dir).projection_dim)
    except Exception as e:
        raise LeverError(
            f"CLIP model {model_dir}: no embedding width in config.json ({type(e).__name__}: {e})",
            hint="point models.clip at a local CLIP checkpoint (e.g. clip-vit-base-patch32)",
        ) from None


def _pooled(out: Any) -> torch.Tensor:
    # transformers < 5 returns the projected features; 5.x a model output whose pooler_output holds them.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _try_image(item: Item, unreadable: list[Item] | None = None) -> Any | None:
    """The item's image, or None (no image, or a file that cannot be read or decoded: appended to `unreadable`
    when given, else a warning)."""
    if item.image is None:
        return None
    try:
        return load_image(item.image)
    except OSError as e:
        if unreadable is not None:
            unreadable.append(item)
            return None
        warnings.warn(
            f"question {item.question_id}: image {item.image} unreadable ({e}); using its question embedding alone", stacklevel=3
        )
        return None


@torch.no_grad()
def clip_features(
    items: list[Item],
    model: ModelSpec,
    batch_size: int = 64,
    device: str = "cpu",
    unreadable: list[Item] | None = None,
    part: str = "both",
) -> torch.Tensor:
    """CLIP embedding of each item, [N, d], rows in the order of `items`.

    emb = normalise(mean(normalise(img), normalise(txt))); question only when there is no image or it cannot be
    read (each such item is appended to `unreadable` when given, else warned about one by one).
    """
    clip, processor = load_clip(model, device)
    rows = []
    for s in range(0, len(items), batch_size):
        chunk = items[s : s + batch_size]
        tok = processor(text=[it.question for it in chunk], padding=True, truncation=True, return_tensors="pt").to(device)
        txt = F.normalize(
            _pooled(clip.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])), dim=-1
        )  # [b, d]
        emb = txt.clone()
        images = [_try_image(it, unreadable) for it in chunk] if part != "question" else []
        has = [j for j, im in enumerate(images) if im is not None]
        if has:
            pix = processor(images=[images[j] for j in has], return_tensors="pt")["pixel_values"].to(device)
            img = F.normalize(_pooled(clip.get_image_features(pixel_values=pix)), dim=-1)  # [b_img, d]
            emb[has] = img if part == "image" else (img + txt[has]) / 2
        rows.append(F.normalize(emb, dim=-1).float().cpu())
    if not rows:
        return torch.zeros(0, clip.config.projection_dim)
    return torch.cat(rows)  # [N, d]


def _image_stamp(image: str | None) -> list[int] | None:
    """(size, mtime) of an item's image file; None when it has none or the file is missing (it counts as absent)."""
    if image is None:
        return None
    try:
        st = Path(image).stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def cache_key(items: list[Item], model_dir: str | Path, part: str = "both") -> str:
    """Hash of the model folder's files and, per item, (question_id, image_id, the image file's size and mtime);
    and the part, when it is not both embeddings."""
    ids = [[it.question_id, it.image_id, _image_stamp(it.image)] for it in items]
    model = model_fingerprint(Path(model_dir)) if Path(model_dir).is_dir() else str(model_dir)
    return content_key({"model": model, "items": ids, **({"part": part} if part != "both" else {})}, length=64)


def cached_clip_features(
    items: list[Item],
    model_dir: str | Path,
    cache_path: str | Path,
    batch_size: int = 64,
    device: str = "cpu",
    part: str = "both",
) -> torch.Tensor:
    """clip_features, computed once: reused while the cache's key matches, else recomputed and rewritten.

    The cache is a torch.save'd dict {"key", "model", "features"}, written to a temp
    file then moved into place (lever.io.atomic_write), so a crash never leaves half a file.
    """
    cache_path = Path(cache_path)
    key = cache_key(items, model_dir, part)
    if cache_path.is_file():
        try:
            cached = torch.load(cache_path, map_location="cpu", weights_only=True)
            if cached.get("key") == key:
                return cached["features"]
        except Exception as e:  # unreadable cache: recompute rather than fail
            warnings.warn(f"feature cache {cache_path} unreadable ({e}); recomputing", stacklevel=2)
    feats = clip_features(items, model_dir, batch_size=batch_size, device=device, part=part)
    atomic_write(cache_path, lambda tmp: torch.save({"key": key, "model": str(model_dir), "features": feats}, tmp))
    return feats


def check_clip_space(items: list[Item], features: torch.Tensor, model_dir: Path, path: Path, min_cos: float = 0.98) -> float:
    """Embed `items` (train rows 0..n-1) with the workspace's CLIP model and compare them with those feature rows.

    Training reads the features file; evaluation embeds its questions with the CLIP model. Both
    must be one space, or the selector compares vectors of two different models. Returns the
    lowest cosine similarity; below `min_cos` is an error.
    """
    fresh = clip_features(items, model_dir)  # [n, d]
    stored = features[: len(items)].float()  # [n, d]
    cos = torch.nn.functional.cosine_similarity(fresh, stored, dim=-1)  # [n]
    worst = float(cos.min())
    if worst < min_cos:
        raise LeverError(
            f"features {path} are not in the space of the CLIP model {model_dir}: re-embedding train rows "
            f"0..{len(items) - 1} gives cosine similarity {worst:.3f} with the stored rows (same model: > {min_cos})",
            hint="training would read one model's vectors and evaluation another's; compute the features with this "
            "CLIP model (mean of normalised image and question embeddings), or point models.clip at the one that made them",
        )
    return worst
