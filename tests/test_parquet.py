"""Datasets in the Hugging Face parquet layout (lmms-eval's copies): the same small fixture written in both layouts
gives the same items, image bytes, CLIP features, prompt bytes and, end to end through `data embed / pools /
generate`, `run` and `evaluate` with the tiny models, the same accuracies; bad rows are exit 2 naming the file,
row and column."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("pyarrow")

from tiny_models import write_parquet_copy, write_vqav2_fixture  # noqa: E402

from lever.data.sources import resolve_dataset  # noqa: E402
from lever.eval.world import heldout_split, load_split, split_sizes  # noqa: E402
from lever.spec import load_workspace  # noqa: E402
from lever.spec.schema import EvalSpec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_VAL, POOL, QUERIES = 24, 5, 6, 10


def write_both_layouts(root: Path, models: bool = False) -> Path:
    """One workspace, one fixture (VQAv2's format: answer and question types), twice: [datasets.json] as the VQA
    JSON files and image folders, [datasets.hf] as parquet files (train: answers as VQAv2's dicts, in two shards
    named by a glob; val: answers as OK-VQA's strings, files listed). Each dataset names its own features and
    candidate data, which the data commands write."""
    tq, ta, ti = write_vqav2_fixture(root / "train", n=N_TRAIN, split="train2014")
    vq, va, vi = write_vqav2_fixture(root / "val", n=N_VAL, split="val2014")
    write_parquet_copy(tq, ta, ti, root / "hf" / "train", "train2014")
    val = write_parquet_copy(vq, va, vi, root / "hf" / "val", "val2014", answers="strings")
    ws = root / "lever.toml"
    ws.write_text(
        f"""runs = "runs"
cache = "cache"
plans = "{ROOT / "plans"}"
backend = "hf"
[datasets.json]
train_questions = "{tq}"
train_annotations = "{ta}"
train_images = "{ti}"
val_questions = "{vq}"
val_annotations = "{va}"
val_images = "{vi}"
candidates = {{ balanced_v3 = "json_data.json" }}
features = {{ main = "json_features.pt" }}
[datasets.hf]
train_parquet = "hf/train/*.parquet"
val_parquet = [{", ".join(f'"{p.relative_to(root)}"' for p in val)}]
candidates = {{ balanced_v3 = "hf_data.json" }}
features = {{ main = "hf_features.pt" }}
"""
        + ('[models]\nvlm = "vlm"\nclip = "clip"\n' if models else "")
    )
    return ws


def _fields(items):
    return [(it.index, it.question_id, it.image_id, it.question, it.answers, it.types()) for it in items]


def test_both_layouts_give_the_same_items_and_image_bytes(tmp_path):
    ws = load_workspace(write_both_layouts(tmp_path))
    js, hf = resolve_dataset(ws, "json"), resolve_dataset(ws, "hf")
    assert (js.layout, hf.layout) == ("vqa", "parquet") and js.splits == hf.splits == ("train", "val")
    assert split_sizes(js) == split_sizes(hf) == {"train": N_TRAIN, "val": N_VAL}
    logs: list[str] = []
    for split in ("train", "val"):
        a, b = load_split(js, split), load_split(hf, split, logs.append)
        assert _fields(a) == _fields(b) and len(b) == (N_TRAIN if split == "train" else N_VAL)
        assert all(it.answer_type and it.question_type for it in b)  # the answer and question type, in both layouts
        assert all(Path(x.image).read_bytes() == Path(y.image).read_bytes() for x, y in zip(a, b))
        assert all(Path(y.image).parent.parent == tmp_path / "cache" / "images" / "hf" for y in b)
    assert _fields(load_split(hf, "val", limit=2)) == _fields(load_split(js, "val"))[:2]
    assert len(logs) == 2  # each split's images written once; read again, they are only listed
    load_split(hf, "train", logs.append)
    assert len(logs) == 2


def test_both_layouts_hold_out_the_same_test_questions(tmp_path):
    """The same test_* keys draw the same held-out questions from either layout's val split, outside val's."""
    ws = write_both_layouts(tmp_path)
    keys = "test_size = 2\ntest_after = 2\ntest_seed = 5\n"
    ws.write_text(ws.read_text().replace("[datasets.hf]\n", f"{keys}[datasets.hf]\n{keys}"))
    js, hf = (resolve_dataset(load_workspace(ws), name) for name in ("json", "hf"))
    spec = EvalSpec(questions=2, splits=["val", "test"])
    a, b = heldout_split(js, spec, lambda msg: None), heldout_split(hf, spec, lambda msg: None)
    val = [it.question_id for it in load_split(js, "val")]
    assert _fields(a) == _fields(b) and len(a) == 2 and {it.question_id for it in a} <= set(val[2:])


def test_both_layouts_give_the_same_features_and_prompt_bytes(tmp_path):
    pytest.importorskip("transformers")
    import torch
    from tiny_models import tiny_clip, tiny_qwen

    from lever.eval.backend import Request
    from lever.eval.clip import clip_features
    from lever.eval.hf import HFBackend, prompt_images

    ws = load_workspace(write_both_layouts(tmp_path))
    js, hf = resolve_dataset(ws, "json"), resolve_dataset(ws, "hf")
    clip = tiny_clip()
    assert torch.equal(clip_features(load_split(js, "train"), clip), clip_features(load_split(hf, "train"), clip))
    backend = HFBackend.from_pretrained_objects(*tiny_qwen(), "cpu", 2, 3, 1)
    inputs = []
    for ds in (js, hf):
        train, val = load_split(ds, "train"), load_split(ds, "val")
        req = Request("val", val[1], [train[3], train[0]])
        inputs.append(backend.encode([backend.render(req)], prompt_images(req, backend.protocol)))
    assert inputs[0].keys() == inputs[1].keys() and "pixel_values" in inputs[0]
    assert all(torch.equal(inputs[0][k], inputs[1][k]) for k in inputs[0])


def _rewrite(path: Path, change) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = pq.read_table(path).to_pylist()
    pq.write_table(pa.Table.from_pylist(change(rows)), path)


def test_bad_parquet_rows_name_the_file_row_and_column(lever, tmp_path):
    ws = write_both_layouts(tmp_path)
    shard = tmp_path / "hf" / "train" / "train2014-00001-of-00002.parquet"
    kept = shard.read_bytes()

    def fails(*words: str) -> None:
        res = lever("--workspace", ws, "data", "embed", "--dataset", "hf", "--out", tmp_path / "f.pt")
        assert res.code == 2 and "Traceback" not in res.text, res.text
        for w in words:
            assert w in res.err, (w, res.err)
        shard.write_bytes(kept)

    _rewrite(shard, lambda rows: [{k: v for k, v in r.items() if k != "answers"} for r in rows])
    fails(str(shard), "no column 'answers'")
    _rewrite(shard, lambda rows: [rows[0], rows[1] | {"question_id": rows[0]["question_id"]}, *rows[2:]])
    fails(str(shard), "row 1", "column 'question_id'", "listed twice", "row 0")
    _rewrite(shard, lambda rows: [rows[0], rows[1], rows[2] | {"image": {"bytes": b"\xff\xd8 not a jpeg", "path": None}}])
    fails(str(shard), "row 2", "column 'image'", "does not decode")
    _rewrite(shard, lambda rows: [rows[0] | {"answers": []}, *rows[1:]])
    fails(str(shard), "row 0", "column 'answers'")
    shard.write_bytes(b"PAR1 cut short")
    fails(str(shard), "cannot be read as a parquet file")
    assert not (tmp_path / "f.pt").exists()


@pytest.mark.slow
def test_both_layouts_give_the_same_data_and_accuracies_end_to_end(lever, tmp_path, monkeypatch):
    """embed -> pools -> generate -> run -> evaluate on each layout of one fixture, with the tiny CLIP and Qwen2.5-VL
    (only the model loaders replaced): the same features, pools, candidate data and per-question accuracies."""
    transformers = pytest.importorskip("transformers")
    import torch
    from tiny_models import save_workspace_models, tiny_clip, tiny_qwen

    import lever.eval.clip as clip_mod
    import lever.eval.world as world
    from lever.eval.hf import HFBackend

    ws = write_both_layouts(tmp_path, models=True)
    clip_pair, (qwen, processor) = tiny_clip(), tiny_qwen()
    save_workspace_models(tmp_path, clip_pair, (qwen, processor))
    monkeypatch.setattr(clip_mod, "load_clip", lambda model, device="cpu": (clip_pair[0].eval(), clip_pair[1]))
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", lambda *a, **k: processor)
    monkeypatch.setattr(
        world,
        "make_hf_backend",
        lambda ws_, spec, device="cpu", protocol=None: HFBackend.from_pretrained_objects(
            qwen, processor, "cpu", spec.batch_size, spec.max_new_tokens, spec.num_beams, protocol=protocol
        ),
    )

    def cli(*args):
        res = lever("--workspace", ws, *args)
        assert res.code == 0, res.text
        return res

    small = [
        "rce.epochs=1", "grpo.epochs=1", "model.hidden=16", f"eval.questions={N_VAL}", f"eval.pool_size={POOL}",
        "eval.batch_size=4", "eval.num_beams=1", "eval.max_new_tokens=3",
    ]  # fmt: skip
    rows, accuracy = {}, {}
    for d in ("json", "hf"):
        cli("data", "embed", "--dataset", d, "--device", "cpu")
        cli("data", "pools", tmp_path / f"{d}_pools.json", "--dataset", d, "--k", POOL, "-n", QUERIES)
        cli(
            "data", "generate", tmp_path / f"{d}_pools.json", tmp_path / f"{d}_data.json", "--dataset", d,
            "--beams", "2", "--samples", "1", "--random", "2", "--device", "cpu",
        )  # fmt: skip
        cli("run", "vqav2/balanced_v3", f"data.dataset={d}", *small, "--no-baseline")
        assert "evaluation cached" in cli("evaluate", "vqav2/balanced_v3", f"data.dataset={d}", *small).text
    for summary in sorted((tmp_path / "runs" / "vqav2" / "balanced_v3").glob("*/seed-0/eval/*/summary.json")):
        d = json.loads(summary.read_text())["inputs"]["dataset"]
        rows[d] = [json.loads(line) for line in (summary.parent / "results.jsonl").read_text().splitlines()]
        accuracy[d] = json.loads(summary.read_text())["splits"]
    assert torch.equal(torch.load(tmp_path / "json_features.pt"), torch.load(tmp_path / "hf_features.pt"))
    assert (tmp_path / "json_pools.json").read_bytes() == (tmp_path / "hf_pools.json").read_bytes()
    data = {d: json.loads((tmp_path / f"{d}_data.json").read_text()) for d in ("json", "hf")}
    assert data["json"].pop("_meta")["dataset"] == "json" and data["hf"].pop("_meta")["dataset"] == "hf"
    assert data["json"] == data["hf"]  # the VLM answered and scored every sequence alike
    keep = ("question_id", "shots", "demo_ids", "raw_output", "answer", "accuracy", "failed")
    assert [{k: r.get(k) for k in keep} for r in rows["json"]] == [{k: r.get(k) for k in keep} for r in rows["hf"]]
    assert sorted(rows) == ["hf", "json"] and len(rows["hf"]) == 2 * N_VAL and accuracy["json"] == accuracy["hf"]


def test_a_parquet_table_is_one_layout_with_train_and_val(lever, tmp_path):
    ws = write_both_layouts(tmp_path)
    text = ws.read_text()
    for bad, words in (
        (text.replace("[datasets.hf]\n", '[datasets.hf]\nval_images = "val/images"\n'), ["datasets.hf", "not both"]),
        (text.replace("train_parquet = ", "# train_parquet = "), ["datasets.hf", "missing train_parquet"]),
    ):
        ws.write_text(bad)
        res = lever("--workspace", ws, "data", "embed", "--dataset", "hf", "--out", tmp_path / "f.pt")
        assert res.code == 2 and all(w in res.err for w in words) and "Traceback" not in res.text, res.text
    ws.write_text(text.replace("hf/train/*.parquet", "hf/train/*.parq"))
    res = lever("--workspace", ws, "data", "embed", "--dataset", "hf", "--out", tmp_path / "f.pt")
    assert res.code == 2 and "datasets.hf.train_parquet 'hf/train/*.parq' matches no parquet file" in res.err, res.text
    ws.write_text(text.replace("hf/train/*.parquet", "hf/train"))  # a folder: its parquet files
    hf = resolve_dataset(load_workspace(ws), "hf")
    assert (
        hf.parquet_files("train") == sorted((tmp_path / "hf" / "train").glob("*.parquet")) and len(hf.parquet_files("train")) == 2
    )
