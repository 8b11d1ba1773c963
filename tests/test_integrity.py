"""Numbers you can trust, through the real `lever` entry point: changed inputs are new work, damaged
files are clear errors (exit 2, the file and the repair named), runs move and copy, faults end cleanly."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_run import FAST, PLANS, ROOT, metrics, run_cli, seed_dirs
from test_run import ws as ws  # noqa: F401  (a fixture)

from lever.io import read_jsonl

TINY = [*FAST[1:], "rce.epochs=1", "eval.shots=[1,2]"]  # one RCE epoch, 40 questions at 1 and 2 shots


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def eval_dir(run_dir: Path) -> Path:
    (one,) = [p.parent for p in (run_dir / "eval").glob("*/summary.json")]
    return one


def stage_dir(ws: Path, name: str = "rce") -> Path:
    (one,) = (ws / "runs" / "_stages").glob(f"{name}-*/")
    return one


def error(res, *words: str) -> None:
    """A one-screen error: exit 2, no traceback, every word present."""
    assert res.code == 2, res.text
    assert "Traceback" not in res.text
    for w in words:
        assert w in res.err, (w, res.err)


def listed_damaged(res, *words: str) -> None:
    """`lever runs` lists a damaged run (exit 0, no traceback) and names the file and the problem below the table."""
    assert res.code == 0 and "Traceback" not in res.text, res.text
    (line,) = [x for x in res.out.splitlines() if x.startswith("damaged: ")]
    for w in words:
        assert w in line, (w, res.out)


# ---------------------------------------------------------------- inputs in the key


def test_changed_features_and_candidates_are_new_work(lever, ws, tmp_path):
    from lever.data.sources import bench_paths
    from lever.spec.workspace import load_workspace

    paths = bench_paths(load_workspace(os.environ["LEVER_WORKSPACE"]), lambda m: None)
    feats, cands = tmp_path / "feats.pt", tmp_path / "cands.json"
    shutil.copy(paths.features, feats)
    shutil.copy(paths.candidates, cands)
    args = [PLANS / "baseline.toml", *TINY, f"data.features={feats}", f"data.candidates={cands}"]
    assert run_cli(lever, "run", *args).code == 0
    (run_dir,) = seed_dirs(ws, "baseline")
    first = metrics(run_dir)
    again = run_cli(lever, "run", *args)
    assert "already trained" in again.text and "evaluation cached" in again.text
    torch.save(torch.load(feats) * 0.5, feats)  # same shape, other content
    error(run_cli(lever, "evaluate", *args), "trained on other candidate data or features", "lever run")
    res = run_cli(lever, "run", *args)
    assert res.code == 0 and "features changed since it was trained" in res.text
    assert metrics(run_dir) != first and len(list((run_dir / "eval").glob("*/summary.json"))) == 2
    data = json.loads(cands.read_text())
    data["_meta"]["note"] = "edited"
    cands.write_text(json.dumps(data))
    res = run_cli(lever, "run", *args)
    assert res.code == 0 and "candidates changed since it was trained" in res.text
    runs = run_cli(lever, "runs")
    assert "candidates:" in runs.out and "features:" in runs.out


# ---------------------------------------------------------------- damaged results and metrics


def test_cut_or_edited_results_are_an_error_until_redone(lever, ws):
    args = [PLANS / "baseline.toml", *TINY]
    assert run_cli(lever, "run", *args).code == 0
    (run_dir,) = seed_dirs(ws, "baseline")
    results = eval_dir(run_dir) / "results.jsonl"
    good = results.read_text()
    results.write_text("".join(good.splitlines(keepends=True)[:-5]))  # rows cut
    error(run_cli(lever, "compare", "baseline", "--baseline", "baseline"), str(results), "lever evaluate", "--redo")
    error(run_cli(lever, "evaluate", *args), "has 75 rows but 80 were written", "--redo")
    lines = good.splitlines(keepends=True)
    row = json.loads(lines[0])
    row["accuracy"] = 5.0  # 500%
    results.write_text(json.dumps(row) + "\n" + "".join(lines[1:]))
    error(run_cli(lever, "report", "baseline"), str(results), "changed after it was written")
    res = run_cli(lever, "evaluate", *args, "--redo")
    assert res.code == 0, res.text
    assert results.read_text() == good  # answered again: the same rows
    assert run_cli(lever, "compare", "baseline", "--baseline", "baseline").code == 0


def test_a_summary_out_of_line_with_its_rows_is_an_error(lever, ws):
    from lever.runs.layout import EvalDir

    args = [PLANS / "baseline.toml", *TINY]
    assert run_cli(lever, "run", *args).code == 0
    (run_dir,) = seed_dirs(ws, "baseline")
    ev = EvalDir(eval_dir(run_dir), fix="")
    summary = json.loads(ev.summary_file.read_text())
    summary["splits"]["val"]["1"]["n"] = 100  # a header that claims more questions than the rows hold
    ev.summary_file.write_text(json.dumps(summary))
    listed_damaged(run_cli(lever, "runs"), str(ev.summary_file), "does not match the rows")
    rows = [json.loads(x) for x in ev.results.read_text().splitlines()]
    rows[0]["accuracy"] = 2.0
    summary["results"] = __import__("lever.io", fromlist=["write_rows"]).write_rows(ev.results, rows)
    ev.summary_file.write_text(json.dumps(summary))  # digest "fixed" by hand: the value range still catches it
    listed_damaged(run_cli(lever, "runs"), str(ev.results), "out-of-range")


def test_runs_lists_a_damaged_run_as_one_row_without_numbers_beside_the_others(lever, ws):
    args = [PLANS / "baseline.toml", *TINY]
    for seed in ("0", "1"):
        assert run_cli(lever, "run", *args, "--seed", seed).code == 0
    good, bad = seed_dirs(ws, "baseline")

    def rows(res) -> dict[str, list[str]]:
        """seed -> the words of its row in the plain table."""
        lines = [x.split() for x in res.out.splitlines() if x.startswith("baseline ")]
        return {words[2]: words for words in lines}

    before = rows(run_cli(lever, "runs", "--wide"))
    assert set(before) == {"0", "1"} and before["1"][3] == "done"
    h = bad.parent.name[:12]
    status_text = (bad / "status.json").read_text()
    (bad / "status.json").write_text("{garbage")
    res = run_cli(lever, "runs", "--wide")
    listed_damaged(res, f"baseline@{bad.parent.name} seed 1", str(bad / "status.json"), "is damaged")
    after = rows(res)
    assert after["0"] == before["0"]  # the intact run as before, its numbers and all
    # selected, val@1, val@2, failed: no numbers; then the file (relative to the run) and the problem (--wide: in the
    # flags column, not a note below the table)
    assert after["1"][:10] == ["baseline", h, "1", "damaged", "—", "—", "—", "—", "status.json", "is"]
    assert "  repair: " in res.out
    (bad / "status.json").write_text(status_text)
    m = bad / "metrics.jsonl"
    m.write_text(m.read_text().replace('"epoch": 1', '"epoch": 1, "edited": 1', 1))  # the digest no longer matches
    res = run_cli(lever, "runs", "--wide")
    listed_damaged(res, str(m), "changed after it was written")
    assert rows(res)["1"][3] == "damaged" and rows(res)["0"] == before["0"]


def test_damaged_metrics_lines_are_errors_not_dropped(lever, ws):
    args = [PLANS / "baseline.toml", *FAST, "--no-eval"]
    assert run_cli(lever, "run", *args).code == 0
    (run_dir,) = seed_dirs(ws, "baseline")
    m = run_dir / "metrics.jsonl"
    good = m.read_text()
    m.write_text(good[:-20])  # a cut line
    error(run_cli(lever, "report", "baseline"), str(m), "--redo")
    rows = [json.loads(x) for x in good.splitlines()]
    del rows[0]["epoch"]
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))  # a line without its epoch
    error(run_cli(lever, "report", "baseline"), str(m))
    res = run_cli(lever, "run", *args, "--redo")
    assert res.code == 0 and "rce: reusing" in res.text
    assert m.read_text() == good
    # A stage whose metrics are damaged is not reused silently by the next plan that needs it.
    sm = stage_dir(ws) / "metrics.jsonl"
    sm.write_text("".join(sm.read_text().splitlines(keepends=True)[1:]))  # epoch 1's row lost
    res = run_cli(lever, "run", PLANS / "plan1.toml", *FAST, "grpo.epochs=1", "--no-eval")
    error(res, str(sm), "--retrain-stage rce")
    (p1,) = seed_dirs(ws, "plan1")
    assert status(p1)["state"] == "failed"
    res = run_cli(lever, "run", PLANS / "plan1.toml", *FAST, "grpo.epochs=1", "--no-eval", "--retrain-stage", "rce")
    assert res.code == 0, res.text
    assert status(p1)["state"] == "trained"
    assert [r for r in metrics(p1) if r["stage"] == "rce"] == metrics(run_dir)  # retrained: the same numbers


def test_pinned_epoch_is_looked_up_by_epoch(lever, ws):
    from lever.spec.schema import SelectSpec
    from lever.train.stage import pick

    rows = [{"stage": "rce", "epoch": e, "val/loss": 1.0 / e} for e in (1, 3, 4)]  # epoch 2's row missing
    assert pick(rows, SelectSpec(), 3)[0]["epoch"] == 3
    res = run_cli(lever, "run", PLANS / "baseline.toml", *FAST, "select.epoch=1", "--no-eval")
    assert res.code == 0
    (run_dir,) = seed_dirs(ws, "baseline")
    assert json.loads((run_dir / "selected.json").read_text())["epoch"] == 1


# ---------------------------------------------------------------- damaged and deleted state files


def test_damaged_run_state_files_are_named_with_their_repair(lever, ws):
    args = [PLANS / "baseline.toml", *FAST, "--no-eval"]
    assert run_cli(lever, "run", *args).code == 0
    (run_dir,) = seed_dirs(ws, "baseline")
    before = metrics(run_dir)
    for name, damage in (("status.json", '{"state": "runn'), ("selected.json", "{}"), ("stages.json", "[1, 2]")):
        f = run_dir / name
        good = f.read_text()
        f.write_text(damage)
        error(run_cli(lever, "run", *args), str(f), "--redo")
        f.write_text(good)
    (run_dir / "selected.json").unlink()
    error(run_cli(lever, "run", *args), "selected.json is missing", "--redo")
    error(run_cli(lever, "evaluate", *args[:-1]), "selected.json is missing", "--redo")
    assert run_cli(lever, "run", *args, "--redo").code == 0
    shutil.rmtree(stage_dir(ws))
    error(run_cli(lever, "run", *args), "stage folder", "is missing", "--redo")
    res = run_cli(lever, "run", *args, "--redo")
    assert res.code == 0 and status(run_dir)["state"] == "trained"
    assert metrics(run_dir) == before


def test_damaged_stage_files_are_named_with_their_repair(lever, ws):
    args = [PLANS / "baseline.toml", *FAST, "--no-eval"]
    assert run_cli(lever, "run", *args).code == 0
    (run_dir,) = seed_dirs(ws, "baseline")
    before = metrics(run_dir)
    stage = stage_dir(ws)
    (stage / "selected.json").write_text('{"stage": "rce", "ep')
    error(run_cli(lever, "run", *args, "--redo"), str(stage / "selected.json"), "--retrain-stage rce")
    assert status(run_dir)["state"] == "failed"
    # An unfinished stage with a damaged resume state: never guess where training stood.
    (stage / "selected.json").unlink()
    (stage / "resume.pt").write_bytes(b"not a resume state")
    error(run_cli(lever, "run", *args, "--redo"), str(stage / "resume.pt"), "--retrain-stage rce")
    error(run_cli(lever, "run", *args, "--retrain-stage", "grpo"), "no such stage", "rce")
    assert run_cli(lever, "run", *args, "--retrain-stage", "rce").code == 0
    ckpt = next((stage / "ckpt").glob("*.safetensors"))
    for c in (stage / "ckpt").glob("*.safetensors"):
        c.write_bytes(b"cut short")  # the selected checkpoint's weights damaged
    error(run_cli(lever, "run", *args, "--redo"), str(stage), "--retrain-stage rce")
    assert ckpt.read_bytes() == b"cut short"
    res = run_cli(lever, "run", *args, "--retrain-stage", "rce")
    assert res.code == 0, res.text
    assert metrics(run_dir) == before and status(run_dir)["state"] == "trained"


# ---------------------------------------------------------------- relocatable runs


def test_moved_and_copied_runs_folders_work_and_read_only_themselves(lever, ws, monkeypatch, tmp_path):
    args = [PLANS / "baseline.toml", *TINY]
    assert run_cli(lever, "run", *args).code == 0
    for name in ("selected.json", "stages.json"):
        text = next((ws / "runs" / "baseline").glob(f"*/seed-0/{name}")).read_text()
        assert str(tmp_path) not in text  # no absolute paths inside the runs folder
    moved = tmp_path / "moved"
    shutil.move(ws / "runs", moved)
    monkeypatch.setenv("LEVER_RUNS", str(moved))
    res = run_cli(lever, "run", *args)
    assert res.code == 0 and "already trained" in res.text and "evaluation cached" in res.text
    copy = tmp_path / "copy"
    shutil.copytree(moved, copy)
    shutil.rmtree(moved / "_stages")  # the original loses its checkpoints: the copy must not need them
    monkeypatch.setenv("LEVER_RUNS", str(copy))
    res = run_cli(lever, "evaluate", *args, "--epoch", "1")
    assert res.code == 0, res.text
    assert run_cli(lever, "compare", "baseline", "--baseline", "baseline").code == 0
    monkeypatch.setenv("LEVER_RUNS", str(moved))
    error(run_cli(lever, "run", *args), "is missing", "--redo")


def _stop_mid_stage(ws: Path, overrides: list, sig: int) -> tuple[int, str]:
    """Start `lever run baseline` in a subprocess, send it `sig` once its RCE stage has finished an epoch; (exit code, stderr)."""
    cmd = [sys.executable, "-m", "lever_cli", "--workspace", os.environ["LEVER_WORKSPACE"], "run", str(PLANS / "baseline.toml")]
    proc = subprocess.Popen([*cmd, *overrides], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        files = sorted((ws / "runs" / "_stages").glob("rce-*/metrics.jsonl"))
        if files and len(read_jsonl(files[0])) >= 2:  # epoch 1's resume marker is written before epoch 2 starts
            break
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


# ---------------------------------------------------------------- faults end cleanly


def test_full_disk_while_training_is_a_clear_error_then_resumes(lever, ws, monkeypatch):
    import lever.train.stage as stage_mod

    args = [PLANS / "baseline.toml", *FAST, "rce.epochs=3", "--no-eval"]
    real = stage_mod.save_resume
    calls = {"n": 0}

    def full(path, state):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, state)

    monkeypatch.setattr(stage_mod, "save_resume", full)
    error(run_cli(lever, "run", *args), "No space left on device", "resume.pt")
    (run_dir,) = seed_dirs(ws, "baseline")
    assert status(run_dir)["state"] == "failed" and not (run_dir / "selected.json").exists()
    monkeypatch.setattr(stage_mod, "save_resume", real)
    res = run_cli(lever, "run", *args)
    assert res.code == 0 and "resuming after epoch 1" in res.text
    assert [r["epoch"] for r in metrics(run_dir)] == [1, 2, 3]


def test_a_retrain_without_evaluation_forgets_which_evaluation_was_the_selections(lever, ws):
    """A retrain may give other weights (a GPU's non-determinism): the old pointer would name another checkpoint's
    evaluation, and `lever runs` would call the run damaged. The rebuilt record forgets it; `lever evaluate` finds
    the evaluation of an unchanged checkpoint again."""
    args = [PLANS / "baseline.toml", *TINY]
    assert run_cli(lever, "run", *args).code == 0
    (run_dir,) = seed_dirs(ws, "baseline")
    pointer = run_dir / "eval" / "selected.json"
    assert pointer.is_file()
    assert run_cli(lever, "run", *args, "--retrain-stage", "rce", "--no-eval").code == 0
    assert not pointer.exists() and status(run_dir)["state"] == "trained"
    res = run_cli(lever, "runs")
    assert res.code == 0 and "damaged" not in res.text.lower(), res.text
    res = run_cli(lever, "evaluate", *args)
    assert res.code == 0 and "evaluation cached" in res.text and pointer.is_file()


def test_full_disk_while_evaluating_is_a_clear_error(lever, ws, monkeypatch):
    import lever.runs.layout as layout

    args = [PLANS / "baseline.toml", *TINY]
    assert run_cli(lever, "run", *args, "--no-eval").code == 0
    (run_dir,) = seed_dirs(ws, "baseline")
    error(run_cli(lever, "evaluate", *args, "--epoch", "9"), "no such checkpoint")
    assert status(run_dir)["state"] == "trained"  # a bad request is not a failed run

    def full(path, rows):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(layout, "write_rows", full)
    error(run_cli(lever, "evaluate", *args), "No space left on device", "results.jsonl")
    assert not list((run_dir / "eval").glob("*/summary.json"))
    assert status(run_dir)["state"] == "trained"  # an evaluation's failure is its own: the training status stays
    assert json.loads((run_dir / "eval" / "status.json").read_text())["state"] == "failed"

    def full_unnamed(path, rows):  # a write() that fails carries no file name: the evaluation's folder is named
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(layout, "write_rows", full_unnamed)
    error(run_cli(lever, "evaluate", *args), "could not write", str(run_dir / "eval") + "/", "No space left on device")
    monkeypatch.undo()
    monkeypatch.setenv("LEVER_WORKSPACE", str(ws / "lever.toml"))
    res = run_cli(lever, "run", *args)
    assert res.code == 0 and "resuming" in res.text  # the partial answers were kept
    assert "its last evaluation did not finish (failed: could not write" in res.text
    assert status(run_dir)["state"] == "done" and not (run_dir / "eval" / "status.json").exists()


def test_full_disk_while_generating_the_benchmark_is_a_clear_error(lever, tmp_path, monkeypatch):
    import lever.bench.cache as cache

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(cache, "_write_lines", full)
    ws = tmp_path / "lever.toml"
    ws.write_text('runs = "runs"\ncache = "cache"\n[bench]\nn_train = 200\nn_queries = 40\nn_val = 20\n')
    res = lever("--workspace", ws, "run", PLANS / "baseline.toml", "rce.epochs=1", "--no-eval")
    error(res, "could not write the benchmark", "No space left on device")
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith("bench-")]


def test_a_torch_write_failure_becomes_an_oserror(tmp_path):
    from lever.io import atomic_write

    def fails(path):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0: file write failed")

    with pytest.raises(OSError, match="write failed"):
        atomic_write(tmp_path / "x.pt", fails)
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_in_process_marks_the_run_interrupted(lever, ws, monkeypatch):
    from lever.train.stage import StageRunner

    args = [PLANS / "baseline.toml", *FAST, "rce.epochs=3", "--no-eval"]
    real = StageRunner._epoch

    def ctrl_c_in_epoch_2(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(self, epoch)

    monkeypatch.setattr(StageRunner, "_epoch", ctrl_c_in_epoch_2)
    res = run_cli(lever, "run", *args)
    assert res.code == 130 and "interrupted" in res.err and "Traceback" not in res.text
    (run_dir,) = seed_dirs(ws, "baseline")
    assert status(run_dir)["state"] == "interrupted"
    res = run_cli(lever, "evaluate", *args[:-1])  # the run's own words say what stopped it
    error(res, "has not finished training (interrupted: stopped by Ctrl-C or SIGTERM", "lever run")
    monkeypatch.setattr(StageRunner, "_epoch", real)
    res = run_cli(lever, "run", *args)
    assert res.code == 0 and "resuming after epoch 1" in res.text and status(run_dir)["state"] == "trained"


@pytest.mark.slow
def test_ctrl_c_marks_the_run_interrupted_and_the_next_run_resumes(lever, ws, tmp_path):
    overrides = [*FAST, "rce.epochs=12", "--no-eval"]  # room to interrupt mid-stage
    code, err = _stop_mid_stage(ws, overrides, signal.SIGINT)
    assert code == 130, err
    assert "Traceback" not in err and "interrupted" in err
    (run_dir,) = seed_dirs(ws, "baseline")
    assert status(run_dir)["state"] == "interrupted"
    res = run_cli(lever, "run", PLANS / "baseline.toml", *overrides)
    assert res.code == 0 and "rce: resuming after epoch" in res.text
    other = tmp_path / "clean.toml"
    other.write_text(Path(os.environ["LEVER_WORKSPACE"]).read_text().replace('runs = "runs"', 'runs = "clean"'))
    assert lever("--workspace", other, "run", PLANS / "baseline.toml", *overrides).code == 0
    (clean,) = sorted((tmp_path / "clean" / "baseline").glob("*/seed-*"))
    assert metrics(run_dir) == metrics(clean)


def test_sigterm_in_process_is_handled_like_ctrl_c(lever, ws, monkeypatch):
    from lever.train.stage import StageRunner

    args = [PLANS / "baseline.toml", *FAST, "rce.epochs=3", "--no-eval"]
    real = StageRunner._epoch

    def kill_in_epoch_2(self, epoch):
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the CLI's handler raises at the next bytecode
        return real(self, epoch)

    received = []
    before = signal.signal(signal.SIGTERM, lambda *_: received.append(1))  # a SIGTERM that escaped must not end pytest
    try:
        monkeypatch.setattr(StageRunner, "_epoch", kill_in_epoch_2)
        res = run_cli(lever, "run", *args)
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN and not received  # handled, then ours back
    finally:
        signal.signal(signal.SIGTERM, before)
    assert res.code == 143 and "terminated" in res.err and "Traceback" not in res.text, res.text
    (run_dir,) = seed_dirs(ws, "baseline")
    assert status(run_dir)["state"] == "interrupted"
    monkeypatch.setattr(StageRunner, "_epoch", real)
    res = run_cli(lever, "run", *args)
    assert res.code == 0 and "resuming after epoch 1" in res.text and status(run_dir)["state"] == "trained"


@pytest.mark.slow
def test_sigterm_marks_the_run_interrupted_and_the_next_run_resumes(lever, ws):
    overrides = [*FAST, "rce.epochs=12", "--no-eval"]  # room to stop mid-stage, as `kill` or a time limit would
    code, err = _stop_mid_stage(ws, overrides, signal.SIGTERM)
    assert code == 143, err
    assert "Traceback" not in err and "terminated" in err
    (run_dir,) = seed_dirs(ws, "baseline")
    assert status(run_dir)["state"] == "interrupted"
    res = run_cli(lever, "run", PLANS / "baseline.toml", *overrides)
    assert res.code == 0 and "rce: resuming after epoch" in res.text and status(run_dir)["state"] == "trained"


# ---------------------------------------------------------------- which hash a row is


def test_reports_name_the_hash_and_mark_overrides(lever, ws):
    assert run_cli(lever, "run", PLANS / "baseline.toml", *TINY).code == 0
    (run_dir,) = seed_dirs(ws, "baseline")
    h = run_dir.parent.name
    runs = run_cli(lever, "runs")
    assert f"{h}*" in runs.out and f"* baseline@{h}: overrides" in runs.out
    res = run_cli(lever, "compare", PLANS / "baseline.toml", "--baseline", PLANS / "baseline.toml")
    assert "no run of the plan file as it is now" in res.text and f"baseline@{h}" in res.text
    rep = run_cli(lever, "report", PLANS / "baseline.toml")
    error(rep, "no run of the plan file as it is now", f"baseline@{h}")
    rep = run_cli(lever, "report", f"baseline@{h[:5]}")
    assert rep.code == 0 and f"hash {h}  overrides" in rep.out and "inputs" in rep.out


def test_a_summary_from_before_digests_is_still_checked_against_its_rows(tmp_path):
    from lever.errors import DamagedState
    from lever.runs.layout import EvalDir

    ev = EvalDir(tmp_path / "eval" / "k", fix="lever evaluate P --redo")
    rows = [{"split": "val", "shots": 1, "question_id": q, "accuracy": float(q % 2), "failed": False} for q in range(4)]
    summary = ev.write(rows, {})
    del summary["results"]  # as an older lever wrote it
    ev.summary_file.write_text(json.dumps(summary))
    assert ev.read()[1] == rows
    ev.results.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))  # a row cut
    with pytest.raises(DamagedState, match="does not match the rows"):
        ev.read()


# ---------------------------------------------------------------- records that verify themselves


def _edit(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.slow
def test_a_stage_selection_edited_to_another_epoch_is_an_error_until_retrained(lever, ws):
    """A stage's selected.json names another epoch (and that epoch's digest): a plan reusing the stage would
    evaluate the edited epoch while printing the selected one's value. The stage's own metrics disagree."""
    args = [PLANS / "baseline.toml", *FAST, "--no-eval"]
    assert run_cli(lever, "run", *args).code == 0
    (run_dir,) = seed_dirs(ws, "baseline")
    before = json.loads((run_dir / "selected.json").read_text())
    stage = stage_dir(ws)
    other = 3 - before["epoch"]  # the epoch that was not selected (of 2)
    digest = json.loads((stage / "ckpt" / f"epoch-{other:03d}.json").read_text())["sha256"]
    _edit(stage / "selected.json", epoch=other, sha256=digest)
    error(run_cli(lever, "evaluate", *args[:-1]), str(stage / "selected.json"), f"names epoch {other}", "--retrain-stage rce")
    _edit(
        stage / "selected.json", value=json.loads((stage / "ckpt" / f"epoch-{other:03d}.json").read_text())["metrics"]["val/loss"]
    )
    error(run_cli(lever, "run", *args, "--redo"), str(stage / "selected.json"), "metrics select epoch", "--retrain-stage rce")
    assert run_cli(lever, "run", *args, "--retrain-stage", "rce").code == 0
    assert json.loads((run_dir / "selected.json").read_text()) == before  # the repair restores the same selection


def test_a_run_selection_edited_to_another_epoch_is_an_error_until_redone(lever, ws):
    args = [PLANS / "baseline.toml", *TINY[:-2], "rce.epochs=2", "eval.shots=[1,2]"]
    assert run_cli(lever, "run", *args).code == 0
    (run_dir,) = seed_dirs(ws, "baseline")
    sel = run_dir / "selected.json"
    good = sel.read_text()
    other = 3 - json.loads(good)["epoch"]
    ckpt = f"{json.loads(good)['dir']}/ckpt/epoch-{other:03d}.safetensors"
    _edit(sel, epoch=other, checkpoint=ckpt)
    for cmd in (["evaluate", *args], ["compare", "baseline", "--baseline", "baseline"], ["report", "baseline"]):
        error(run_cli(lever, *cmd), str(sel), "--redo")
    listed_damaged(run_cli(lever, "runs"), "selected.json")
    res = run_cli(lever, "run", *args, "--redo")
    assert res.code == 0, res.text
    assert sel.read_text() == good and run_cli(lever, "compare", "baseline", "--baseline", "baseline").code == 0


def test_an_evaluation_pointer_to_another_plans_results_is_an_error(lever, ws):
    """eval/selected.json pointed at another plan's evaluation would show that plan's numbers as this one's."""
    tiny = [*TINY]
    assert run_cli(lever, "run", PLANS / "baseline.toml", *tiny).code == 0
    assert run_cli(lever, "run", PLANS / "plan1.toml", *tiny, "grpo.epochs=1").code == 0
    (base_run,) = seed_dirs(ws, "baseline")
    (other,) = seed_dirs(ws, "plan1")
    pointer = base_run / "eval" / "selected.json"
    good = pointer.read_text()
    _edit(pointer, key=f"../../../../plan1/{other.parent.name}/seed-0/eval/{eval_dir(other).name}")
    error(run_cli(lever, "compare", "plan1", "--baseline", "baseline"), str(pointer), "not an evaluation of this run")
    evaluated = eval_dir(base_run)
    shutil.copytree(eval_dir(other), base_run / "eval" / eval_dir(other).name)  # another plan's results, copied in
    _edit(pointer, key=eval_dir(other).name)
    error(run_cli(lever, "compare", "plan1", "--baseline", "baseline"), str(pointer), "not of this run's selected checkpoint")
    res = run_cli(lever, "evaluate", PLANS / "baseline.toml", *tiny, "--redo")  # the repair the message names
    assert res.code == 0, res.text
    assert pointer.read_text() == good and (evaluated / "summary.json").is_file()
    assert run_cli(lever, "compare", "plan1", "--baseline", "baseline").code == 0


@pytest.mark.slow
def test_a_copied_or_flipped_checkpoint_is_detected_before_use(lever, ws):
    args = [PLANS / "baseline.toml", *FAST]
    assert run_cli(lever, "run", *args).code == 0
    stage = stage_dir(ws)
    sel = json.loads((stage / "selected.json").read_text())["epoch"]
    other = 3 - sel
    chosen = stage / "ckpt" / f"epoch-{sel:03d}.safetensors"
    good = chosen.read_bytes()
    shutil.copy(stage / "ckpt" / f"epoch-{other:03d}.safetensors", chosen)  # the other epoch's weights under this name
    error(run_cli(lever, "evaluate", *args, "--redo"), str(chosen), "SHA-256 does not match", "--retrain-stage rce")
    flipped = bytearray(good)
    flipped[-3] ^= 0x01  # one bit of one weight
    chosen.write_bytes(bytes(flipped))
    error(run_cli(lever, "evaluate", *args, "--redo"), str(chosen), "SHA-256 does not match")
    error(run_cli(lever, "run", *args, "--redo"), str(chosen))
    assert run_cli(lever, "run", *args, "--retrain-stage", "rce").code == 0
    assert chosen.read_bytes() == good  # retrained: the same weights, bit for bit


@pytest.mark.slow
def test_a_stage_folder_leading_outside_the_runs_folder_is_damage(lever, ws, tmp_path):
    args = [PLANS / "baseline.toml", *FAST, "--no-eval"]
    assert run_cli(lever, "run", *args).code == 0
    stage = stage_dir(ws)
    outside = tmp_path / "elsewhere"
    shutil.move(stage, outside)
    stage.symlink_to(outside, target_is_directory=True)
    error(run_cli(lever, "evaluate", *args[:-1]), "leads outside the runs folder", "--retrain-stage rce")  # not --redo
    error(run_cli(lever, "run", *args, "--redo"), "leads outside the runs folder", "--retrain-stage rce")
    assert run_cli(lever, "run", *args, "--retrain-stage", "rce").code == 0
    assert stage.is_dir() and not stage.is_symlink()


def test_a_full_disk_while_saving_a_checkpoint_fails_the_run_with_exit_2(lever, ws, monkeypatch):
    from pathlib import Path as P

    args = [PLANS / "baseline.toml", *FAST, "--no-eval"]
    real = P.write_bytes

    def full(self, data):
        if self.name.startswith(".epoch-002.safetensors"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(P, "write_bytes", full)
    res = run_cli(lever, "run", *args)
    error(res, "No space left on device", "epoch-002.safetensors")
    (run_dir,) = seed_dirs(ws, "baseline")
    assert status(run_dir)["state"] == "failed"
    monkeypatch.setattr(P, "write_bytes", real)
    assert run_cli(lever, "run", *args).code == 0 and status(run_dir)["state"] == "trained"


def test_export_refuses_a_folder_the_runs_folder_and_an_input(lever, ws, tmp_path):
    """Refused before any checkpoint is read (a successful export: tests/test_sft_checkpoints.py)."""
    from lever.data.sources import bench_paths
    from lever.spec.workspace import load_workspace

    args = [PLANS / "original" / "plan5.toml"]
    error(run_cli(lever, "export", *args, "-o", tmp_path), "is a folder")
    error(run_cli(lever, "export", *args, "-o", ws / "runs" / "x.ckpt"), "inside the runs folder")
    cands = Path(bench_paths(load_workspace(os.environ["LEVER_WORKSPACE"]), lambda m: None).candidates)
    kept = cands.read_bytes()
    error(run_cli(lever, "export", *args, "-o", cands), "is an input of the plan")
    assert cands.read_bytes() == kept
    res = run_cli(lever, "export", *args, "--format", "lever-plus-v3", "-o", tmp_path)
    error(res, "is a folder", "selector_v3.pt")  # the hint names the format's file
    existing = tmp_path / "plan5.toml"
    existing.write_text("a plan")
    error(run_cli(lever, "export", *args, "-o", existing), "already exists", "--force")
    assert existing.read_text() == "a plan"
    assert "lever-plus-v3" in run_cli(lever, "export", "--help").out


def test_one_run_reads_its_inputs_and_checks_its_evaluation_files_once(lever, ws):
    from lever.eval import world
    from lever.recipe import recipe

    before, checked = recipe.LOADS["inputs"], world.CHECKS["eval_files"]
    recipe._LOADED.clear()
    assert run_cli(lever, "run", PLANS / "baseline.toml", *TINY).code == 0  # preflight, training and evaluation
    assert recipe.LOADS["inputs"] == before + 1
    assert world.CHECKS["eval_files"] == checked + 1  # the recipe's evaluation inputs: preflight and evaluation share them


def test_swapped_stage_folders_are_damage_naming_the_stage(lever, ws):
    """Each stage record holds its own key: two GRPO stage folders whose names were swapped are damage (exit 2, the
    stage's folder and the repair named), never reused as the other plan's stage; the repair trains it again."""
    a = [PLANS / "plan5.toml", *TINY, "grpo.epochs=1", "--no-eval"]
    b = [*a[:-1], "grpo.lr=1e-5", "--no-eval"]
    assert run_cli(lever, "run", *a).code == 0 and run_cli(lever, "run", *b).code == 0
    one, two = sorted((ws / "runs" / "_stages").glob("grpo-*/"))
    one.rename(ws / "swap")
    two.rename(one)
    (ws / "swap").rename(two)
    for args in (a, b):
        error(run_cli(lever, "run", *args), "renamed or copied", "_stages/grpo-", "--retrain-stage grpo")
        error(run_cli(lever, "run", *args, "--redo"), "renamed or copied", "_stages/grpo-", "--retrain-stage grpo")
    res = run_cli(lever, "run", *a, "--retrain-stage", "grpo")
    assert res.code == 0 and "grpo: deleting" in res.text and "grpo: reusing" not in res.text


def test_a_resume_state_of_another_stage_key_is_damage(tmp_path):
    from lever.errors import DamagedState
    from lever.train.checkpoint import save_resume
    from lever.train.folder import read_resume

    save_resume(tmp_path / "resume.pt", {"epoch": 0, "key": "aaaa"})
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(DamagedState, match="renamed or copied"):
        read_resume(tmp_path, "bbbb")
    assert read_resume(tmp_path, "aaaa") == ({"epoch": 0, "key": "aaaa"}, [])
    assert read_resume(tmp_path) is not None  # a caller that names no key checks none
