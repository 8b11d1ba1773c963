"""The real path end to end through `lever run`: OK-VQA files on disk, CLIP features, a transformers VLM.

Tiny random models stand in for CLIP and Qwen2.5-VL (built from configs, no download);
the model loaders are the only thing replaced. What a random model answers is not asserted.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")

import torch  # noqa: E402
from tiny_models import (  # noqa: E402
    tiny_clip,
    write_okvqa_fixture,
    write_okvqa_workspace,  # noqa: E402
)

from lever.eval.clip import clip_features  # noqa: E402
from lever.eval.okvqa import load_okvqa  # noqa: E402
from lever.runs.layout import RunDir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_VAL, POOL = 30, 6, 8


@pytest.fixture
def real_workspace(tmp_path, monkeypatch):
    ws, clip_pair, (qwen_model, qwen_processor) = write_okvqa_workspace(tmp_path, N_TRAIN, N_VAL, POOL)
    import lever.eval.clip as clip_mod
    import lever.eval.world as sources
    from lever.eval.hf import HFBackend

    built = []
    monkeypatch.setattr(clip_mod, "load_clip", lambda model, device="cpu": (clip_pair[0].eval(), clip_pair[1]))
    # Qwen2.5-VL's own processor needs torchvision; the tiny image-only one stands in for it.
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", lambda *a, **k: qwen_processor)

    def backend(ws_, spec, device="cpu", protocol=None):
        built.append(spec)
        return HFBackend.from_pretrained_objects(
            qwen_model,
            qwen_processor,
            device="cpu",
            batch_size=spec.batch_size,
            max_new_tokens=spec.max_new_tokens,
            num_beams=spec.num_beams,
            protocol=protocol,
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
    # Each image is encoded once: the queries' images recur at 1 and 2 shots, the demonstrations' across questions.
    uses, encoded = map(int, re.search(r"image features: (\d+) uses, (\d+) encoded", res.text).groups())
    assert 0 < encoded < uses
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
    # A fresh evaluation folder: the answers come from the reward cache, only the failed question is asked again.
    results = (eval_dir / "results.jsonl").read_bytes()
    shutil.rmtree(eval_dir)
    again = lever("--workspace", ws, "evaluate", *args[3:])
    assert again.code == 0 and "evaluation: 2 VLM calls, 10 answers from the reward cache" in again.text, again.text
    assert (eval_dir / "results.jsonl").read_bytes() == results


def test_training_scoring_and_evaluation_share_the_tiny_vlms_answers(lever, real_workspace):
    """Training's scoring (online GRPO, refresh rounds, val/reward) and `lever evaluate` ask the tiny Qwen2.5-VL
    through one reward cache: a prompt the evaluation answered is free to training's scoring with the same generation
    settings, and asked again under another answer length, or where the protocol's evaluation leaves sampling to the
    model folder while training's scoring turns it off (lever-plus: sampling = "model_config", candidate_sampling =
    "greedy")."""
    from lever.recipe import Recipe
    from lever.spec import load_plan, load_workspace

    ws, built = real_workspace
    plan = ["rce.epochs=1", "model.hidden=16", "eval.questions=6", "eval.shots=[2]", f"eval.pool_size={POOL}"]
    plan += ['eval.splits=["train"]', "eval.num_beams=1", "eval.max_new_tokens=3", "eval.batch_size=4", "eval.protocol=lever"]
    baseline = ROOT / "plans" / "baseline.toml"
    assert lever("--workspace", ws, "run", baseline, *plan).code == 0
    (run_dir,) = sorted((ws.parent / "runs" / "baseline").glob("*/seed-0"))
    (results,) = run_dir.glob("eval/*/results.jsonl")
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(rows) == 6 and not any(r["failed"] for r in rows)

    def scored(*overrides: str):
        r = Recipe.build(load_plan(baseline, [*plan, *overrides]), load_workspace(ws), 0, lambda m: None)
        row_of = {it.question_id: i for i, it in enumerate(r.scoring.items)}
        fields = r.scoring.fields([row_of[x["question_id"]] for x in rows], [[row_of[d] for d in x["demo_ids"]] for x in rows])
        return r.scoring.counts, [f["vqa_raw_generation"] for f in fields]

    counts, raw = scored()
    assert (counts.calls, counts.hits) == (0, 6) and raw == [x["raw_output"] for x in rows]
    counts, _ = scored("eval.max_new_tokens=2")  # another answer length: other prompts to the VLM
    assert (counts.calls, counts.hits) == (6, 0)
    assert lever("--workspace", ws, "evaluate", baseline, *plan, "eval.protocol=lever-plus").code == 0
    counts, _ = scored("eval.protocol=lever-plus")  # its evaluation samples as the model folder says; scoring does not
    assert (counts.calls, counts.hits) == (6, 0)


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


def test_every_evaluation_input_is_in_its_key(lever, real_workspace):
    """Changing any input of an OK-VQA evaluation (features, question files, image folders, model folders)
    is new work, never the cached answer; a missing image is not counted as present by the CLIP cache."""
    ws, built = real_workspace
    root = ws.parent
    args = [
        "--workspace",
        ws,
        "evaluate",
        ROOT / "plans" / "baseline.toml",
        "rce.epochs=1",
        "model.hidden=16",
        f"eval.questions={N_VAL}",
        "eval.shots=[1]",
        f"eval.pool_size={POOL}",
        "eval.num_beams=1",
        "eval.max_new_tokens=2",
        "eval.max_failed=0.2",  # val question 3 has no image at first
    ]
    assert lever("--workspace", ws, "run", *args[3:], "--no-eval").code == 0
    assert lever(*args).code == 0

    def fresh() -> bool:
        before = len(built)
        res = lever(*args)
        assert res.code == 0, res.text
        return len(built) == before + 1 and "evaluation cached" not in res.text

    assert not fresh()  # nothing changed: cached
    vq = next((root / "okvqa_val").glob("*questions*.json"))
    vq.write_text(vq.read_text().replace("?", " ?", 1))  # an edited question
    assert fresh()
    va = next((root / "okvqa_val").glob("*annotations*.json"))
    va.write_text(va.read_text().replace('"ans0"', '"answer0"'))  # edited answers
    assert fresh()
    vi = root / "okvqa_val" / "images"
    shutil.copy(next(vi.glob("*.jpg")), vi / "COCO_val2014_000000000503.jpg")  # question 3's missing image appears
    assert fresh()
    (run,) = (root / "runs" / "baseline").glob("*/seed-0")
    _, rows = RunDir(run).selected_eval().read()
    assert len(rows) == N_VAL and not any(r["failed"] for r in rows)  # question 3 answered with its image now
    cfg = json.loads((root / "clip" / "config.json").read_text())
    cfg["logit_scale_init_value"] = 1.0  # another CLIP model (its config differs)
    (root / "clip" / "config.json").write_text(json.dumps(cfg))
    assert fresh()
    (root / "vlm" / "weights.safetensors").write_bytes(b"other weights")  # another VLM
    assert fresh()
    assert not fresh()  # and cached again
    # A finished run is not reused after its features file changed: it trains again, then evaluates anew.
    feats = torch.load(root / "query_embeddings.pt")
    nudged = torch.nn.functional.normalize(
        feats + 1e-3 * torch.randn(feats.shape, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    torch.save(nudged, root / "query_embeddings.pt")  # recomputed features: still the CLIP model's space
    res = lever("--workspace", ws, "run", *args[3:])
    assert res.code == 0 and "features changed since it was trained" in res.text and "evaluation cached" not in res.text
    runs = lever("--workspace", ws, "runs")
    assert runs.code == 0 and "features:" in runs.out and "eval:" in runs.out


def test_clip_cache_does_not_count_a_missing_image(tmp_path):

    import lever.eval.clip as clip_mod

    q, a, images = write_okvqa_fixture(tmp_path / "val", n=3, skip_images=(1,))
    items = load_okvqa(q, a, images, "val", None)
    pair = tiny_clip()
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "config.json").write_text("{}")
    calls = []

    def features(items_, model, batch_size=64, device="cpu", part="both"):
        calls.append(1)
        return clip_features(items_, pair)

    real = clip_mod.clip_features
    clip_mod.clip_features = features
    try:
        first = clip_mod.cached_clip_features(items, tmp_path / "clip", tmp_path / "c.pt")
        clip_mod.cached_clip_features(items, tmp_path / "clip", tmp_path / "c.pt")
        assert len(calls) == 1
        shutil.copy(images / "COCO_val2014_000000000500.jpg", images / "COCO_val2014_000000000501.jpg")
        second = clip_mod.cached_clip_features(items, tmp_path / "clip", tmp_path / "c.pt")
        assert len(calls) == 2 and not torch.equal(first[1], second[1])  # the image now counts
    finally:
        clip_mod.clip_features = real


def test_failures_beyond_the_budget_stop_the_evaluation(lever, real_workspace):
    ws, _ = real_workspace
    root = ws.parent
    plan = [ROOT / "plans" / "baseline.toml", "rce.epochs=1", "model.hidden=16", f"eval.questions={N_VAL}"]
    plan += ["eval.shots=[1]", f"eval.pool_size={POOL}", "eval.num_beams=1", "eval.max_new_tokens=2"]
    assert lever("--workspace", ws, "run", *plan, "--no-eval").code == 0  # the default budget: 1%
    res = lever("--workspace", ws, "evaluate", *plan)  # the preflight finds it before any answer
    assert res.code == 2 and "1 of 6 val images are missing" in res.err and "COCO_val2014_000000000503.jpg" in res.err
    (run,) = (root / "runs" / "baseline").glob("*/seed-0")
    assert RunDir(run).selected_eval() is None and not list(run.glob("eval/*/partial-*"))  # nothing answered
    assert RunDir(run).state == "trained" and RunDir(run).eval_status()["state"] == "failed"
    vi = root / "okvqa_val" / "images"
    shutil.copy(next(vi.glob("*.jpg")), vi / "COCO_val2014_000000000503.jpg")  # the image is restored
    res = lever("--workspace", ws, "evaluate", *plan)  # the image folder changed: a new evaluation
    assert res.code == 0, res.text
    _, rows = RunDir(run).selected_eval().read()
    assert len(rows) == N_VAL and not any(r["failed"] for r in rows)


def test_evaluate_checks_its_inputs_first_and_never_touches_the_training_status(lever, real_workspace, monkeypatch):
    """`lever evaluate` runs `lever run`'s preflight before any answer (a missing weight shard, an image that does not
    decode: exit 2, no VLM built, the finished run stays `done` with its evaluation), takes the run's lock, and
    after Ctrl-C names the interrupted evaluation (never "not finished training")."""
    from lever.io import file_lock

    ws, built = real_workspace
    root = ws.parent
    plan = [ROOT / "plans" / "baseline.toml", "rce.epochs=1", "model.hidden=16", f"eval.questions={N_VAL}"]
    plan += ["eval.shots=[1]", f"eval.pool_size={POOL}", "eval.num_beams=1", "eval.max_new_tokens=2", "eval.max_failed=0.2"]
    assert lever("--workspace", ws, "run", *plan).code == 0
    (run_dir,) = (root / "runs" / "baseline").glob("*/seed-0")
    run = RunDir(run_dir)
    results = run.selected_eval().results.read_bytes()
    assert run.state == "done" and len(built) == 1

    index = root / "vlm" / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a.weight": "model-00001-of-00002.safetensors"}}))
    res = lever("--workspace", ws, "evaluate", *plan, "--redo")
    assert res.code == 2 and "model-00001-of-00002.safetensors" in res.err and "missing" in res.err, res.text
    assert "free some space" not in res.err and len(built) == 1  # the real cause; no VLM was built
    assert run.state == "done" and run.selected_eval().results.read_bytes() == results  # the redo deleted nothing
    index.unlink()

    image = sorted((root / "okvqa_val" / "images").glob("*.jpg"))[0]
    image.write_bytes(image.read_bytes()[:200])  # truncated: 2 of 6 val images fail, above eval.max_failed
    res = lever("--workspace", ws, "evaluate", *plan, "--redo")
    assert res.code == 2 and "do not decode" in res.err and image.name in res.err, res.text
    assert len(built) == 1 and run.state == "done" and run.eval_status()["state"] == "failed"
    shutil.copy(sorted((root / "okvqa_val" / "images").glob("*.jpg"))[1], image)

    with file_lock(run.lock, wait=False, what="test"):  # a training or another evaluation of the run holds it
        res = lever("--workspace", ws, "evaluate", *plan, "--redo")
    assert res.code == 1 and "is being run by" in res.err and run.selected_eval().results.read_bytes() == results

    import lever.eval.hf as hf

    def ctrl_c(self, requests):
        raise KeyboardInterrupt

    real = hf.HFBackend.answer
    monkeypatch.setattr(hf.HFBackend, "answer", ctrl_c)
    res = lever("--workspace", ws, "evaluate", *plan, "--redo")
    assert res.code == 130 and run.state == "done" and run.eval_status()["state"] == "interrupted"
    monkeypatch.setattr(hf.HFBackend, "answer", real)
    res = lever("--workspace", ws, "evaluate", *plan)
    assert res.code == 0 and "its last evaluation did not finish (interrupted: stopped by Ctrl-C" in res.text, res.text
    assert run.state == "done" and run.eval_status() is None


@pytest.mark.slow
def test_three_plans_in_one_command_load_the_vlm_once(lever, tmp_path, monkeypatch):
    """`lever run A B C` through the real loaders: one weight load of the VLM for the three evaluations."""
    ws, _, (qwen_model, qwen_processor) = write_okvqa_workspace(tmp_path, N_TRAIN, N_VAL, POOL)
    qwen_model.save_pretrained(tmp_path / "vlm")  # the VLM's weights too (the tiny model's)
    # Qwen2.5-VL's own processor needs torchvision; the tiny image-only one stands in for it.
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", lambda *a, **k: qwen_processor)
    loads = []
    real = transformers.AutoModelForImageTextToText.from_pretrained
    monkeypatch.setattr(
        transformers.AutoModelForImageTextToText, "from_pretrained", lambda *a, **k: loads.append(a) or real(*a, **k)
    )
    plans = [ROOT / "plans" / f"{p}.toml" for p in ("baseline", "plan10", "plan1")]
    common = ["rce.epochs=1", "grpo.epochs=1", "model.hidden=16", f"eval.questions={N_VAL}", "eval.shots=[1]"]
    common += [f"eval.pool_size={POOL}", "eval.num_beams=1", "eval.max_new_tokens=2", "eval.max_failed=0.2"]
    res = lever("--workspace", ws, "run", *plans, *common)
    assert res.code == 0, res.text
    assert len(list((tmp_path / "runs").glob("*/*/seed-0/eval/*/summary.json"))) == 3  # three evaluations
    assert len(loads) == 1


def test_a_generation_setting_reaches_generate_and_the_evaluation_key(lever, real_workspace, monkeypatch, tmp_path):
    """The protocol file's [generation] table is what `model.generate` gets, and editing one of its settings
    (same file, same name) is a new evaluation, never the cached answers."""
    import lever.eval.world as sources
    from lever.eval.protocol import resolve_protocol

    ws, built = real_workspace
    calls: list[dict] = []
    inner = sources.make_hf_backend  # the fixture's: the tiny VLM

    def backend(ws_, spec, device="cpu", protocol=None):
        be = inner(ws_, spec, device)
        be.protocol = protocol or resolve_protocol(spec)  # as the real make_hf_backend builds it
        real = type(be.model).generate.__get__(be.model)
        monkeypatch.setattr(be.model, "generate", lambda **kw: calls.append(kw) or real(**kw))
        return be

    monkeypatch.setattr(sources, "make_hf_backend", backend)
    proto = tmp_path / "mine.toml"
    lever_toml = (ROOT / "lever" / "eval" / "protocols" / "lever.toml").read_text()
    proto.write_text(lever_toml.replace('eos = "config"', 'eos = "config"\nlength_penalty = 0.5'))
    plan = [ROOT / "plans" / "baseline.toml", "rce.epochs=1", "model.hidden=16", f"eval.questions={N_VAL}"]
    plan += ["eval.shots=[1]", f"eval.pool_size={POOL}", "eval.num_beams=2", "eval.max_new_tokens=2"]
    plan += ["eval.max_failed=0.2", f"eval.protocol={proto}"]
    assert lever("--workspace", ws, "run", *plan, "--no-eval").code == 0
    res = lever("--workspace", ws, "evaluate", *plan)
    assert res.code == 0, res.text
    settings = {k: v for k, v in calls[-1].items() if not isinstance(v, torch.Tensor) and k != "cache"}  # cache: the prefill
    assert settings == {
        "max_new_tokens": 2,
        "num_beams": 2,
        "pad_token_id": settings["pad_token_id"],
        "do_sample": False,
        "length_penalty": 0.5,
    }
    assert "evaluation cached" in lever("--workspace", ws, "evaluate", *plan).text
    proto.write_text(proto.read_text().replace("length_penalty = 0.5", "length_penalty = 1.5"))
    n = len(built)
    res = lever("--workspace", ws, "evaluate", *plan)
    assert res.code == 0 and "evaluation cached" not in res.text and len(built) == n + 1
    assert calls[-1]["length_penalty"] == 1.5
    (run,) = (ws.parent / "runs" / "baseline").glob("*/seed-0")
    evals = sorted(p.parent.name for p in (run / "eval").glob("*/summary.json"))
    assert len(evals) == 2  # two keys, one per length penalty
    recorded = {
        json.loads((run / "eval" / e / "summary.json").read_text())["inputs"]["protocol"]["generation"]["length_penalty"]
        for e in evals
    }
    assert recorded == {0.5, 1.5}


@pytest.mark.slow
def test_the_real_path_runs_0_and_8_shots_for_a_trained_and_a_baseline_selector(lever, real_workspace):
    ws, _ = real_workspace
    common = [f"eval.questions={N_VAL}", "eval.shots=[0,8]", f"eval.pool_size={POOL}", "eval.batch_size=4"]
    common += ["eval.num_beams=1", "eval.max_new_tokens=3", "eval.max_failed=0.2"]  # val question 3 has no image
    trained = [ROOT / "plans" / "baseline.toml", "rce.epochs=1", "model.hidden=16", *common]
    res = lever("--workspace", ws, "run", *trained)
    assert res.code == 0, res.text
    # similar by the image embedding alone: CLIP's image features, computed and cached beside the item features
    res = lever("--workspace", ws, "run", ROOT / "plans" / "baselines" / "similar_image.toml", *common, "--no-baseline")
    assert res.code == 0, res.text
    assert any((ws.parent / "cache" / "clip").glob("train-image-*.pt"))
    rows = {}
    for plan in ("baseline", "baselines/similar_image"):
        (summary,) = (ws.parent / "runs" / plan).glob("*/seed-0/eval/*/summary.json")
        rows[plan] = [json.loads(line) for line in (summary.parent / "results.jsonl").read_text().splitlines()]
        assert len(rows[plan]) == 2 * N_VAL
        assert all(len(r["demo_ids"]) == r["shots"] for r in rows[plan])  # 8 shots: beyond the trained 2
    zero = [{r["question_id"]: r["raw_output"] for r in rows[p] if r["shots"] == 0} for p in rows]
    assert zero[0] == zero[1]  # no demonstrations: the same prompt, the same answer, whatever the selector


def test_the_held_out_split_on_okvqa_files(lever, real_workspace):
    """eval.splits = ["val", "test"] on OK-VQA files: the test questions are val-split questions that val never
    asks (here 2 drawn from the 3 after val's first 3); a list naming one of val's is exit 2 naming file and id."""
    ws, _ = real_workspace
    ws.write_text(ws.read_text().replace("[models]", "test_size = 2\ntest_after = 3\n[models]"))
    plan = [ROOT / "plans" / "baseline.toml", "rce.epochs=1", "model.hidden=16", "eval.questions=3", "eval.shots=[1]"]
    plan += [f"eval.pool_size={POOL}", "eval.num_beams=1", "eval.max_new_tokens=3", "eval.max_failed=0.5"]
    res = lever("--workspace", ws, "run", *plan, 'eval.splits=["val","test"]')
    assert res.code == 0, res.text
    (run_dir,) = sorted((ws.parent / "runs" / "baseline").glob("*/seed-0"))
    (results,) = (run_dir / "eval").glob("*/results.jsonl")
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    asked = {s: {r["question_id"] for r in rows if r["split"] == s} for s in ("val", "test")}
    val_ids = sorted(1000 + 7 * i for i in range(N_VAL))
    assert asked["val"] == set(val_ids[:3]) and len(asked["test"]) == 2 and asked["test"] <= set(val_ids[3:])
    (ws.parent / "held.json").write_text(json.dumps([val_ids[4], val_ids[1]]))
    ws.write_text(ws.read_text().replace("test_size = 2\n", 'test_questions = "held.json"\n'))
    res = lever("--workspace", ws, "run", *plan, 'eval.splits=["test"]')
    assert res.code == 2 and "held.json" in res.err and f"question {val_ids[1]}" in res.err, res.text
    assert "Traceback" not in res.text
