"""The real path end to end through `lever run`: OK-VQA files on disk, CLIP features, a transformers VLM.

Tiny random models stand in for CLIP and Qwen2.5-VL (built from configs, no download);
the model loaders are the only thing replaced. What a random model answers is not asserted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")

from tiny_models import write_okvqa_workspace  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_VAL, POOL = 30, 6, 8


@pytest.fixture
def real_workspace(tmp_path, monkeypatch):
    ws, clip_pair, (qwen_model, qwen_processor) = write_okvqa_workspace(tmp_path, N_TRAIN, N_VAL, POOL)
    import lever.eval.clip as clip_mod
    import lever.eval.sources as sources
    from lever.eval.hf import HFBackend

    built = []
    monkeypatch.setattr(clip_mod, "load_clip", lambda model, device="cpu": (clip_pair[0].eval(), clip_pair[1]))
    # Qwen2.5-VL's own processor needs torchvision; the tiny image-only one stands in for it.
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", lambda *a, **k: qwen_processor)

    def backend(ws_, spec, device="cpu"):
        built.append(spec)
        return HFBackend.from_pretrained_objects(
            qwen_model,
            qwen_processor,
            device="cpu",
            batch_size=spec.batch_size,
            max_new_tokens=spec.max_new_tokens,
            num_beams=spec.num_beams,
        )

    monkeypatch.setattr(sources, "make_hf_backend", backend)
    return ws, built


def test_run_and_evaluate_with_the_hf_backend(lever, real_workspace):
    ws, built = real_workspace
    args = [
        "--workspace",
        ws,
        "run",
        ROOT / "plans" / "baseline.toml",
        "rce.epochs=1",
        "model.hidden=16",
        f"eval.questions={N_VAL}",
        "eval.shots=[1,2]",
        f"eval.pool_size={POOL}",
        "eval.batch_size=4",
        "eval.num_beams=1",
        "eval.max_new_tokens=3",
        "eval.max_failed=0.2",  # val question 3 has no image on purpose
    ]
    res = lever(*args)
    assert res.code == 0, res.text
    (run_dir,) = sorted((ws.parent / "runs" / "baseline").glob("*/seed-0"))
    (eval_dir,) = sorted(p.parent for p in (run_dir / "eval").glob("*/summary.json"))
    rows = [json.loads(line) for line in (eval_dir / "results.jsonl").read_text().splitlines()]
    assert len(rows) == N_VAL * 2
    val_items = sorted(1000 + 7 * i for i in range(N_VAL))
    train_qids = {1000 + 7 * i for i in range(N_TRAIN)}
    for r in rows:
        assert r["split"] == "val" and r["question_id"] in val_items
        assert len(r["demo_ids"]) == r["shots"] and set(r["demo_ids"]) <= train_qids
        assert isinstance(r["raw_output"], str) and 0.0 <= r["accuracy"] <= 1.0
    one = {r["question_id"]: r["demo_ids"] for r in rows if r["shots"] == 1}
    two = {r["question_id"]: r["demo_ids"] for r in rows if r["shots"] == 2}
    assert all(two[q][:1] == one[q] for q in one)  # greedy: the 1-shot pick is the 2-shot prefix
    failed = [r for r in rows if r["failed"]]
    assert {r["question_id"] for r in failed} == {1000 + 7 * 3} and "image" in failed[0]["error"].lower()
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert summary["backend"] == "hf" and summary["splits"]["val"]["1"] == {
        "accuracy": summary["splits"]["val"]["1"]["accuracy"],
        "n": N_VAL,
        "failed": 1,
    }
    assert (ws.parent / "cache" / "clip").is_dir()  # val features computed once and cached
    # A second evaluation with the same checkpoint and settings is served from the run, without a model.
    again = lever("--workspace", ws, "evaluate", *args[3:])
    assert again.code == 0 and "evaluation cached" in again.text
    assert len(built) == 1


def test_missing_model_directory_fails_before_any_work(lever, real_workspace):
    ws, _ = real_workspace
    ws.write_text(ws.read_text().replace('vlm = "vlm"', 'vlm = "nowhere"'))
    res = lever(
        "--workspace",
        ws,
        "run",
        ROOT / "plans" / "baseline.toml",
        "rce.epochs=1",
        "model.hidden=16",
        f"eval.questions={N_VAL}",
        f"eval.pool_size={POOL}",
    )
    assert res.code == 2 and "nowhere" in res.err and "config.json" in res.err
    assert not (ws.parent / "runs").exists()  # refused before training started
