"""The OK-VQA reader (official file shapes) and the cached CLIP features."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("PIL")

from tiny_models import write_okvqa_fixture  # noqa: E402

from lever.errors import LeverError  # noqa: E402
from lever.eval import clip as clip_mod  # noqa: E402
from lever.eval.okvqa import coco_image_name, load_okvqa  # noqa: E402


@pytest.fixture
def files(tmp_path) -> tuple[Path, Path, Path]:
    return write_okvqa_fixture(tmp_path, n=5)


# --- OK-VQA reader ---


def test_sorted_by_question_id_with_positions(files):
    items = load_okvqa(*files, split="val")
    assert [it.question_id for it in items] == [1000, 1007, 1014, 1021, 1028]  # the file lists them reversed
    assert [it.index for it in items] == [0, 1, 2, 3, 4]
    first = items[0]
    assert first.image_id == 500 and first.question == "What sport can you use this for?"
    assert first.answers == ["ans0", "alt0", "other", "thing", "stuff"] * 2
    assert first.image == str(files[2] / "COCO_val2014_000000000500.jpg") and Path(first.image).is_file()


def test_limit_cuts_after_sorting(files):
    items = load_okvqa(*files, split="val2014", limit=2)
    assert [it.question_id for it in items] == [1000, 1007]


def test_image_in_split_subfolder_and_no_image_dir(tmp_path):
    q, a, image_dir = write_okvqa_fixture(tmp_path, n=2)
    sub = image_dir / "val2014"
    sub.mkdir()
    name = coco_image_name(501, "val")
    (image_dir / name).rename(sub / name)
    items = load_okvqa(q, a, image_dir, split="val")
    assert items[1].image == str(sub / name)
    assert all(it.image is None for it in load_okvqa(q, a, None, split="val"))


def test_missing_image_is_not_an_error_here(tmp_path):
    items = load_okvqa(*write_okvqa_fixture(tmp_path, n=3, skip_images=(1,)), split="val")
    assert items[1].image.endswith("COCO_val2014_000000000501.jpg") and not Path(items[1].image).exists()


def test_missing_file_and_folder(files, tmp_path):
    q, a, image_dir = files
    with pytest.raises(LeverError, match="nope.json does not exist"):
        load_okvqa(tmp_path / "nope.json", a, image_dir, split="val")
    with pytest.raises(LeverError, match="image folder"):
        load_okvqa(q, a, tmp_path / "no_images", split="val")
    with pytest.raises(LeverError, match="split 'test'"):
        load_okvqa(q, a, image_dir, split="test")


def test_bad_json_names_line_and_column(files):
    q, a, image_dir = files
    q.write_text('{"questions": [\n  {"image_id": 1,, "question_id": 2}\n]}')
    with pytest.raises(LeverError, match=r"line 2, column 18"):
        load_okvqa(q, a, image_dir, split="val")


def test_question_without_annotation(files):
    q, a, image_dir = files
    data = json.loads(a.read_text())
    data["annotations"] = [x for x in data["annotations"] if x["question_id"] != 1014]
    a.write_text(json.dumps(data))
    with pytest.raises(LeverError, match="question 1014 .* has no annotation"):
        load_okvqa(q, a, image_dir, split="val")
    assert len(load_okvqa(q, a, image_dir, split="val", limit=2)) == 2  # cut before the gap: fine


def test_malformed_entries(files):
    q, a, image_dir = files
    a.write_text(json.dumps({"annotations": [{"question_id": 1000}]}))
    with pytest.raises(LeverError, match="annotation #0 is malformed"):
        load_okvqa(q, a, image_dir, split="val")
    a.write_text(json.dumps({"something_else": []}))
    with pytest.raises(LeverError, match="no list under the key 'annotations'"):
        load_okvqa(q, a, image_dir, split="val")


# --- CLIP features ---


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("transformers")
    from tiny_models import tiny_clip

    model, processor = tiny_clip(seed=0, projection_dim=16)
    folder = tmp_path_factory.mktemp("clip")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor, folder


def test_clip_recipe(tiny, files):
    model, processor, _ = tiny
    items = load_okvqa(*files, split="val")
    items[2].image = None  # a question without an image
    feats = clip_mod.clip_features(items, (model, processor), batch_size=2)
    assert feats.shape == (5, 16)
    assert torch.allclose(feats.norm(dim=-1), torch.ones(5), atol=1e-5)
    # Item 0 by hand: normalise(mean(normalise(img), normalise(txt))).
    from PIL import Image

    with torch.no_grad():
        tok = processor(text=[items[0].question], return_tensors="pt")
        txt = clip_mod._pooled(model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]))
        pix = processor(images=[Image.open(items[0].image).convert("RGB")], return_tensors="pt")["pixel_values"]
        img = clip_mod._pooled(model.get_image_features(pixel_values=pix))
        want = F.normalize((F.normalize(img, dim=-1) + F.normalize(txt, dim=-1)) / 2, dim=-1)[0]
        tok2 = processor(text=[items[2].question], return_tensors="pt")
        txt2 = F.normalize(clip_mod._pooled(model.get_text_features(**tok2)), dim=-1)[0]
    assert torch.allclose(feats[0], want, atol=1e-5)
    assert torch.allclose(feats[2], txt2, atol=1e-5)  # no image: the question alone
    # Batch size changes nothing (padding is masked).
    assert torch.allclose(clip_mod.clip_features(items, (model, processor), batch_size=64), feats, atol=1e-5)


def test_unreadable_image_falls_back_to_the_question(tiny, tmp_path):
    model, processor, _ = tiny
    items = load_okvqa(*write_okvqa_fixture(tmp_path, n=2, skip_images=(1,)), split="val")
    with pytest.warns(UserWarning, match="question embedding alone"):
        feats = clip_mod.clip_features(items, (model, processor))
    no_image = [items[1]]
    no_image[0].image = None
    assert torch.allclose(feats[1], clip_mod.clip_features(no_image, (model, processor))[0], atol=1e-5)


def test_cached_features_are_computed_once(tiny, files, tmp_path, monkeypatch):
    _, _, folder = tiny
    items = load_okvqa(*files, split="val")
    calls = []
    compute = clip_mod.clip_features
    monkeypatch.setattr(clip_mod, "clip_features", lambda *a, **k: calls.append(1) or compute(*a, **k))
    cache = tmp_path / "cache" / "val_features.pt"
    first = clip_mod.cached_clip_features(items, folder, cache)
    again = clip_mod.cached_clip_features(items, folder, cache)
    assert len(calls) == 1 and torch.equal(first, again) and first.shape == (5, 16)
    assert [p.name for p in cache.parent.iterdir()] == ["val_features.pt"]  # no temp file left behind
    clip_mod.cached_clip_features(items[:3], folder, cache)  # other items: a new key, recomputed
    assert len(calls) == 2


def test_clip_missing_model_dir(tmp_path, files):
    items = load_okvqa(*files, split="val")
    with pytest.raises(LeverError, match="CLIP model directory"):
        clip_mod.cached_clip_features(items, tmp_path / "nope", tmp_path / "c.pt")
