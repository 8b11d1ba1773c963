"""Datasets in the VQA format (docs/datasets.md): a VQAv2 fixture read and scored with the official metric, the
dataset in every key it shapes, the workspace's [datasets.NAME] tables, and balancing to a positive share."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import pytest
import torch
from data_cli import run_cli
from tiny_models import VQAV2_QUESTIONS, write_vqav2_fixture

from lever.data.sources import Dataset, resolve_dataset, resolve_train_sources
from lever.errors import LeverError
from lever.eval.okvqa import load_vqa
from lever.eval.vqa import vqa_accuracy
from lever.eval.world import heldout_split, okvqa_identity
from lever.spec import load_plan, load_workspace
from lever.spec.schema import EvalSpec

ROOT = Path(__file__).resolve().parents[1]
QUIET = lambda msg: None  # noqa: E731


@pytest.fixture(scope="module")
def vqav2(tmp_path_factory) -> tuple[Path, Path, Path]:
    """Six VQAv2-format val questions with images (tests/tiny_models.py)."""
    return write_vqav2_fixture(tmp_path_factory.mktemp("vqav2"), n=6, split="val2014")


def test_vqav2_fixture_reads_sorted_with_its_ten_answers(vqav2):
    qpath, apath, images = vqav2
    raw = {a["question_id"]: a for a in json.loads(apath.read_text())["annotations"]}
    assert {a["answer_type"] for a in raw.values()} == {"yes/no", "number", "other"}  # the VQAv2 fields are there
    items = load_vqa(qpath, apath, images, "val")
    assert [it.question_id for it in items] == [(9000 + i) * 1000 + 1 for i in range(6)]  # sorted (written reversed)
    assert [it.index for it in items] == list(range(6))
    for it in items:
        assert it.answers == [a["answer"] for a in raw[it.question_id]["answers"]] and len(it.answers) == 10
        ann = raw[it.question_id]  # the annotation's types are kept (results rows carry them)
        assert it.types() == {"answer_type": ann["answer_type"], "question_type": ann["question_type"]}
        assert Path(it.image).is_file() and it.image.endswith(f"COCO_val2014_{it.image_id:012d}.jpg")
    assert items[1].question == VQAV2_QUESTIONS[1][0]
    assert [it.question_id for it in load_vqa(qpath, apath, None, "val", limit=2)] == [9000001, 9001001]


def test_official_accuracy_by_hand():
    """acc = mean over the 10 annotators i of min(1, #{j != i: a_j == pred} / 3), worked out by hand."""
    other = [f"x{k}" for k in range(10)]
    # m of 10 humans gave the prediction. Leaving out one of the m leaves m - 1 matches, leaving out one
    # of the other 10 - m leaves m:  acc = (m * min(1, (m-1)/3) + (10-m) * min(1, m/3)) / 10.
    by_hand = {
        0: 0.0,
        1: (1 * 0 + 9 * (1 / 3)) / 10,  # 0.3
        2: (2 * (1 / 3) + 8 * (2 / 3)) / 10,  # 0.6
        3: (3 * (2 / 3) + 7 * 1) / 10,  # 0.9: not 1.0; min(#humans / 3, 1) alone would say 1.0
        4: (4 * 1 + 6 * 1) / 10,  # 1.0
        10: 1.0,
    }
    for m, want in by_hand.items():
        answers = ["cat"] * m + other[m:]
        for metric in ("classic", "vqa-latest", "lever-plus"):
            assert vqa_accuracy("cat", answers, metric) == pytest.approx(want), (m, metric)
    assert by_hand[1] == pytest.approx(0.3) and by_hand[3] == pytest.approx(0.9)


def test_vqav2_fixture_scored_with_the_official_metric(vqav2):
    """The fixture's hand-made questions under the official metric (the reference code's latest revision,
    `vqa-latest`), its older revision (`classic`) and the original project's (`lever-plus`)."""
    yes, wheels, bus = load_vqa(*vqav2, "val")[:3]
    # ten "yes": identical answers are compared unnormalised by vqa-latest, so "Yes" misses all ten
    assert [vqa_accuracy("Yes", yes.answers, m) for m in ("classic", "vqa-latest", "lever-plus")] == [1.0, 0.0, 1.0]
    # "2", "2", "two", 7 x "3": "two" becomes "2" when the answers are normalised (vqa-latest, lever-plus):
    # 3 matches -> (3 * 2/3 + 7 * 1) / 10 = 0.9; classic normalises only their punctuation: 2 matches ->
    # (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    assert vqa_accuracy("2", wheels.answers, "vqa-latest") == pytest.approx(0.9)
    assert vqa_accuracy("two", wheels.answers, "vqa-latest") == pytest.approx(0.9)  # the prediction normalised too
    assert vqa_accuracy("2", wheels.answers, "classic") == pytest.approx(0.6)
    assert vqa_accuracy("3", wheels.answers, "vqa-latest") == 1.0
    # one "red" of ten: (1 * 0 + 9 * 1/3) / 10 = 0.3; "The blue." normalises to "blue" (9 of 10: 1.0)
    assert vqa_accuracy("red", bus.answers, "vqa-latest") == pytest.approx(0.3)
    assert vqa_accuracy("The blue.", bus.answers, "vqa-latest") == 1.0


def _real_workspace(root: Path, fixture: tuple[Path, Path, Path], vqav2_table: str = "vqav2") -> Path:
    """A workspace whose [okvqa] table and [datasets.<vqav2_table>] table name the same files, with model folders."""
    q, a, images = fixture
    files = "\n".join(
        f'{s}_{k} = "{v}"' for s in ("train", "val") for k, v in (("questions", q), ("annotations", a), ("images", images))
    )
    for name in ("vlm", "clip"):
        (root / name).mkdir(exist_ok=True)
        (root / name / "config.json").write_text("{}")
    torch.save(torch.randn(6, 4), root / "feats.pt")
    torch.save(torch.randn(6, 4), root / "feats_v2.pt")
    (root / "cands.json").write_text("{}")
    (root / "cands_v2.json").write_text("{}")
    ws = root / "lever.toml"
    ws.write_text(
        f'backend = "hf"\n[candidates]\nmain = "cands.json"\n[features]\nmain = "feats.pt"\n[okvqa]\n{files}\n'
        f'[datasets.{vqav2_table}]\n{files}\ncandidates = {{ main = "cands_v2.json" }}\nfeatures = {{ main = "feats_v2.pt" }}\n'
        '[models]\nvlm = "vlm"\nclip = "clip"\n'
    )
    return ws


def test_the_dataset_is_in_every_key_it_shapes(vqav2, tmp_path):
    ws = load_workspace(_real_workspace(tmp_path, vqav2))
    # the plan: data.dataset is in the spec hash (and so in every stage key, which holds the data section);
    # okvqa, the default, leaves today's hashes as they were
    base = load_plan(ROOT / "plans" / "baseline.toml")
    assert load_plan(ROOT / "plans" / "baseline.toml", ["data.dataset=okvqa"]).hash == base.hash
    v2 = load_plan(ROOT / "plans" / "baseline.toml", ["data.dataset=vqav2"])
    assert (
        v2.hash != base.hash and "dataset" not in base.plan.data.model_dump() and v2.plan.data.model_dump()["dataset"] == "vqav2"
    )
    # the data names are looked up in the dataset's own tables
    assert resolve_train_sources(resolve_dataset(ws), "main", "main", QUIET).candidates == tmp_path / "cands.json"
    got = resolve_train_sources(resolve_dataset(ws, "vqav2"), "main", "main", QUIET)
    assert (got.candidates, got.features) == (tmp_path / "cands_v2.json", tmp_path / "feats_v2.pt")
    # the evaluation: the same files under another dataset name are another evaluation
    spec = EvalSpec()
    ok = okvqa_identity(resolve_dataset(ws), spec, tmp_path / "feats.pt")
    other = okvqa_identity(resolve_dataset(ws, "vqav2"), spec, tmp_path / "feats.pt")
    assert set(ok) == {"backend", "vlm", "clip", "okvqa", "features"}  # okvqa's evaluation keys are unchanged
    assert other["dataset"] == "vqav2" and other["files"] == ok["okvqa"] and other != ok


def test_workspace_dataset_errors_name_the_key(lever, vqav2, tmp_path, monkeypatch):
    ws = load_workspace(_real_workspace(tmp_path, vqav2))
    with pytest.raises(LeverError, match="dataset 'vqa2' is not in the workspace") as err:
        resolve_dataset(ws, "vqa2")
    assert "okvqa, vqav2" in err.value.hint
    reserved = _real_workspace(tmp_path, vqav2, vqav2_table="okvqa")
    res = lever("--workspace", reserved, "show", ROOT / "plans" / "baseline.toml")
    assert res.code == 2 and "datasets.okvqa" in res.err and "Traceback" not in res.text
    # the bundled benchmark has no other dataset: refused before anything is generated or trained
    (tmp_path / "bundled").mkdir()
    monkeypatch.chdir(tmp_path / "bundled")  # no workspace file here
    res = lever("run", ROOT / "plans" / "baseline.toml", "data.dataset=vqav2", "--no-baseline")
    assert res.code == 2 and "data.dataset = 'vqav2'" in res.err and "bundled benchmark" in res.err
    assert not (tmp_path / "bundled" / "runs").exists() and not (tmp_path / "bundled" / ".lever-cache").exists()


def test_data_commands_take_the_dataset(lever, vqav2, tmp_path):
    """--dataset picks the dataset's own features.main (here a [6, 4] file apart from okvqa's)."""
    ws = _real_workspace(tmp_path, vqav2)
    torch.save(torch.randn(9, 4), tmp_path / "feats.pt")  # okvqa's features: another row count
    res = lever("--workspace", ws, "data", "pools", tmp_path / "p.json", "--dataset", "vqav2", "--k", 2, "-n", 3)
    assert res.code == 0, res.text
    pools = json.loads((tmp_path / "p.json").read_text())
    assert len(pools) == 3 and all(0 <= r < 6 for pool in pools.values() for r in pool)
    res = lever("--workspace", ws, "data", "pools", tmp_path / "q.json", "-d", "vqa2")
    assert res.code == 2 and "dataset 'vqa2' is not in the workspace" in res.err


# --------------------------------------------------------------------------- balance


def _hand_made(path: Path, groups: list[tuple[int, int]]) -> Path:
    """One query per (positives, negatives): pools of 8 items, distinct 2-item pointers; positives score 1.0."""
    recs: dict = {"_meta": {"created_at": "test"}}
    for q, (p, m) in enumerate(groups):
        pairs = list(combinations(range(8), 2))[: p + m]
        cands = [
            {"pointer": list(ptr), "pointer_global": [10 * q + i for i in ptr], "gen_method": "random",
             "vqa_pred_answer": "x", "vqa_correct": int(k < p), "vqa_acc_score": 1.0 if k < p else 0.0,
             "vqa_eval_mode": "vqaEval", "eval_failed": False}
            for k, ptr in enumerate(pairs)
        ]  # fmt: skip
        recs[str(q)] = {"query": {"query_id": q, "question_id": 1000 + q}, "candidate_pool_ids": [10 * q + i for i in range(8)],
                        "pointer_candidates": cands}  # fmt: skip
    path.write_text(json.dumps(recs))
    return path


def _outcomes(path: Path) -> dict[str, tuple[int, int]]:
    data = json.loads(path.read_text())
    return {k: (sum(c["vqa_correct"] for c in v["pointer_candidates"]), sum(1 - c["vqa_correct"] for c in v["pointer_candidates"]))
            for k, v in data.items() if k != "_meta"}  # fmt: skip


def test_balance_reaches_the_target_positive_share(tmp_path):
    src = _hand_made(tmp_path / "in.json", [(2, 8), (6, 3), (3, 1), (0, 5), (4, 4), (5, 0)])
    out = tmp_path / "out.json"
    code, text = run_cli("balance", src, out, "--positive-share", "0.5", "--json", "--no-cache")
    assert code == 0, text
    # by hand: (2, 8) keeps both positives and 2 of 8 negatives; (6, 3) all 3 negatives and 3 positives;
    # (3, 1) 1 + 1; (4, 4) is at 0.5 already; one-outcome groups (0, 5) and (5, 0) have no share to reach
    assert _outcomes(out) == {"0": (2, 2), "1": (3, 3), "2": (1, 1), "4": (4, 4)}
    report = json.loads(text.strip().splitlines()[-1])  # the JSON line (the read's log lines come first)
    assert report["after"]["positive_share"] == 0.5
    assert report["before"]["positive_share"] == round(20 / 41, 4)  # 2+6+3+0+4+5 positives of 41
    kept = json.loads(out.read_text())
    given = json.loads(src.read_text())
    for key, rec in kept.items():
        if key != "_meta":
            assert all(c in given[key]["pointer_candidates"] for c in rec["pointer_candidates"])  # a subset, as read
    assert kept["_meta"]["balance"]["options"]["positive_share"] == 0.5
    again = tmp_path / "again.json"
    run_cli("balance", src, again, "--positive-share", "0.5", "--no-cache")
    drop_meta = lambda d: {k: v for k, v in d.items() if k != "_meta"}  # noqa: E731
    assert drop_meta(json.loads(again.read_text())) == drop_meta(kept)  # seeded: the same draw again
    # a quarter: (2, 8) keeps its 2 positives and round(2 * 0.75 / 0.25) = 6 negatives; (6, 3) its 3 negatives
    # and round(0.25 * 3 / 0.75) = 1 positive; (3, 1) keeps at least one positive; (4, 4) 4 negatives + round(4/3) = 1
    code, text = run_cli("balance", src, tmp_path / "quarter.json", "--positive-share", "0.25", "--no-cache")
    assert code == 0, text
    assert _outcomes(tmp_path / "quarter.json") == {"0": (2, 6), "1": (1, 3), "2": (1, 1), "4": (1, 4)}
    code, text = run_cli("balance", src, tmp_path / "bad.json", "--positive-share", "1")
    assert code == 2 and "strictly between 0 and 1" in text


def test_balanced_v3_recipe_keeps_the_original_band(tmp_path):
    src = _hand_made(tmp_path / "in.json", [(2, 8), (6, 3), (4, 4), (2, 3), (3, 2), (0, 5)])
    out = tmp_path / "out.json"
    code, text = run_cli("balance", src, out, "--recipe", "balanced-v3", "--no-cache")
    assert code == 0, text
    # shares 0.2, 0.67, 0.5, 0.4, 0.6, 0: the original kept 0.4 <= share <= 0.6, both bounds in
    assert _outcomes(out) == {"2": (4, 4), "3": (2, 3), "4": (3, 2)}
    bal = json.loads(out.read_text())["_meta"]["balance"]
    assert bal["options"]["recipe"] == "balanced-v3" and bal["options"]["positive_ratio"] == [0.4, 0.6]
    code, text = run_cli("balance", src, tmp_path / "x.json", "--recipe", "balanced-v3", "--positive-ratio", "0.1,0.9")
    assert code == 2 and "drop --positive-ratio" in text
    code, text = run_cli("balance", src, tmp_path / "y.json", "--recipe", "balanced-v9")
    assert code == 2 and "balanced-v3" in text


def test_accuracy_by_answer_type_on_the_vqav2_fixture_by_hand(vqav2):
    """The official evaluator's perAnswerType / perQuestionType: round(100 * mean of the questions' accuracies, 2)
    per type. Rows as `lever evaluate` writes them, for the fixture's six questions scored with vqa-latest."""
    from lever.report.breakdown import by_type

    items = load_vqa(*vqav2, "val")
    preds = ["yes", "2", "red", "ans3", "alt4", "nothing"]  # 1.0 | 0.9 | 0.3 | 4 of 10: 1.0 | 3 of 10: 0.9 | 0.0
    rows = [
        {"split": "val", "shots": 1, "question_id": it.question_id, **it.types(),
         "accuracy": vqa_accuracy(p, it.answers, "vqa-latest")}
        for it, p in zip(items, preds)
    ]  # fmt: skip
    assert [r["accuracy"] for r in rows] == pytest.approx([1.0, 0.9, 0.3, 1.0, 0.9, 0.0])
    assert by_type(rows, "answer_type", "fixture") == {
        "val": {
            "1": {
                "number": {"accuracy": 90.0, "n": 1},
                "other": {"accuracy": 55.0, "n": 4},  # (0.3 + 1.0 + 0.9 + 0.0) / 4
                "yes/no": {"accuracy": 100.0, "n": 1},
            }
        }
    }
    by_q = by_type(rows, "question_type", "fixture")["val"]["1"]
    assert by_q["what is the"] == {"accuracy": 63.33, "n": 3} and by_q["what color is the"]["accuracy"] == 30.0
    with pytest.raises(LeverError, match="fixture: its results rows hold no answer_type"):
        by_type([{k: v for k, v in r.items() if k != "answer_type"} for r in rows], "answer_type", "fixture")
    with pytest.raises(LeverError, match="--by 'answer'"):
        by_type(rows, "answer", "fixture")


def test_type_views_restrict_every_run_to_the_questions_of_one_type(vqav2):
    """The report layer's breakdown: each type's view holds only its questions, so every table over it (intervals,
    paired tests) is the per-type one; rows without the field are an error naming the run."""
    from lever.report.breakdown import type_views
    from lever.report.results import PlanRuns, RunData, parse_results

    items = load_vqa(*vqav2, "val")
    rows = [
        {"split": "val", "shots": 1, "question_id": it.question_id, **it.types(), "accuracy": acc, "failed": False}
        for it, acc in zip(items, [1.0, 0.9, 0.3, 1.0, 0.9, 0.0])
    ]
    run = RunData(path=Path("r"), plan="p", spec_hash="abc", seed=0, results=parse_results(rows))
    views = type_views([PlanRuns("p", [run])], "val", "answer_type")
    assert list(views) == ["number", "other", "yes/no"]
    (other,) = views["other"]
    assert other.runs[0].accuracy("val", 1) == pytest.approx(55.0) and other.runs[0].results["val"][1].n == 4
    assert views["yes/no"][0].runs[0].accuracy("val", 1) == pytest.approx(100.0)
    untyped = RunData(path=Path("r"), plan="p", spec_hash="abc", seed=0, results=parse_results([
        {k: v for k, v in r.items() if k != "answer_type"} for r in rows]))  # fmt: skip
    with pytest.raises(LeverError, match="p \\(seed 0, r\\): its results rows hold no answer_type"):
        type_views([PlanRuns("p", [untyped])], "val", "answer_type")


# --------------------------------------------------------------------------- held-out test split


def _heldout(root: Path, fixture: tuple[Path, Path, Path], table: str = "") -> tuple[Dataset, list[int]]:
    """The fixture's vqav2 dataset with `table` (test_* keys) in its [datasets.vqav2] table; its val ids, sorted."""
    ws = _real_workspace(root, fixture)
    text = ws.read_text().replace('features = { main = "feats_v2.pt" }\n', f'features = {{ main = "feats_v2.pt" }}\n{table}')
    ws.write_text(text)
    ds = resolve_dataset(load_workspace(ws), "vqav2")
    return ds, sorted(it.question_id for it in load_vqa(*fixture, "val"))


def test_the_seeded_test_split_shares_no_question_with_val(vqav2, tmp_path):
    ds, ids = _heldout(tmp_path, vqav2, "test_size = 2\ntest_after = 2\n")
    spec = EvalSpec(questions=2, splits=["val", "test"])
    test = heldout_split(ds, spec, QUIET)
    got = [it.question_id for it in test]
    assert len(got) == 2 and set(got) <= set(ids[2:]) and not set(got) & set(ids[:2])  # after the 2 val asks
    assert got == sorted(got) and [it.index for it in test] == [0, 1]  # sorted, re-indexed as a split of its own
    assert [it.question_id for it in heldout_split(ds, spec, QUIET)] == got  # the same seed: the same questions
    drawn = set()
    for seed in range(8):  # the seed decides which: 6 ways to pick 2 of the 4 after val's
        other, _ = _heldout(tmp_path, vqav2, f"test_size = 2\ntest_after = 2\ntest_seed = {seed}\n")
        drawn.add(tuple(it.question_id for it in heldout_split(other, spec, QUIET)))
    assert len(drawn) > 1 and all(not set(d) & set(ids[:2]) for d in drawn)
    # val's questions may not reach into the held-out ones; nor may the draw ask for more than there are
    with pytest.raises(
        LeverError, match=r"eval.questions = 3 reaches into the held-out questions: datasets.vqav2.test_after = 2"
    ):
        heldout_split(ds, EvalSpec(questions=3, splits=["test"]), QUIET)
    big, _ = _heldout(tmp_path, vqav2, "test_size = 5\ntest_after = 2\n")
    with pytest.raises(LeverError, match=r"test_size = 5, but the val split has 4 questions after the first 2"):
        heldout_split(big, spec, QUIET)


def test_a_users_test_list_is_honoured_and_checked(vqav2, tmp_path):
    listed = tmp_path / "held.json"
    ds, ids = _heldout(tmp_path, vqav2, 'test_questions = "held.json"\n')
    listed.write_text(json.dumps([ids[5], ids[3]]))
    spec = EvalSpec(questions=2, splits=["test"])
    assert [it.question_id for it in heldout_split(ds, spec, QUIET)] == [ids[3], ids[5]]  # exactly the list's, sorted
    listed.write_text(json.dumps([ids[4], 12345]))  # not a val question
    with pytest.raises(LeverError, match=r"test_questions: .*held.json names question 12345, which is not in the val split"):
        heldout_split(ds, spec, QUIET)
    listed.write_text(json.dumps([ids[4], ids[1]]))  # one of the 2 val questions the plan asks
    with pytest.raises(LeverError, match=rf"held.json names question {ids[1]}, one of the val questions this plan evaluates"):
        heldout_split(ds, spec, QUIET)
    assert [it.question_id for it in heldout_split(ds, EvalSpec(questions=1, splits=["test"]), QUIET)] == [ids[1], ids[4]]
    listed.write_text('{"ids": [1]}')
    with pytest.raises(LeverError, match="is not a JSON list of question ids"):
        heldout_split(ds, spec, QUIET)


def test_the_test_definition_is_in_the_evaluation_key(vqav2, tmp_path):
    feats = tmp_path / "feats.pt"
    val, test = EvalSpec(), EvalSpec(splits=["test"])

    def key(table: str, spec: EvalSpec = test) -> dict:  # less the features' digest (each workspace writes new ones)
        return {k: v for k, v in okvqa_identity(_heldout(tmp_path, vqav2, table)[0], spec, feats).items() if k != "features"}

    assert "test" not in key("", val) and key("", val) == key("test_seed = 3\n", val)  # val's keys stay as they were
    drawn = key("")
    assert drawn["test"] == {"seed": 0, "size": 1000, "after": 1000} and "val_questions" in drawn["files"]  # val's files
    assert key("test_seed = 1\n") != drawn and key("test_size = 3\n") != drawn and key("test_after = 0\n") != drawn
    (tmp_path / "held.json").write_text("[9004001]")
    listed = key('test_questions = "held.json"\n')
    (tmp_path / "held.json").write_text("[9005001]")
    assert listed != key('test_questions = "held.json"\n') and set(listed["test"]) == {"questions"}  # by its content
    with pytest.raises(LeverError, match=r"datasets.vqav2.test_questions = 'gone.json' does not exist"):
        key('test_questions = "gone.json"\n')
