"""Re-scoring without the VLM: an evaluation under another metric takes the stored raw outputs of the finished
evaluation with the same generation key (checkpoint, world, every eval setting but the metric), and
`lever compare --metric` re-scores the stored rows of each run's selected evaluation."""

from __future__ import annotations

import json
from pathlib import Path

from workspaces import bench_workspace

from lever.eval.backend import Response

ROOT = Path(__file__).resolve().parents[1]
PLAN = [ROOT / "plans" / "baseline.toml", "rce.epochs=1", "eval.questions=4", "eval.shots=[1]", "eval.batch_size=4"]
# The VLM's raw outputs for the 4 questions, in question order, and what each scores against ten "yes" answers:
#                  classic           vqa-latest (all ten identical: nothing normalised)   lever-plus
RAW = ["Yes", "yes Question:", "no, yes", "the yes"]
CLASSIC = [1.0, 1.0, 0.0, 1.0]  # "Yes" -> "yes"; cut at "Question"; cut at ", " -> "no"; the article dropped
LATEST = [0.0, 1.0, 0.0, 0.0]  # only the exact "yes" (after post-processing) matches
# lever-plus normalises both sides as classic does the prediction: the same as classic here.


def _fake_world(monkeypatch) -> None:
    """Every eval question's ten human answers are "yes"; the simulated VLM answers RAW in question order."""
    import importlib

    import lever.eval.world as sources

    recipe_evaluate = importlib.import_module("lever.recipe.evaluate")  # the module (the package exports a function)
    real_world, order = recipe_evaluate.eval_world, {}

    def world(*args, **kwargs):
        w = real_world(*args, **kwargs)
        for i, item in enumerate(w.splits["val"].items):
            item.answers = ["yes"] * 10
            order[item.question_id] = i
        return w

    monkeypatch.setattr(recipe_evaluate, "eval_world", world)
    monkeypatch.setattr(
        sources.SimBackend, "answer", lambda self, reqs: [Response(RAW[order[r.query.question_id]]) for r in reqs]
    )


def _run_dirs(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "runs" / "baseline").glob("*/seed-0"), key=lambda p: p.stat().st_mtime)


def _selected_rows(run: Path) -> tuple[dict, list[dict]]:
    key = json.loads((run / "eval" / "selected.json").read_text())["key"]
    rows = [json.loads(line) for line in (run / "eval" / key / "results.jsonl").read_text().splitlines()]
    return json.loads((run / "eval" / key / "summary.json").read_text()), rows


def test_another_metric_rescores_the_stored_outputs_without_the_vlm(lever, tmp_path, monkeypatch):
    ws = bench_workspace(tmp_path)
    _fake_world(monkeypatch)
    res = lever("--workspace", ws, "run", *PLAN, "eval.metric=classic")
    assert res.code == 0, res.text
    (first,) = _run_dirs(tmp_path)
    summary, rows = _selected_rows(first)
    assert [r["raw_output"] for r in rows] == RAW and [r["accuracy"] for r in rows] == CLASSIC
    assert all(r["answers"] == ["yes"] * 10 for r in rows)
    assert all(len(r["demo_answers"]) == 1 and isinstance(r["demo_answers"][0], str) for r in rows)  # as shown
    # Rows written before they held the demonstrations' answers: a re-scoring takes them from the train items.
    from lever.runs.layout import RunDir

    shown, types = [r["demo_answers"] for r in rows], [r["answer_type"] for r in rows]
    ev = RunDir(first).selected_eval()
    ev.write(
        [{k: v for k, v in r.items() if k not in ("demo_answers", "answer_type")} for r in rows],  # nor the types
        {k: v for k, v in summary.items() if k not in ("splits", "results")},
    )
    assert summary["splits"]["val"]["1"]["accuracy"] == 75.0 and summary["metric"] == "classic"

    import lever.eval.world as sources

    def no_vlm(self, requests):
        raise AssertionError("the VLM was asked")

    monkeypatch.setattr(sources.SimBackend, "answer", no_vlm)
    for metric, want, pct in (("vqa-latest", LATEST, 25.0), ("lever-plus", CLASSIC, 75.0)):
        res = lever("--workspace", ws, "evaluate", *PLAN, f"eval.metric={metric}")
        assert res.code == 0, res.text
        assert "re-scored with metric " + metric in res.text and "Traceback" not in res.text
        run = _run_dirs(tmp_path)[-1]
        assert run != first  # a run folder of its own (the spec hash covers eval.*), its stages reused, not trained
        status = json.loads((run / "status.json").read_text())
        assert status["state"] == "done"
        stages = json.loads((run / "stages.json").read_text())
        assert stages == json.loads((first / "stages.json").read_text())
        summary, rows = _selected_rows(run)
        assert [r["accuracy"] for r in rows] == want and summary["splits"]["val"]["1"]["accuracy"] == pct
        assert [r["raw_output"] for r in rows] == RAW and summary["metric"] == metric
        assert [r["demo_answers"] for r in rows] == shown
        assert [r["answer_type"] for r in rows] == types  # from the world's items, as the demonstrations' answers
        assert summary["rescored_from"].startswith("baseline/") and summary["generation"]
    # The first evaluation is untouched, and a second evaluate under a re-scored metric is served from its folder.
    assert [r["accuracy"] for r in _selected_rows(first)[1]] == CLASSIC
    res = lever("--workspace", ws, "evaluate", *PLAN, "eval.metric=lever-plus")
    assert res.code == 0 and "evaluation cached" in res.text, res.text

    # lever compare --metric: the stored rows of each run's selected evaluation, scored again (no VLM either).
    ref = f"baseline@{first.parent.name}"

    def shot_one(*flags: str) -> float:
        res = lever("--workspace", ws, "compare", ref, "--baseline", ref, "--json", *flags)
        assert res.code == 0, res.text
        out = json.loads(res.out)
        return out["rows"][0]["cells"]["baseline"]["accuracy"], out["metric"]

    assert shot_one() == (75.0, None)
    assert shot_one("--metric", "vqa-latest") == (25.0, "vqa-latest")
    assert shot_one("--metric", "lever-plus") == (75.0, "lever-plus")
    res = lever("--workspace", ws, "compare", ref, "--metric", "exact")
    assert res.code == 2 and "--metric 'exact'" in res.err and "vqa-latest" in res.err and "Traceback" not in res.err
