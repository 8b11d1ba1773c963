"""VQAv2-format data through the whole real path: `data embed / pools / generate` on a [datasets.vqav2] table, then
`lever run vqav2/balanced_v3` (and its baseline) and `lever evaluate`, with a tiny CLIP and a tiny Qwen2.5-VL built
from configs (no download; the model loaders are the only thing replaced). What a random model answers is not asserted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")

from tiny_models import save_workspace_models, tiny_clip, tiny_qwen, write_vqav2_fixture  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_VAL, POOL, QUERIES = 24, 5, 6, 10


def write_vqav2_workspace(root: Path) -> tuple[Path, tuple, tuple]:
    """A workspace with VQAv2 files in a [datasets.vqav2] table (nothing for okvqa), model folders, and the
    names of the files the data commands will write (features.main, candidates.balanced_v3)."""
    tq, ta, ti = write_vqav2_fixture(root / "vqav2_train", n=N_TRAIN, split="train2014")
    vq, va, vi = write_vqav2_fixture(root / "vqav2_val", n=N_VAL, split="val2014")
    clip_pair, qwen_pair = tiny_clip(), tiny_qwen()
    save_workspace_models(root, clip_pair, qwen_pair)
    ws = root / "lever.toml"
    ws.write_text(f"""runs = "runs"
cache = "cache"
plans = "{ROOT / "plans"}"
backend = "hf"
[datasets.vqav2]
train_questions = "{tq}"
train_annotations = "{ta}"
train_images = "{ti}"
val_questions = "{vq}"
val_annotations = "{va}"
val_images = "{vi}"
candidates = {{ balanced_v3 = "generated.json" }}
features = {{ main = "vqav2_embeddings.pt" }}
[models]
vlm = "vlm"
clip = "clip"
""")
    return ws, clip_pair, qwen_pair


@pytest.mark.slow
def test_vqav2_data_commands_then_run_and_evaluate(lever, tmp_path, monkeypatch):
    import torch

    import lever.eval.clip as clip_mod
    import lever.eval.world as sources
    from lever.eval.hf import HFBackend

    ws, clip_pair, (qwen, processor) = write_vqav2_workspace(tmp_path)
    monkeypatch.setattr(clip_mod, "load_clip", lambda model, device="cpu": (clip_pair[0].eval(), clip_pair[1]))
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", lambda *a, **k: processor)
    built = []

    def backend(ws_, spec, device="cpu", protocol=None):
        built.append(spec)
        return HFBackend.from_pretrained_objects(
            qwen, processor, "cpu", spec.batch_size, spec.max_new_tokens, spec.num_beams, protocol=protocol
        )

    monkeypatch.setattr(sources, "make_hf_backend", backend)

    def cli(*args):
        res = lever("--workspace", ws, *args)
        assert res.code == 0, res.text
        return res

    # embed: --dataset vqav2 writes that dataset's features.main, one row per VQAv2 train question
    assert f"[{N_TRAIN}, 16]" in cli("data", "embed", "--dataset", "vqav2", "--device", "cpu").text
    feats = torch.load(tmp_path / "vqav2_embeddings.pt")
    assert feats.shape == (N_TRAIN, 16)
    cli("data", "pools", tmp_path / "pools.json", "--dataset", "vqav2", "--k", POOL, "-n", QUERIES)
    cli(
        "data", "generate", tmp_path / "pools.json", tmp_path / "generated.json", "--dataset", "vqav2",
        "--beams", "2", "--samples", "1", "--random", "2", "--device", "cpu",
    )  # fmt: skip
    data = json.loads((tmp_path / "generated.json").read_text())
    assert data["_meta"]["dataset"] == "vqav2"  # generation settings name the dataset
    train_qids = {(9000 + i) * 1000 + 1 for i in range(N_TRAIN)}
    records = [v for k, v in data.items() if k != "_meta"]
    assert len(records) == QUERIES and all(r["query"]["question_id"] in train_qids for r in records)
    assert all(len(r["query"]["gt_answers_raw"]) == 10 for r in records)
    # the VQAv2 plan (and its baseline, for the table) on the generated data, evaluated on VQAv2 val
    small = [
        "rce.epochs=1", "grpo.epochs=1", "model.hidden=16", f"eval.questions={N_VAL}", f"eval.pool_size={POOL}",
        "eval.batch_size=4", "eval.num_beams=1", "eval.max_new_tokens=3",
    ]  # fmt: skip
    res = cli("run", "vqav2/balanced_v3", *small)
    assert "vqav2/baseline" in res.text  # run too, for the comparison table
    val_qids = sorted((9000 + i) * 1000 + 1 for i in range(N_VAL))
    for name in ("vqav2/balanced_v3", "vqav2/baseline"):
        (run_dir,) = sorted((tmp_path / "runs" / name).glob("*/seed-0"))
        (summary_file,) = sorted((run_dir / "eval").glob("*/summary.json"))
        rows = [json.loads(line) for line in (summary_file.parent / "results.jsonl").read_text().splitlines()]
        assert sorted({r["question_id"] for r in rows}) == val_qids and {r["shots"] for r in rows} == {1, 2}
        assert all(set(r["demo_ids"]) <= train_qids and not r["failed"] for r in rows)
        summary = json.loads(summary_file.read_text())
        assert summary["inputs"]["dataset"] == "vqav2" and "okvqa" not in summary["inputs"]
    assert (tmp_path / "cache" / "clip" / "vqav2" / f"val-{N_VAL}.pt").is_file()  # its own val-feature cache
    n_built = len(built)
    again = cli("evaluate", "vqav2/balanced_v3", *small, "--by", "answer_type")
    assert "evaluation cached" in again.text and len(built) == n_built
    # rows keep the annotation's types; per type, the official evaluator's round(100 * mean accuracy, 2)
    from tiny_models import vqav2_answers

    (summary_file,) = sorted((tmp_path / "runs" / "vqav2/balanced_v3").glob("*/seed-0/eval/*/summary.json"))
    rows = [json.loads(line) for line in (summary_file.parent / "results.jsonl").read_text().splitlines()]
    assert all(r["answer_type"] == vqav2_answers(r["question_id"] // 1000 - 9000)[2] for r in rows)
    assert all(r["question_type"] == vqav2_answers(r["question_id"] // 1000 - 9000)[1] for r in rows)
    table = " ".join(again.out.split())
    for atype in ("yes/no", "number", "other"):
        accs = [r["accuracy"] for r in rows if r["answer_type"] == atype and r["shots"] == 1]
        assert f"{atype} (n={len(accs)})" in table
    one = [r for r in rows if r["shots"] == 1]
    official = {t: round(100 * sum(r["accuracy"] for r in one if r["answer_type"] == t) / sum(r["answer_type"] == t for r in one), 2) for t in ("yes/no", "number", "other")}  # fmt: skip
    assert f"│ 1 │ {official['number']:.2f} │ {official['other']:.2f} │ {official['yes/no']:.2f} │" in table
    # the same plan on the okvqa dataset is another plan hash; this workspace has no OK-VQA files for it
    res = lever("--workspace", ws, "run", "vqav2/balanced_v3", *small, "data.dataset=okvqa", "--no-baseline")
    assert res.code == 2 and "balanced_v3" in res.err and "Traceback" not in res.text
