"""An evaluation interrupted part-way resumes from its partial answers and ends with the same results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from workspaces import bench_workspace  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def trained(lever, tmp_path: Path, plan: list) -> Path:
    """A small-benchmark workspace with `plan` trained but not evaluated; returns the workspace file."""
    ws = bench_workspace(tmp_path)
    assert lever("--workspace", ws, "run", *plan, "--no-eval").code == 0
    return ws


def test_interrupted_evaluation_resumes(lever, tmp_path, monkeypatch):
    plan = [ROOT / "plans" / "baseline.toml", "rce.epochs=1", "eval.questions=40", "eval.shots=[1,2]", "eval.batch_size=1"]
    ws = trained(lever, tmp_path, plan)

    import lever.eval.world as sources

    real = sources.SimBackend.answer
    calls = {"n": 0}

    def dies_on_third_chunk(self, requests):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return real(self, requests)

    monkeypatch.setattr(sources.SimBackend, "answer", dies_on_third_chunk)
    with pytest.raises(RuntimeError, match="killed"):
        lever("--workspace", ws, "evaluate", *plan)
    (eval_dir,) = sorted(p for p in (tmp_path / "runs" / "baseline").glob("*/seed-0/eval/*") if p.is_dir())
    assert not (eval_dir / "summary.json").exists()
    partial = (eval_dir / "partial-0.jsonl").read_text()
    assert len(partial.splitlines()) == 5  # two chunks were kept: one batch (1 answer), then four batches (4)
    # A kill in the middle of a line: that line is dropped, the rest is kept.
    (eval_dir / "partial-0.jsonl").write_text(partial + '{"_pos": 8, "spl')

    monkeypatch.setattr(sources.SimBackend, "answer", real)
    res = lever("--workspace", ws, "evaluate", *plan)
    assert res.code == 0, res.text
    assert "resuming, 5 of 80 answers" in res.text
    resumed = (eval_dir / "results.jsonl").read_text()
    assert not list(eval_dir.glob("partial-*"))
    shutil.rmtree(eval_dir)
    assert lever("--workspace", ws, "evaluate", *plan).code == 0
    assert (eval_dir / "results.jsonl").read_text() == resumed
    rows = [json.loads(line) for line in resumed.splitlines()]
    assert len(rows) == 80 and all("_pos" not in r for r in rows)
    from lever.bench.text import ANSWER_TYPES

    # the benchmark's natural answer type (the template its question was drawn from) on every row
    assert {r["answer_type"] for r in rows} <= set(ANSWER_TYPES) and len({r["answer_type"] for r in rows}) > 3
    res = lever("--workspace", ws, "evaluate", *plan, "--by", "answer_type")
    assert res.code == 0 and "val accuracy % by answer_type" in res.out and "number (n=" in res.out, res.text
    res = lever("--workspace", ws, "evaluate", *plan, "--by", "question_type")  # the benchmark has none
    assert res.code == 2 and "hold no question_type" in res.err
    assert lever("--workspace", ws, "evaluate", *plan, "--by", "type").code == 2


def test_failed_answers_stop_the_evaluation_and_are_asked_again(lever, tmp_path, monkeypatch):
    plan = [ROOT / "plans" / "baseline.toml", "rce.epochs=1", "eval.questions=40", "eval.shots=[1]", "eval.batch_size=4"]
    ws = trained(lever, tmp_path, plan)

    import lever.eval.world as sources
    from lever.eval.backend import Response

    real = sources.SimBackend.answer
    calls = {"n": 0}

    def first_chunk_fails(self, requests):  # a transient fault (out of memory, say) on the first 4 of 40 questions
        calls["n"] += 1
        out = real(self, requests)
        return [Response("", failed=True, error="CUDA out of memory") for _ in out] if calls["n"] == 1 else out

    monkeypatch.setattr(sources.SimBackend, "answer", first_chunk_fails)
    res = lever("--workspace", ws, "evaluate", *plan)
    assert res.code == 2 and "4 of 40 answers failed (10.0%, above eval.max_failed = 1.0%)" in res.err
    assert "CUDA out of memory" in res.err and "Traceback" not in res.err
    monkeypatch.setattr(sources.SimBackend, "answer", real)
    res = lever("--workspace", ws, "evaluate", *plan)
    assert res.code == 0 and "resuming, 36 of 40 answers" in res.text  # the 4 failed ones are asked again
