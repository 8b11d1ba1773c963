"""`lever data embed` on OK-VQA files with a tiny CLIP: where each split is written, unreadable images counted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")


@pytest.fixture
def okvqa(tmp_path, monkeypatch):
    """A real-path workspace (8 train, 4 val questions; val question 3 has no image file) and its tiny CLIP."""
    from tiny_models import write_okvqa_workspace

    import lever.eval.clip as clip_mod

    ws, clip_pair, _ = write_okvqa_workspace(tmp_path, n_train=8, n_val=4, pool=4)
    monkeypatch.setattr(clip_mod, "load_clip", lambda model, device="cpu": (clip_pair[0].eval(), clip_pair[1]))
    return ws


def train_images(ws: Path) -> list[Path]:
    return sorted((ws.parent / "okvqa_train" / "images").glob("*.jpg"))


def test_val_split_never_overwrites_the_training_features(lever, okvqa):
    main = okvqa.parent / "query_embeddings.pt"
    before = main.read_bytes()
    res = lever("--workspace", okvqa, "data", "embed", "--split", "val", "--device", "cpu")
    assert res.code == 0, res.out + res.err
    val = okvqa.parent / "query_embeddings.val.pt"  # beside features.main, named for its split
    assert torch.load(val).shape == (4, 16) and main.read_bytes() == before
    # val question 3 has no image: one summary line with the count, not a warning per item
    assert "1 of 4 val images unreadable" in res.err and res.err.count("question embedding alone") == 1
    res = lever("--workspace", okvqa, "data", "embed", "--split", "val", "--out", main, "--device", "cpu")
    assert res.code == 2 and "training features" in res.out + res.err and main.read_bytes() == before
    assert "Traceback" not in res.out + res.err


def test_truncated_images_are_counted_in_one_line(lever, okvqa, tmp_path):
    images = train_images(okvqa)
    for img in images[:3]:  # truncated JPEGs: the files exist but do not decode
        img.write_bytes(img.read_bytes()[:200])
    res = lever("--workspace", okvqa, "data", "embed", "--out", tmp_path / "f.pt", "--device", "cpu")
    assert res.code == 0, res.out + res.err
    assert "3 of 8 train images unreadable" in res.err and res.err.count("question embedding alone") == 1
    assert "UserWarning" not in res.err
    # a second run reads the counts back from the chunk cache: the same line, nothing recomputed
    again = lever("--workspace", okvqa, "data", "embed", "--out", tmp_path / "g.pt", "--device", "cpu")
    assert "3 of 8 train images unreadable" in again.err
    assert torch.equal(torch.load(tmp_path / "f.pt"), torch.load(tmp_path / "g.pt"))


def test_every_image_unreadable_exits_2_with_the_count(lever, okvqa, tmp_path):
    for img in train_images(okvqa):
        img.write_bytes(b"not a jpeg")
    res = lever("--workspace", okvqa, "data", "embed", "--out", tmp_path / "f.pt", "--device", "cpu")
    assert res.code == 2 and "all 8 train images are unreadable" in res.out + res.err
    assert not (tmp_path / "f.pt").exists()
    for img in train_images(okvqa):
        img.unlink()
    res = lever("--workspace", okvqa, "data", "embed", "--out", tmp_path / "f.pt", "--device", "cpu")
    assert res.code == 2 and "none of the 8 train images exists" in res.out + res.err
    assert "Traceback" not in res.out + res.err
