"""`lever run` refuses, before any training, a plan that would fail later: nothing is trained, no run directory appears."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from workspaces import bench_workspace  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PLANS = ROOT / "plans"


def refused_before_training(res, runs: Path, *needles: str) -> None:
    """Exit 2 with every needle in the message, no traceback, and no run or stage directory."""
    assert res.code == 2, res.text
    assert "Traceback" not in res.text
    for needle in needles:
        assert needle in res.text, res.text
    assert not runs.exists(), sorted(runs.rglob("*"))


# --------------------------------------------------------------------------- the bundled benchmark


@pytest.fixture
def bench_ws(tmp_path):
    """A workspace on a small benchmark (generated once into the shared test cache)."""
    return bench_workspace(tmp_path)


@pytest.mark.parametrize(
    "override, needles",
    [
        ("eval.questions=100000", ["eval.questions = 100000, but the val split has 80 questions", "at most 80"]),
        ("eval.pool_size=5000", ["eval.pool_size = 5000, but there are 600 train items", "at most 600"]),
        ("select.metric=val/nothing", ["select.metric = 'val/nothing' is not logged"]),
    ],
)
def test_bundled_benchmark_mistakes_fail_before_training(lever, bench_ws, override, needles):
    res = lever("--workspace", bench_ws, "run", PLANS / "baseline.toml", "rce.epochs=1", "eval.questions=20", override)
    refused_before_training(res, bench_ws.parent / "runs", *needles)


def test_a_later_plan_stops_the_first_from_training(lever, bench_ws, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(f'description = "a pool too large"\nextends = "{PLANS / "baseline.toml"}"\n[eval]\npool_size = 5000\n')
    res = lever("--workspace", bench_ws, "run", PLANS / "baseline.toml", bad, "rce.epochs=1", "eval.questions=20")
    refused_before_training(res, bench_ws.parent / "runs", f"{bad}: eval.pool_size = 5000")


def test_train_split_pool_excludes_the_question_itself(lever, bench_ws):
    res = lever(
        "--workspace",
        bench_ws,
        "run",
        PLANS / "baseline.toml",
        "eval.splits=['train']",
        "eval.questions=20",
        "eval.pool_size=600",
    )
    refused_before_training(res, bench_ws.parent / "runs", "at most 599")


def test_missing_start_checkpoint_fails_before_training(lever, bench_ws, tmp_path):
    res = lever(
        "--workspace", bench_ws, "run", PLANS / "baseline.toml", "start.kind=checkpoint", f"start.checkpoint={tmp_path / 'x.st'}"
    )
    refused_before_training(res, bench_ws.parent / "runs", "start.checkpoint file", "does not exist")


# --------------------------------------------------------------------------- the real path (OK-VQA, CLIP, a VLM)

N_TRAIN, N_VAL, POOL = 30, 6, 8
# Val question 3 has no image on purpose (1 of 6): within a failure budget of 20%.
REAL = [
    "rce.epochs=1",
    "model.hidden=16",
    f"eval.questions={N_VAL}",
    "eval.shots=[1,2]",
    f"eval.pool_size={POOL}",
    "eval.max_failed=0.2",
]


@pytest.fixture(scope="module")
def okvqa_template(tmp_path_factory):
    pytest.importorskip("transformers")
    from tiny_models import write_okvqa_workspace

    root = tmp_path_factory.mktemp("okvqa")
    write_okvqa_workspace(root, N_TRAIN, N_VAL, POOL)
    return root


@pytest.fixture
def real_ws(okvqa_template, tmp_path):
    """A fresh copy of the OK-VQA workspace (its OK-VQA files stay shared and are never changed)."""
    shutil.copytree(okvqa_template, tmp_path / "ws")
    return tmp_path / "ws" / "lever.toml"


@pytest.fixture
def tiny_processor(monkeypatch):
    """Qwen2.5-VL's own processor needs torchvision; the tiny image-only one stands in for it."""
    import transformers
    from tiny_models import tiny_qwen

    processor = tiny_qwen()[1]
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", lambda *a, **k: processor)


def run_real(lever, ws: Path, *extra: str):
    return lever("--workspace", ws, "run", PLANS / "baseline.toml", *REAL, *extra)


def test_the_real_workspace_passes_preflight(real_ws, tiny_processor):
    from lever.recipe import Recipe, preflight
    from lever.spec import load_plan, load_workspace

    preflight(Recipe.build(load_plan(PLANS / "baseline.toml", REAL), load_workspace(real_ws), 0, log=lambda m: None))


def test_features_with_more_rows_than_okvqa_train(lever, real_ws):
    feats = torch.load(real_ws.parent / "query_embeddings.pt")
    torch.save(torch.cat([feats, feats[:5]]), real_ws.parent / "query_embeddings.pt")
    res = run_real(lever, real_ws)
    refused_before_training(res, real_ws.parent / "runs", "have 35 rows but OK-VQA train has 30 questions")


def test_features_width_against_the_clip_model(lever, real_ws):
    config = real_ws.parent / "clip" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "projection_dim": 32}))
    res = run_real(lever, real_ws)
    refused_before_training(res, real_ws.parent / "runs", "are 16 wide, but the CLIP model clip embeds in 32")


def test_eval_questions_beyond_the_okvqa_split(lever, real_ws):
    res = run_real(lever, real_ws, "eval.questions=100")
    refused_before_training(res, real_ws.parent / "runs", "eval.questions = 100, but the val split has 6 questions")


def test_pool_size_beyond_the_okvqa_train_items(lever, real_ws):
    res = run_real(lever, real_ws, "eval.pool_size=64")
    refused_before_training(res, real_ws.parent / "runs", "eval.pool_size = 64, but there are 30 train items")


def test_missing_image_folder(lever, real_ws):
    real_ws.write_text(real_ws.read_text().replace("val_images = ", 'val_images = "nowhere"\n# '))
    res = run_real(lever, real_ws)
    refused_before_training(res, real_ws.parent / "runs", "okvqa.val_images = 'nowhere' does not exist")


def test_vlm_that_is_not_image_text_to_text(lever, real_ws, tiny_processor):
    shutil.copy(real_ws.parent / "clip" / "config.json", real_ws.parent / "vlm" / "config.json")
    res = run_real(lever, real_ws)
    refused_before_training(res, real_ws.parent / "runs", "describes a 'clip' model, which is not an image-text-to-text model")


def test_processor_without_torchvision_names_the_package(lever, real_ws, monkeypatch):
    """The real Qwen2.5-VL processor from the folder: transformers wants torchvision for its video processor."""
    import transformers

    if importlib.util.find_spec("torchvision") is not None:  # simulate its absence where it is installed
        find_spec = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchvision" else find_spec(name, *a))

        def needs_torchvision(*a, **k):
            raise ImportError("Qwen2VLVideoProcessor requires the Torchvision library but it was not found in your environment.")

        monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", needs_torchvision)
    res = run_real(lever, real_ws)
    refused_before_training(res, real_ws.parent / "runs", "needs torchvision, which is not installed", "pip install torchvision")


def test_missing_images_beyond_the_failure_budget(lever, real_ws, tiny_processor, tmp_path):
    strict = [a for a in REAL if not a.startswith("eval.max_failed")]  # the default budget: 1%
    res = lever("--workspace", real_ws, "run", PLANS / "baseline.toml", *strict)  # 1 of 6 val images missing
    refused_before_training(res, real_ws.parent / "runs", "1 of 6 val images are missing", "COCO_val2014_000000000503.jpg")
    text = real_ws.read_text()
    shared = Path(text.split('train_images = "')[1].split('"')[0])
    images = tmp_path / "train_images"  # a third of the demonstration candidates' images gone
    images.mkdir()
    for path in sorted(shared.iterdir())[10:]:
        shutil.copy(path, images / path.name)
    real_ws.write_text(text.replace(str(shared), str(images)))
    res = run_real(lever, real_ws)
    refused_before_training(res, real_ws.parent / "runs", "10 of 30 train (demonstration candidates) images are missing")


def test_features_from_another_clip_model(lever, real_ws, tiny_processor):
    from tiny_models import tiny_clip

    from lever.eval.clip import clip_features
    from lever.eval.okvqa import load_okvqa

    root = real_ws.parent
    base = root / "okvqa_train"
    q, a = base / "OpenEnded_mscoco_train2014_questions.json", base / "mscoco_train2014_annotations.json"
    items = load_okvqa(q, a, base / "images", "train")
    torch.save(clip_features(items, tiny_clip(seed=1)), root / "query_embeddings.pt")  # same width, another model
    res = run_real(lever, real_ws)
    refused_before_training(res, root / "runs", "not in the space of the CLIP model", "cosine similarity")


def test_a_missing_weight_shard_is_named_before_training_and_before_generation(lever, real_ws, tiny_processor):
    vlm = real_ws.parent / "vlm"
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index = {"metadata": {}, "weight_map": {"lm_head.weight": shards[0], "model.norm.weight": shards[1], "x": shards[1]}}
    (vlm / "model.safetensors.index.json").write_text(json.dumps(index))
    (vlm / shards[0]).write_bytes(b"")  # the first shard downloaded, the second not
    needles = ("1 of the 2 weight files that model.safetensors.index.json names are missing", shards[1], "models.vlm")
    refused_before_training(run_real(lever, real_ws), real_ws.parent / "runs", *needles)
    # `lever data generate` runs the same check before any model loads
    feats = real_ws.parent / "query_embeddings.pt"
    pools = real_ws.parent / "p.json"
    assert lever("--workspace", real_ws, "data", "pools", pools, "-f", feats, "--k", "4", "-n", "3").code == 0
    res = lever("--workspace", real_ws, "data", "generate", pools, real_ws.parent / "g.json", "-f", feats)
    assert res.code == 2 and all(n in res.text for n in needles) and "Traceback" not in res.text, res.text
    assert not (real_ws.parent / "g.json.parts").exists()


def test_images_that_do_not_decode_count_within_the_failure_budget(lever, real_ws, tiny_processor, tmp_path):
    from lever.recipe import Recipe, preflight
    from lever.spec import load_plan, load_workspace

    text = real_ws.read_text()
    shared = Path(text.split('val_images = "')[1].split('"')[0])
    images = tmp_path / "val_images"
    shutil.copytree(shared, images)
    victim = images / "COCO_val2014_000000000501.jpg"
    victim.write_bytes(victim.read_bytes()[:200])  # a truncated JPEG: it exists and does not decode
    real_ws.write_text(text.replace(str(shared), str(images)))
    # 1 of 6 missing (question 3) + 1 of the 5 present not decoding = 2 of 6 = 33% > 20%
    res = run_real(lever, real_ws)
    refused_before_training(
        res, real_ws.parent / "runs", "1 of 6 val images are missing and 1 of the 5 decoded do not decode", "33.3% fail",
        "COCO_val2014_000000000501.jpg",
    )  # fmt: skip
    logs: list[str] = []
    plan = load_plan(PLANS / "baseline.toml", [*REAL, "eval.max_failed=0.4"])  # within a 40% budget: a warning
    preflight(Recipe.build(plan, load_workspace(real_ws), 0, log=logs.append))
    assert any("1 of the 5 decoded do not decode (33.3% fail)" in m for m in logs), logs


def test_image_checks_count_image_files_once_and_questions_by_their_image(tmp_path):
    """VQAv2 asks ~5 questions per image: a missing image is one file (named once) that fails all its questions."""
    from tiny_models import write_okvqa_workspace

    from lever.data.sources import resolve_dataset
    from lever.errors import LeverError
    from lever.eval.preflight import check_missing_images
    from lever.eval.world import check_eval_files
    from lever.spec import load_workspace
    from lever.spec.schema import EvalSpec

    ws, _, _ = write_okvqa_workspace(tmp_path, n_train=8, n_val=6, pool=4)  # val question 3's image is missing
    qfile = next((tmp_path / "okvqa_val").glob("*questions*.json"))
    data = json.loads(qfile.read_text())
    for q in data["questions"]:
        if q["question_id"] in (1000 + 7 * 4, 1000 + 7 * 5):
            q["image_id"] = 503  # questions 4 and 5 ask about question 3's (missing) image
    qfile.write_text(json.dumps(data))
    with pytest.raises(LeverError) as err:
        check_missing_images(check_eval_files(resolve_dataset(load_workspace(ws)), EvalSpec(max_failed=0.2)), lambda m: None)
    message = str(err.value)
    assert "1 of 4 val images are missing (50.0% fail" in message  # 4 files; 3 of the 6 questions fail
    assert message.count("COCO_val2014_000000000503.jpg") == 1
    logs: list[str] = []
    check_missing_images(check_eval_files(resolve_dataset(load_workspace(ws)), EvalSpec(max_failed=0.6)), logs.append)
    assert logs == [
        f"warning: 1 of 4 val images are missing (50.0% fail), e.g. {tmp_path / 'okvqa_val' / 'images'}/COCO_val2014_000000000503.jpg"
    ]
