"""`lever sweep`: grids, derived plans, executors (local jobs, submitit's local executor), resume; threads; trackers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_run import FAST, PLANS, ROOT, metrics, run_cli
from test_run import ws as ws  # noqa: F401  (a fixture)

from lever.errors import LeverError
from lever.io import read_jsonl
from lever.runs import executors
from lever.runs.sweep import expand, parse_grid, parse_seeds, split_values

BASE = str(PLANS / "baseline.toml")
# Two values of one key (the first is the plan's own, so that point is the base plan) x two seeds: four runs.
GRID = ["--grid", "rce.lr=1e-4,3e-4", "--seeds", "0,1"]


def sweep_cli(lever, *args):
    return run_cli(lever, "sweep", BASE, *FAST, *GRID, *args)


def run_dirs(root: Path) -> dict[tuple[str, int], Path]:
    """(spec hash, seed) -> run folder, for the baseline plan's runs under `root`."""
    return {(d.parent.name, int(d.name[5:])): d for d in (root / "baseline").glob("*/seed-*")}


def accuracies(run_dir: Path) -> dict:
    """The selected evaluation's accuracies per split and shot count."""
    key = json.loads((run_dir / "eval" / "selected.json").read_text())["key"]
    return json.loads((run_dir / "eval" / key / "summary.json").read_text())["splits"]


def same_runs(a: Path, b: Path) -> None:
    """Two runs folders hold the same runs with the same metrics and accuracies."""
    ra, rb = run_dirs(a), run_dirs(b)
    assert sorted(ra) == sorted(rb) and len(ra) == 4
    for key in ra:
        assert metrics(ra[key]) == metrics(rb[key]), key  # identical: same code, same seed, one thread each
        assert accuracies(ra[key]) == accuracies(rb[key]), key


@pytest.fixture
def separate(lever, ws, tmp_path, monkeypatch):
    """The sweep's four runs as four separate `lever run`s (one thread, as a sweep's job gets) in `<tmp>/separate`."""
    other = tmp_path / "separate.toml"
    other.write_text(Path(os.environ["LEVER_WORKSPACE"]).read_text().replace('runs = "runs"', 'runs = "separate"'))
    monkeypatch.setenv("LEVER_THREADS", "1")
    for lr in ("1e-4", "3e-4"):
        for seed in ("0", "1"):
            res = lever("--workspace", other, "run", BASE, *FAST, f"rce.lr={lr}", "--seed", seed)
            assert res.code == 0, res.text
    monkeypatch.delenv("LEVER_THREADS")
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    return tmp_path / "separate"


# ------------------------------------------------------------------ grids and names (fast)


def test_grid_values_are_split_on_top_level_commas():
    assert split_values("1e-5,5e-5") == ["1e-5", "5e-5"]
    assert split_values("[1,2],[3]") == ["[1,2]", "[3]"]
    assert split_values('"a,b",c') == ['"a,b"', "c"]
    assert parse_grid(["grpo.lr=1e-5,5e-5", "grpo.kl.beta=0,0.1"]) == {"grpo.lr": ["1e-5", "5e-5"], "grpo.kl.beta": ["0", "0.1"]}
    assert parse_seeds("0,1,2") == [0, 1, 2]


@pytest.mark.parametrize(
    "axes,needle",
    [
        (["grpo.lr"], "expected key.path=v1,v2"),
        (["grpo.lr=1e-5,"], "expected key.path=v1,v2"),
        (["grpo.lr=1,1"], "listed twice"),
        (["grpo.lr=1", "grpo.lr=2"], "given twice"),
        (["grpo.lrr=1,2"], "did you mean 'lr'"),
    ],
)
def test_bad_grids_name_the_key_and_what_is_valid(axes, needle):
    with pytest.raises(LeverError, match=needle):
        parse_grid(axes)


def test_derived_plans_are_named_and_hashed_and_a_point_equal_to_the_base_is_the_base():
    sw = expand("plan5", ["grpo.epochs=2"], parse_grid(["grpo.lr=5e-6,1e-5", "grpo.kl.beta=0,0.1"]), [0, 1], PLANS)
    names = [m.name for m in sw.members]
    assert names[0] == "plan5" and "plan5@grpo.lr=1e-5,grpo.kl.beta=0" in names and len(names) == 5
    point = next(m for m in sw.members if m.name == "plan5@grpo.lr=5e-6,grpo.kl.beta=0.1")
    assert point.spec_hash == sw.base.spec_hash  # plan5's own values: the same run as the base plan
    assert len({m.spec_hash for m in sw.members}) == 4
    assert len(sw.jobs) == 8 and sw.jobs[0].member is sw.base
    assert sw.jobs[-1].args() == [
        "run",
        str(PLANS / "plan5.toml"),
        "grpo.epochs=2",
        "grpo.lr=1e-5",
        "grpo.kl.beta=0.1",
        "--seed",
        "1",
    ]
    again = expand("plan5", ["grpo.epochs=2"], parse_grid(["grpo.lr=5e-6,1e-5", "grpo.kl.beta=0,0.1"]), [0, 1], PLANS)
    assert again.key == sw.key


def test_print_writes_one_lever_run_command_per_run(lever, ws):
    res = sweep_cli(lever, "--print")
    assert res.code == 0, res.text
    lines = res.out.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("lever --workspace ") and " run " in line for line in lines)
    assert sum("rce.lr=3e-4" in line for line in lines) == 2 and lines[0].endswith("--seed 0")
    assert not (ws / "runs").exists()  # nothing ran


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--grid", "rce.lrr=1,2"], "did you mean 'lr'"),
        (["--grid", "rce.lr=1e-4,fast"], "rce.lr"),  # a value the schema refuses, before any job starts
        (["--grid", "rce.lr=1e-4", "--seeds", "0,x"], "--seeds"),
        (["--grid", "rce.lr=1e-4", "--executor", "pbs"], "local, slurm, submitit-local"),
        ([], "no --grid given"),
        (["--grid", "rce.lr=1e-4", "--executor", "slurm"], "--executor slurm"),  # no Slurm (or no submitit) here
    ],
)
def test_sweep_mistakes_are_one_line_errors(lever, ws, args, needle):
    res = run_cli(lever, "sweep", BASE, *FAST, *args)
    assert res.code == 2 and needle in res.text and "Traceback" not in res.text, res.text


def test_sweep_help_has_an_example(lever):
    res = lever("sweep", "--help")
    assert res.code == 0 and "lever sweep plan5 --grid" in res.out


# ------------------------------------------------------------------ executors and threads (fast)


def test_local_jobs_get_a_gpu_each_or_a_share_of_the_cores(monkeypatch):
    monkeypatch.setattr(executors, "available_cores", lambda: 8)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    gpu = executors.slot_envs(2)
    assert gpu == [{"CUDA_VISIBLE_DEVICES": "2", "LEVER_THREADS": "4"}, {"CUDA_VISIBLE_DEVICES": "5", "LEVER_THREADS": "4"}]
    with pytest.raises(LeverError, match="--jobs 3 but 2 GPU"):
        executors.slot_envs(3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert executors.slot_envs(3) == [{"LEVER_THREADS": "2"}] * 3  # 3 x 2 threads on 8 cores: never more than there are
    with pytest.raises(LeverError, match="oversubscribe"):
        executors.slot_envs(9)


def test_threads_default_override_and_provenance(lever, ws, monkeypatch):
    monkeypatch.setenv("LEVER_THREADS", "lots")
    res = run_cli(lever, "run", BASE, *FAST, "--no-eval")
    assert res.code == 2 and "LEVER_THREADS='lots'" in res.text
    monkeypatch.setenv("LEVER_THREADS", "1")
    try:
        res = run_cli(lever, "run", BASE, *FAST, "--no-eval")
        assert res.code == 0, res.text
        assert torch.get_num_threads() == 1
    finally:
        monkeypatch.delenv("LEVER_THREADS")
        run_cli(lever, "--version")
    assert torch.get_num_threads() == len(os.sched_getaffinity(0))  # the default: the cores this process may use
    (run_dir,) = (ws / "runs" / "baseline").glob("*/seed-0")
    threads = json.loads((run_dir / "provenance.json").read_text())["threads"]
    assert threads == {
        "torch_threads": 1,
        "source": "LEVER_THREADS",
        "available_cores": len(os.sched_getaffinity(0)),
        "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
    }


def test_the_cli_waits_passively_unless_told_otherwise():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = "import sys, os, lever_cli; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["PASSIVE", "False"]  # set before torch loads: OpenMP reads it once
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "ACTIVE"


# ------------------------------------------------------------------ trackers (fast)


def test_tensorboard_events_equal_metrics_jsonl(lever, ws):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = Path(os.environ["LEVER_WORKSPACE"])
    path.write_text('loggers = ["tensorboard"]\n' + path.read_text())  # a top-level key: before the [bench] table
    assert run_cli(lever, "run", BASE, *FAST, "--no-eval").code == 0
    args = [str(PLANS / "plan1.toml"), *FAST, "grpo.epochs=2", 'eval.splits=["val"]']
    res = run_cli(lever, "run", *args)
    assert res.code == 0 and "rce: reusing" in res.text, res.text  # RCE epochs not trained live: logged after training
    (run_dir,) = (ws / "runs" / "plan1").glob("*/seed-0")
    rows = read_jsonl(run_dir / "metrics.jsonl")
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    names = {k for r in rows for k in r if k not in ("stage", "epoch")}
    assert names <= tags  # the same names as metrics.jsonl
    for name in names:
        logged = [(e.step, e.value) for e in events.Scalars(name)]
        expected = [(step, r[name]) for step, r in enumerate(rows, start=1) if name in r]  # one step per epoch, stage after stage
        assert [s for s, _ in logged] == [s for s, _ in expected], name
        assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-6), name
    acc = accuracies(run_dir)["val"]
    for shots, cell in acc.items():
        (event,) = events.Scalars(f"eval/val/acc@{shots}")
        assert event.step == len(rows) and event.value == pytest.approx(cell["accuracy"])
    assert events.summary_metadata  # hyperparameters: the resolved spec
    # A finished run is not logged twice.
    before = sorted(p.name for p in (run_dir / "tensorboard").iterdir())
    assert run_cli(lever, "run", *args).code == 0
    assert sorted(p.name for p in (run_dir / "tensorboard").iterdir()) == before


def test_tensorboard_shows_each_step_once_after_a_resume(tmp_path):
    """The killed process logged epochs 1-2 of RCE; the resumed one logs them again (Reporter.resumed) in
    step order, then 3-4: TensorBoard reads one value per step, the resumed process's."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lever.runs.layout import RunDir
    from lever.runs.trackers import Trackers
    from lever.spec.load import load_plan
    from lever.train.stage import SilentReporter

    lp = load_plan(PLANS / "baseline.toml", ["rce.epochs=4"], plans_dir=PLANS)
    run = RunDir(tmp_path / "baseline" / lp.hash / "seed-0")
    run.path.mkdir(parents=True)
    row = lambda epoch, v: {"epoch": epoch, "val/loss": v}  # noqa: E731
    killed = Trackers(["tensorboard"], run, lp)
    for epoch in (1, 2):
        killed.wrap(SilentReporter()).epoch_end("rce", row(epoch, 10.0 + epoch))
    killed.close()
    resumed = Trackers(["tensorboard"], run, lp)
    rep = resumed.wrap(SilentReporter())
    rep.resumed("rce", [row(1, 21.0), row(2, 22.0)])
    for epoch in (3, 4):
        rep.epoch_end("rce", row(epoch, 20.0 + epoch))
    resumed.close()
    assert len(list((run.path / "tensorboard").glob("events.out.tfevents.*"))) == 2
    events = EventAccumulator(str(run.path / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("val/loss")] == [(1, 21.0), (2, 22.0), (3, 23.0), (4, 24.0)]


def wandb_records(path: Path):
    """The protobuf records of an offline W&B run file (blocks of 32 KiB, each record a 7-byte header and its bytes)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf = path.read_bytes(), 7, b""  # after the file header
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # the rest of a block is padding
            pos += 32768 - pos % 32768
            continue
        size, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        payload, pos = data[pos + 7 : pos + 7 + size], pos + 7 + size
        buf = payload if kind in (1, 2) else buf + payload  # full, first; middle, last
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            yield record


def test_wandb_offline_run_holds_the_metrics_and_the_spec(lever, ws):
    pytest.importorskip("wandb")
    path = Path(os.environ["LEVER_WORKSPACE"])
    path.write_text('loggers = ["wandb"]\n' + path.read_text())
    res = run_cli(lever, "run", str(PLANS / "plan5.toml"), *FAST, "rce.epochs=1", "grpo.epochs=2", 'eval.splits=["val"]')
    assert res.code == 0, res.text
    (run_dir,) = (ws / "runs" / "plan5").glob("*/seed-0")
    (file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    history, config = [], {}
    for r in wandb_records(file):
        if r.WhichOneof("record_type") == "history":
            items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            history.append({k: v for k, v in items.items() if not k.startswith("_")})
        elif r.WhichOneof("record_type") == "run":
            config = {u.key: json.loads(u.value_json) for u in r.run.config.update}
    rows = read_jsonl(run_dir / "metrics.jsonl")
    for step, row in enumerate(rows, start=1):
        logged = next(h for h in history if h["lever/step"] == step and "val/loss" in h)
        assert {k: pytest.approx(v) for k, v in row.items() if k not in ("stage", "epoch")} == {
            k: v for k, v in logged.items() if k != "lever/step"
        }
    assert any(h.get("eval/val/acc@1") == pytest.approx(accuracies(run_dir)["val"]["1"]["accuracy"]) for h in history)
    assert config["grpo.epochs"] == 2 and config["rce.epochs"] == 1


def test_unknown_logger_is_a_workspace_error(lever, ws):
    path = Path(os.environ["LEVER_WORKSPACE"])
    path.write_text('loggers = ["mlflow"]\n' + path.read_text())
    res = run_cli(lever, "run", BASE, *FAST)
    assert res.code == 2 and "loggers" in res.text and "tensorboard" in res.text, res.text


def test_a_sweep_skips_a_run_another_process_holds(lever, ws):
    from lever.io import file_lock, lock_holder
    from lever.runs.layout import RunsFolder

    grid = ["--grid", "rce.lr=1e-4", "--seeds", "1"]  # the plan's own value: one run
    (job,) = expand(BASE, FAST, parse_grid(grid[1:2]), [1], PLANS).jobs
    lock = RunsFolder(ws / "runs").run("baseline", job.member.spec_hash, 1).lock
    assert lock_holder(lock) is None and not lock.exists()  # nobody holds it, and the probe does not create it
    with file_lock(lock, wait=False, what="seed 1"):  # as another sweep's `lever run` would hold it
        assert lock_holder(lock) == f"pid {os.getpid()}"
        res = run_cli(lever, "sweep", BASE, *FAST, *grid)
    assert res.code == 0 and f"baseline seed 1: being run by pid {os.getpid()}" in res.text, res.text
    assert "skipped: run the same sweep again when it finishes" in res.text and "FAILED" not in res.text
    assert lock_holder(lock) is None and not run_dirs(ws / "runs")  # released; the job never started


# ------------------------------------------------------------------ whole sweeps (slow)


@pytest.mark.slow
def test_sweep_with_two_local_jobs_equals_four_separate_runs(lever, ws, separate):
    res = sweep_cli(lever, "--jobs", "2")
    assert res.code == 0, res.text
    assert "4 run(s), 0 already done, 4 to run" in res.text
    assert "baseline@rce.lr=3e-4" in res.text and "±" in res.text  # the family table: mean ± std over seeds
    same_runs(ws / "runs", separate)
    record = json.loads(next((ws / "runs" / "_sweeps").glob("*.json")).read_text())
    assert len(record["jobs"]) == 4 and all(j["state"] == "done" and j["log"] and j["run"] for j in record["jobs"].values())
    for job in record["jobs"].values():  # the job's log and its run folder point at each other
        assert (ws / "runs" / job["log"]).is_file()
        assert json.loads((ws / "runs" / job["run"] / "provenance.json").read_text())["job"]["log"] == job["log"]
    runs = run_cli(lever, "runs")
    assert runs.out.count("baseline@rce.lr=3e-4") >= 2
    cmp = run_cli(
        lever, "compare", "baseline@rce.lr=3e-4", "--baseline", f"baseline@{record['members'][0]['spec_hash']}", "--json"
    )
    assert cmp.code == 0, cmp.text
    assert "baseline@rce.lr=3e-4" in cmp.out
    again = sweep_cli(lever, "--jobs", "2")
    assert again.code == 0 and "4 already done, 0 to run" in again.text


@pytest.mark.slow
def test_sweep_through_submitits_local_executor_gives_identical_metrics(lever, ws, separate):
    pytest.importorskip("submitit")
    res = sweep_cli(lever, "--executor", "submitit-local", "--jobs", "2")
    assert res.code == 0, res.text
    assert res.text.count("submitted 2 job(s) to local") == 2  # --jobs 2: two at a time
    same_runs(ws / "runs", separate)
    record = json.loads(next((ws / "runs" / "_sweeps").glob("*.json")).read_text())
    for job in record["jobs"].values():  # submitit's own log, linked both ways
        assert job["job_id"] and (ws / "runs" / job["log"]).is_file()
        assert json.loads((ws / "runs" / job["run"] / "provenance.json").read_text())["job"]["log"] == job["log"]


@pytest.mark.slow
def test_a_run_another_process_holds_is_skipped_and_the_others_run(lever, ws, monkeypatch):
    from lever.io import file_lock, lock_holder
    from lever.runs.layout import RunsFolder

    grid = ["--grid", "rce.lr=1e-4,3e-4", "--seeds", "1"]
    base, other = expand(BASE, FAST, parse_grid(grid[1:2]), [1], PLANS).jobs
    lock = RunsFolder(ws / "runs").run("baseline", base.member.spec_hash, 1).lock
    skipped = f"baseline seed 1: being run by pid {os.getpid()}"
    with file_lock(lock, wait=False, what="seed 1"):  # as another sweep's `lever run` would hold it
        res = run_cli(lever, "sweep", BASE, *FAST, *grid)
        assert res.code == 0 and skipped in res.text and "FAILED" not in res.text, res.text
        assert "start baseline seed 1" not in res.text and "done baseline@rce.lr=3e-4 seed 1" in res.text
        assert list(run_dirs(ws / "runs")) == [(other.member.spec_hash, 1)]  # the other ran; the held one never started
        # The lock taken after the probe: the job's `lever run` refuses, and that is a skip too.
        with monkeypatch.context() as m:
            m.setattr(executors, "busy", lambda job, root: None)
            res = run_cli(lever, "sweep", BASE, *FAST, *grid)
        assert res.code == 0 and "1 already done, 1 to run" in res.text and "start baseline seed 1" in res.text
        assert skipped in res.text and "FAILED" not in res.text, res.text
        record = json.loads(next((ws / "runs" / "_sweeps").glob("*.json")).read_text())
        assert all(j["error"] is None for j in record["jobs"].values())
    assert lock_holder(lock) is None
    res = run_cli(lever, "sweep", BASE, *FAST, *grid)  # the same sweep, once the other has finished
    assert res.code == 0 and "1 already done, 1 to run" in res.text and "done baseline seed 1" in res.text, res.text


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_redoing_finished_runs(lever, ws):
    cmd = [sys.executable, "-m", "lever_cli", "--workspace", os.environ["LEVER_WORKSPACE"], "sweep", BASE, *FAST, *GRID]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline, first = time.time() + 180, None
    while time.time() < deadline and first is None:  # kill the whole sweep once its first run is done
        for status in (ws / "runs" / "baseline").glob("*/seed-*/status.json"):
            if json.loads(status.read_text() or "{}").get("state") == "done":
                first = status.parent
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first is not None
    stamp = (first / "metrics.jsonl").stat().st_mtime_ns
    res = sweep_cli(lever, "--jobs", "2")
    assert res.code == 0, res.text
    done_before = int(res.text.split(" already done")[0].rsplit(" ", 1)[-1])
    assert done_before >= 1 and f"{4 - done_before} to run" in res.text
    assert (first / "metrics.jsonl").stat().st_mtime_ns == stamp  # not redone
    assert all(json.loads((d / "status.json").read_text())["state"] == "done" for d in run_dirs(ws / "runs").values())
    record = json.loads(next((ws / "runs" / "_sweeps").glob("*.json")).read_text())
    assert all(j["state"] == "done" and (ws / "runs" / j["log"]).is_file() for j in record["jobs"].values())  # killed or not


def test_batch_one_steps_run_on_one_thread_and_restore_the_count(monkeypatch):
    import torch

    from lever.threads import threads_for_batch

    torch.set_num_threads(2)
    try:
        with threads_for_batch(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with threads_for_batch(16):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(2)


# ------------------------------------------------------------------ a budget of VLM calls per job


def test_print_passes_each_jobs_vlm_call_budget(lever, ws):
    res = sweep_cli(lever, "--print", "--max-vlm-calls", "300")
    assert res.code == 0, res.text
    lines = res.out.strip().splitlines()
    assert len(lines) == 4 and all(line.endswith(" --max-vlm-calls 300") for line in lines)


def test_jobs_that_exit_75_are_stopped_not_failed_and_the_sweep_exits_75(lever, ws, monkeypatch):
    """A job's `lever run` that exits 75 (its --max-vlm-calls budget spent) is reported as stopped and resumable;
    the sweep exits 75, or 1 when another job failed."""
    code = ws / "code.txt"
    code.write_text("75")
    # each job: a process that exits with the code the file holds (the job's arguments follow, unread)
    monkeypatch.setattr(executors, "LEVER", [sys.executable, "-c", f"import sys; sys.exit(int(open({str(code)!r}).read()))"])
    grid = ["--grid", "rce.lr=1e-4,3e-4", "--seeds", "0"]
    res = run_cli(lever, "sweep", BASE, *FAST, *grid, "--max-vlm-calls", "300")
    assert res.code == 75, res.text
    assert "each run may make at most 300 new VLM calls" in res.text
    assert res.text.count("stopped at budget (resumable) baseline") == 2 and "FAILED" not in res.text
    assert "2 run(s) stopped at their budget of 300 new VLM calls (resumable)" in res.text and "Traceback" not in res.text
    record = json.loads(next((ws / "runs" / "_sweeps").glob("*.json")).read_text())
    assert all(j["stopped"] == "stopped at budget (resumable)" and j["error"] is None for j in record["jobs"].values())
    code.write_text("3")
    res = run_cli(lever, "sweep", BASE, *FAST, *grid, "--max-vlm-calls", "300")
    assert res.code == 1 and "2 run(s) failed" in res.text, res.text


def own_cache(tmp_path: Path) -> Path:
    """A workspace whose cache holds the shared test cache's benchmarks (linked) but a reward cache of its own, for
    jobs in subprocesses (the `_own_reward_cache` fixture reaches this process only)."""
    from workspaces import bench_workspace, shared_cache

    from lever.data.sources import bench_paths
    from lever.spec import load_workspace

    bench_paths(load_workspace(bench_workspace(tmp_path)), lambda m: None)  # the small benchmark, made once
    cache = tmp_path / "cache"
    cache.mkdir()
    for entry in shared_cache().iterdir():
        if entry.is_dir():
            (cache / entry.name).symlink_to(entry)
    path = tmp_path / "lever.toml"
    path.write_text(path.read_text().replace(f'cache = "{shared_cache()}"', f'cache = "{cache}"'))
    return path


@pytest.mark.slow
def test_a_sweep_of_online_plans_stops_each_run_at_its_budget_and_the_same_sweep_continues_them(lever, ws, monkeypatch):
    """Two reduced online GRPO plans (96 queries x 4 samples x 2 epochs: at most 768 VLM calls each), a budget of 300
    new calls per run: one stops in its first epoch, the other (whose first epoch the cache partly holds) in its
    second; the sweep exits 75; the same sweep without the budget continues both to the end."""
    path = own_cache(ws)
    monkeypatch.setenv("LEVER_WORKSPACE", str(path))
    online = [*FAST, "grpo.epochs=2", "grpo.lr=1e-4", "rollout.num_generations=4"]
    cmd = ["sweep", str(PLANS / "onpolicy" / "online8.toml"), *online, "--grid", "grpo.lr=1e-4,1e-3", "--seeds", "0"]
    res = run_cli(lever, *cmd, "--max-vlm-calls", "300")
    assert res.code == 75, res.text
    assert res.text.count("stopped at budget (resumable) onpolicy/online8") == 2 and "FAILED" not in res.text
    runs = sorted((ws / "runs" / "onpolicy" / "online8").glob("*/seed-0"))
    assert len(runs) == 2 and all(json.loads((r / "status.json").read_text())["state"] == "interrupted" for r in runs)
    record = json.loads(next((ws / "runs" / "_sweeps").glob("*.json")).read_text())
    logs = [(ws / "runs" / j["log"]).read_text() for j in record["jobs"].values()]
    assert sorted(log.count("300 new VLM calls made, the budget is 300 (in grpo epoch ") for log in logs) == [1, 1]
    assert all(re.search(r"grpo: the first [\d,]+ VLM calls took .*: about .* at most for the other", log) for log in logs)
    res = run_cli(lever, *cmd)
    assert res.code == 0, res.text
    assert "2 run(s), 0 already done, 2 to run" in res.text and res.text.count("done onpolicy/online8") == 2
    assert all(json.loads((r / "status.json").read_text())["state"] == "done" for r in runs)
    logs = [(ws / "runs" / j["log"]).read_text() for j in record["jobs"].values()]
    assert any("grpo: resuming after epoch 1" in log for log in logs)  # the one stopped in its second epoch
    assert "2 already done, 0 to run" in run_cli(lever, *cmd).text
