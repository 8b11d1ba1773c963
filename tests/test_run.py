"""`lever run` end to end on a small bundled benchmark, through the real CLI."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from workspaces import SMALL_BENCH_IMAGE, bench_workspace  # noqa: E402

from lever.io import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
PLANS = ROOT / "plans"
FAST = ["rce.epochs=2", "rce.batch_size=16", "eval.questions=40", "eval.shots=[1,2]"]


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """A workspace on a small benchmark; the cache is shared by the tests of this module."""
    path = bench_workspace(tmp_path)
    monkeypatch.setenv("LEVER_WORKSPACE", str(path))
    monkeypatch.chdir(ROOT)
    return tmp_path


def run_cli(lever, *args):
    """The `lever` fixture clears LEVER_WORKSPACE; pass the workspace explicitly."""
    return lever("--workspace", os.environ["LEVER_WORKSPACE"], *args)


def seed_dirs(ws: Path, plan: str) -> list[Path]:
    return sorted((ws / "runs" / plan).glob("*/seed-*"))


def metrics(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in read_jsonl(run_dir / "metrics.jsonl")]


# Values from a reference run of `baseline` with FAST overrides on the small benchmark
# (seed 0, CPU). A change to the model, the losses, the loop or the benchmark moves them.
STORED = {"val/loss": [7.173134, 7.163671], "losses/rce": [7.297983, 7.192034]}


def test_small_plan_trains_and_is_reproducible(lever, ws, tmp_path):
    res = run_cli(lever, "run", PLANS / "baseline.toml", *FAST, "--no-eval")
    assert res.code == 0, res.text
    (run_dir,) = seed_dirs(ws, "baseline")
    rows = metrics(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2] and all(r["stage"] == "rce" for r in rows)
    for key in ("val/loss", "losses/rce", "rce/tau", "optim/lr", "optim/grad_norm"):
        assert all(key in r for r in rows), key
    assert rows[1]["val/loss"] < rows[0]["val/loss"]  # it learns
    for key, values in STORED.items():
        assert [r[key] for r in rows] == pytest.approx(values, rel=1e-4), key
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "trained"
    sel = json.loads((run_dir / "selected.json").read_text())
    assert sel["metric"] == "val/loss" and sel["epoch"] in (1, 2) and sel["checkpoint"].endswith(".safetensors")
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["seed"] == 0 and prov["torch"] and prov["candidates"] and prov["features"]
    # Same spec again: nothing to do, nothing rewritten.
    before = (run_dir / "metrics.jsonl").stat().st_mtime_ns
    again = run_cli(lever, "run", PLANS / "baseline.toml", *FAST, "--no-eval")
    assert again.code == 0 and "already trained" in again.text
    assert (run_dir / "metrics.jsonl").stat().st_mtime_ns == before
    # Determinism: the same spec in a fresh runs folder gives identical metrics.
    other = tmp_path / "other.toml"
    other.write_text(Path(os.environ["LEVER_WORKSPACE"]).read_text().replace('runs = "runs"', 'runs = "runs2"'))
    res2 = lever("--workspace", other, "run", PLANS / "baseline.toml", *FAST, "--no-eval")
    assert res2.code == 0, res2.text
    (run2,) = sorted((tmp_path / "runs2" / "baseline").glob("*/seed-*"))
    assert metrics(run2) == rows


# GRPO at batch 1 after the RCE above (plan5: z-score advantages, frozen backbone, top-3 then top-5),
# seed 0, CPU. The validation loss is stable to float rounding (the autograd path, PointerSelector.fused
# = False, gives the same to rel 1e-5); the KL is not: at batch 1 Adam's first steps move parameters whose
# gradients are rounding noise by a full learning rate, so the two paths' KL differ by ~2% (their
# gradients agree to 2e-6 step by step), and across CPUs (other SIMD kernels: an AMD EPYC without AVX-512
# gives 1.4217e-05 and 1.1335e-04) by up to 6%. The advantages come from the data alone.
# On generator 2's image-only features (workspaces.SMALL_BENCH_IMAGE), where the advantages below were worked out.
GRPO_B1 = ["grpo.epochs=2", "grpo.batch_size=1", "--no-eval"]
STORED_GRPO = {"val/loss": ([7.248096, 7.248311], 1e-4), "kl/value": ([1.405945e-05, 1.070446e-04], 0.1)}


@pytest.fixture
def ws_image(tmp_path, monkeypatch):
    """The small benchmark with generator 2's image-only item features."""
    path = bench_workspace(tmp_path, SMALL_BENCH_IMAGE)
    monkeypatch.setenv("LEVER_WORKSPACE", str(path))
    monkeypatch.chdir(ROOT)
    return tmp_path


def test_grpo_at_batch_1_matches_stored_values(lever, ws_image):
    ws = ws_image
    res = run_cli(lever, "run", PLANS / "plan5.toml", *FAST, *GRPO_B1)
    assert res.code == 0, res.text
    (run_dir,) = seed_dirs(ws, "plan5")
    grpo = [r for r in metrics(run_dir) if r["stage"] == "grpo"]
    for key, (values, rel) in STORED_GRPO.items():
        assert [r[key] for r in grpo] == pytest.approx(values, rel=rel), key
    assert [(r["adv/max"], r["adv/zero_frac"]) for r in grpo] == [
        pytest.approx(
            (2 / 3**0.5, 93 / 96), abs=1e-6
        ),  # top-3: one winner over two equal rewards, (2/3) / (1/sqrt 3) with the sample std
        pytest.approx((4 / 5**0.5, 89 / 96), abs=1e-6),  # top-5: one winner over four equal, (4/5) / (1/sqrt 5)
    ]


def test_changed_spec_makes_a_new_run(lever, ws):
    assert run_cli(lever, "run", PLANS / "baseline.toml", *FAST, "--no-eval").code == 0
    (first,) = seed_dirs(ws, "baseline")
    snapshot = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    res = run_cli(lever, "run", PLANS / "baseline.toml", *FAST, "rce.lr=5e-4", "--no-eval")
    assert res.code == 0, res.text
    dirs = seed_dirs(ws, "baseline")
    assert len(dirs) == 2
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file()} == snapshot  # the older run is untouched


def test_rce_stage_is_reused_between_plans(lever, ws):
    assert run_cli(lever, "run", PLANS / "baseline.toml", *FAST, "--no-eval").code == 0
    res = run_cli(lever, "run", PLANS / "plan1.toml", *FAST, "grpo.epochs=1", "--no-eval")
    assert res.code == 0, res.text
    assert "rce: reusing" in res.text
    (base,) = seed_dirs(ws, "baseline")
    (p1,) = seed_dirs(ws, "plan1")
    base_stages = json.loads((base / "stages.json").read_text())
    p1_stages = json.loads((p1 / "stages.json").read_text())
    assert p1_stages[0]["dir"] == base_stages[0]["dir"]
    assert [s["stage"] for s in p1_stages] == ["rce", "grpo"]
    grpo = [r for r in read_jsonl(p1 / "metrics.jsonl") if r["stage"] == "grpo"]
    for key in ("losses/ppo", "kl/value", "kl/beta", "adv/mean", "adv/std", "adv/max", "adv/zero_frac", "policy/clip_frac"):
        assert key in grpo[0], key


def test_absurd_learning_rate_trips_the_guardrail(lever, ws):
    res = run_cli(
        lever,
        "run",
        PLANS / "plan7.toml",
        *FAST,
        "grpo.epochs=3",
        "grpo.lr=1.0",
        "grpo.kl.max_kl=0.5",
        "grpo.grad_clip=0",
        "grpo.top_k_schedule=[]",
        "--no-eval",
    )
    assert res.code == 1, res.text
    assert "grpo epoch 1" in res.err and ("KL" in res.err or "nan" in res.err)
    (run_dir,) = seed_dirs(ws, "plan7")
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and "grpo epoch 1" in status["message"]


def _stage_metrics(ws: Path, name: str) -> list[Path]:
    return sorted((ws / "runs" / "_stages").glob(f"{name}-*/metrics.jsonl"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "plan,stage,overrides",
    [
        ("baseline", "rce", ["rce.epochs=4"]),
        ("plan5", "grpo", ["rce.epochs=1", "grpo.epochs=4", "grpo.lr=1e-4"]),
    ],
)
def test_kill_and_rerun_gives_the_same_final_metrics(lever, ws, tmp_path, plan, stage, overrides):
    overrides = [*FAST, *overrides, "--no-eval"]
    tensorboard = importlib.util.find_spec("tensorboard") is not None
    if tensorboard:  # and the run's TensorBoard events show each epoch once, in order
        path = Path(os.environ["LEVER_WORKSPACE"])
        path.write_text('loggers = ["tensorboard"]\n' + path.read_text())
    cmd = [
        sys.executable,
        "-m",
        "lever_cli",
        "--workspace",
        os.environ["LEVER_WORKSPACE"],
        "run",
        str(PLANS / f"{plan}.toml"),
        *overrides,
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill hard once at least two epochs of the stage are on disk
        files = _stage_metrics(ws, stage)
        if files and len(read_jsonl(files[0])) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (run_dir,) = seed_dirs(ws, plan)
    assert json.loads((run_dir / "status.json").read_text())["state"] == "running"
    res = run_cli(lever, "run", PLANS / f"{plan}.toml", *overrides)
    assert res.code == 0, res.text
    assert f"{stage}: resuming after epoch" in res.text
    resumed = metrics(run_dir)
    other = tmp_path / "clean.toml"
    other.write_text(Path(os.environ["LEVER_WORKSPACE"]).read_text().replace('runs = "runs"', 'runs = "clean"'))
    assert lever("--workspace", other, "run", PLANS / f"{plan}.toml", *overrides).code == 0
    (clean,) = sorted((tmp_path / "clean" / plan).glob("*/seed-*"))
    assert [r["epoch"] for r in resumed if r["stage"] == stage] == [1, 2, 3, 4]
    assert resumed == metrics(clean)
    if tensorboard:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
        events.Reload()
        logged = [(e.step, e.value) for e in events.Scalars("val/loss")]
        assert logged == [(step, pytest.approx(r["val/loss"], rel=1e-6)) for step, r in enumerate(resumed, start=1)]


def test_second_process_on_the_same_run_refuses(lever, ws):
    from lever.io import file_lock
    from lever.runs.layout import RunsFolder
    from lever.spec import load_plan
    from lever.spec.workspace import load_workspace

    lp = load_plan(PLANS / "baseline.toml", FAST)
    run_dir = RunsFolder(load_workspace(os.environ["LEVER_WORKSPACE"]).runs_dir).run(lp.name, lp.hash, 0)
    with file_lock(run_dir.lock, wait=False, what="test"):
        # flock is per open file description: a second open in this process conflicts like another process would.
        res = run_cli(lever, "run", PLANS / "baseline.toml", *FAST, "--no-eval")
    assert res.code == 1 and "is being run by" in res.err


# Every plan (both families) validates and compiles in the fast tier (tests/test_spec.py); these run end
# to end in the slow tier: GRPO after RCE, a curriculum of phases, another reward and data file, and the
# original family's trainer (batch 1, a dropout mask per sequence) on a GRPO plan and a clip-only one.
@pytest.mark.slow
@pytest.mark.parametrize("plan", ["plan5", "plan9", "plan5_8", "original/plan5", "original/plan7"])
def test_representative_plans_run_with_reduced_epochs(lever, ws, plan):
    from lever.spec import load_plan

    lp = load_plan(PLANS / f"{plan}.toml")
    cut = ["rce.epochs=1", "eval.questions=20", "eval.shots=[1,2]", 'eval.splits=["val"]']
    if lp.plan.grpo.epochs:
        cut.append("grpo.epochs=2")
    cut += [f"phases.{i}.epochs=1" for i in range(len(lp.plan.phases))]
    res = run_cli(lever, "run", PLANS / f"{plan}.toml", *cut)
    assert res.code == 0, res.text
    (run_dir,) = seed_dirs(ws, plan)
    summary = next((run_dir / "eval").glob("*/summary.json"))
    acc = json.loads(summary.read_text())["splits"]["val"]
    assert set(acc) == {"1", "2"} and all(0 <= c["accuracy"] <= 100 and c["n"] == 20 for c in acc.values())


@pytest.mark.slow
def test_original_plan7_drifts_from_its_pre_rce_reference_and_is_flagged(lever, ws):
    """The original's plan 7 (reference = the model before RCE, dropout on) against lever's plan 7."""
    cut = ["rce.epochs=1", "grpo.epochs=2", "eval.questions=20", "eval.shots=[1,2]"]
    for plan in ("plan7", "original/plan7"):
        res = run_cli(lever, "run", PLANS / f"{plan}.toml", *cut)
        assert res.code == 0, res.text
    rows = {}
    for plan in ("plan7", "original/plan7"):
        (run_dir,) = seed_dirs(ws, plan)
        rows[plan] = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["stage"] == "grpo"]
        rows[plan + ":flags"] = json.loads((run_dir / "status.json").read_text())["flags"]
    lever_kl = max(r["kl/value"] for r in rows["plan7"])
    orig_kl = min(r["kl/value"] for r in rows["original/plan7"])
    assert lever_kl < 0.01 and orig_kl > 0.5 and orig_kl > 100 * lever_kl, (lever_kl, orig_kl)
    assert rows["plan7"][0]["policy/start_ratio"] == 1.0
    assert rows["original/plan7"][0]["policy/start_ratio"] > 1.25
    assert any("first-step PPO ratio" in f for f in rows["original/plan7:flags"])
    assert not any("first-step PPO ratio" in f for f in rows["plan7:flags"])
    # the two families side by side, by name
    res = run_cli(lever, "compare", "plan7", "original/plan7", "--baseline", "plan7", "--json")
    assert res.code == 0, res.text
    assert "original/plan7" in res.out


def test_the_originals_architecture_trains_and_evaluates(lever, ws):
    """model.arch = lever-plus-v3 through the whole loop: its checkpoints carry the original's names and evaluate."""
    from lever.train.checkpoint import load_weights

    res = run_cli(lever, "run", PLANS / "baseline.toml", *FAST, "rce.epochs=1", "model.arch=lever-plus-v3", "model.dropout=0.5")
    assert res.code == 0, res.text
    (run_dir,) = seed_dirs(ws, "baseline")
    from lever.runs.layout import RunDir

    assert "query_update_gate.weight" in load_weights(RunDir(run_dir).path_of(RunDir(run_dir).selected().checkpoint))
    summary = json.loads(next((run_dir / "eval").glob("*/summary.json")).read_text())
    assert set(summary["splits"]["val"]) == {"1", "2"}


@pytest.mark.parametrize("handoff,rce_epoch", [("selected", 1), ("last", 2)])
def test_grpo_starts_from_the_selected_or_the_last_rce_epoch(lever, ws, handoff, rce_epoch):
    # optim/lr, highest wins: with a cosine RCE schedule the selection is RCE epoch 1, not the last (2).
    # GRPO at lr 1e-12 leaves its start untouched, so its validation loss is its start's.
    res = run_cli(
        lever, "run", PLANS / "plan5.toml", *FAST, "grpo.epochs=1", "grpo.lr=1e-12", f"grpo.handoff={handoff}",
        "select.metric=optim/lr", "select.mode=max", "--no-eval",
    )  # fmt: skip
    assert res.code == 0, res.text
    (run_dir,) = seed_dirs(ws, "plan5")
    rows = read_jsonl(run_dir / "metrics.jsonl")
    rce = {r["epoch"]: r["val/loss"] for r in rows if r["stage"] == "rce"}
    (grpo,) = [r for r in rows if r["stage"] == "grpo"]
    assert rce[1] != rce[2] and grpo["val/loss"] == pytest.approx(rce[rce_epoch], abs=1e-6)


def test_adaptive_beta_and_beam_curriculum_show_in_metrics(lever, ws):
    res = run_cli(
        lever,
        "run",
        PLANS / "plan5.toml",
        *FAST,
        "grpo.epochs=3",
        "grpo.kl.adaptive.enabled=true",
        "grpo.kl.adaptive.low=1e-9",
        "grpo.kl.adaptive.high=1e-8",
        "--no-eval",
    )
    assert res.code == 0, res.text
    (run_dir,) = seed_dirs(ws, "plan5")
    grpo = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["stage"] == "grpo"]
    # KL > high after every epoch: beta grows x1.5 per epoch from 0.1 (logged before the update).
    assert [r["kl/beta"] for r in grpo] == pytest.approx([0.1, 0.15, 0.225])
    assert all(r["kl/value"] > 0 for r in grpo)
    # plan5's beam curriculum: top-3 sequences in epoch 1, top-5 after; rank-free z-scores of a group of
    # 3 tied rewards are 0, so the share of all-zero groups can only fall when more sequences join.
    assert grpo[0]["adv/zero_frac"] >= grpo[1]["adv/zero_frac"]
    status = json.loads((run_dir / "status.json").read_text())
    assert any("all-zero advantages" in f for f in status["flags"])


def test_start_from_another_plan_and_from_a_checkpoint_file(lever, ws, tmp_path):
    from lever.train.checkpoint import load_weights

    grpo_only = ["rce.epochs=0", "grpo.epochs=1", "grpo.top_k_schedule=[]", "eval.questions=20", "--no-eval"]
    res = run_cli(lever, "run", PLANS / "plan5.toml", "start.kind=plan", "start.plan=baseline", *grpo_only)
    assert res.code == 2 and "has no finished run" in res.err and "lever run" in res.err
    assert seed_dirs(ws, "plan5") == []  # a run that could not start leaves no run directory
    assert run_cli(lever, "run", PLANS / "baseline.toml", *FAST, "--no-eval").code == 0
    # The baseline's default rce settings differ from FAST, so name the run through the same overrides.
    (base,) = seed_dirs(ws, "baseline")
    selected = json.loads((base / "selected.json").read_text())
    ckpt = ws / "runs" / selected["checkpoint"]  # stored relative to the runs folder
    res = run_cli(lever, "run", PLANS / "plan5.toml", "start.kind=checkpoint", f"start.checkpoint={ckpt}", *grpo_only)
    assert res.code == 0, res.text
    (p5,) = seed_dirs(ws, "plan5")
    first = json.loads((p5 / "stages.json").read_text())[0]
    assert first["stage"] == "grpo"
    # GRPO's first epoch starts from the baseline's weights: its reference log-probs are the baseline's,
    # so the ratio starts at exactly 1 and KL at 0 before the first update.
    rows = read_jsonl(p5 / "metrics.jsonl")
    assert rows[0]["kl/value"] < 1e-3
    assert set(load_weights(ckpt)) == set(load_weights(ws / "runs" / first["checkpoint"]))
    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"not a checkpoint")
    res = run_cli(lever, "run", PLANS / "plan5.toml", "start.kind=checkpoint", f"start.checkpoint={bad}", *grpo_only)
    assert res.code == 2 and ".safetensors" in res.err


def test_several_seeds_compare_with_mean_and_std(lever, ws):
    seeds = ["seeds=[0,1]", *FAST, "eval.shots=[2]", "eval.questions=30"]
    res = run_cli(lever, "run", PLANS / "baseline.toml", PLANS / "plan10.toml", *seeds)  # two plans, one command
    assert res.code == 0, res.text
    assert len(seed_dirs(ws, "baseline")) == 2 and len(seed_dirs(ws, "plan10")) == 2
    assert "vs baseline" in res.out and "plan10" in res.out  # the closing table
    (p10,) = {d.parent.name for d in seed_dirs(ws, "plan10")}
    (base,) = {d.parent.name for d in seed_dirs(ws, "baseline")}
    # The plan files as they are now were never run: nothing to compare (exit 2, not a table of the baseline alone);
    # the error says so and names the runs that exist.
    out = run_cli(lever, "compare", PLANS / "plan10.toml", "--markdown")
    assert out.code == 2, out.text
    assert "no run of the plan file as it is now" in out.err and f"plan10@{p10} (overrides seeds=[0,1]" in out.err
    # Named by hash, the overridden runs are compared, and marked as made with overrides.
    out = run_cli(lever, "compare", f"plan10@{p10}", "--baseline", f"baseline@{base[:6]}", "--markdown")
    assert out.code == 0, out.text
    assert "±" in out.out and f"plan10@{p10}*" in out.out and "* plan10: overrides seeds=[0,1]" in out.out

    # lever leaderboard on the same runs: by default every evaluated plan (the workspace's folder has no plan files,
    # so each plan's only spec hash), ranked on the same 30 questions; named by hash, the same two rows.
    out = run_cli(lever, "leaderboard", "--resamples", "500")
    assert out.code == 0, out.text
    assert [line.split()[0] for line in out.out.splitlines()[3:5]] == ["baseline", "plan10"]
    out = run_cli(lever, "leaderboard", f"plan10@{p10}", f"baseline@{base}", "--json", "--resamples", "500")
    assert out.code == 0, out.text
    board = json.loads(out.out)
    (col,) = board["columns"]  # one shot count, so no mean column
    assert col["label"] == "2" and col["n_questions"] == 30 and set(col["entries"]) == {"plan10", "baseline"}
    assert {e["mark"] for e in col["entries"].values()} <= {"best", "tied", ""} and col["best"] in col["entries"]
    # Copy rate and majority vote, recomputed here from each seed's stored rows (answers, demonstrations' answers).
    from lever.eval.vqa import normalize_answer, vqa_accuracy
    from lever.report.copying import majority_vote
    from lever.runs.layout import RunDir

    for plan in ("plan10", "baseline"):
        copy, vote = [], []
        for d in seed_dirs(ws, plan):
            summary, rows = RunDir(d).selected_eval().read()
            rows = [r for r in rows if r["split"] == "val"]
            assert all(len(r["demo_answers"]) == len(r["demo_ids"]) == 2 for r in rows)
            answered = [r for r in rows if not r["failed"]]
            copy.append(
                sum(normalize_answer(r["answer"]) in map(normalize_answer, r["demo_answers"]) for r in answered) / len(answered)
            )
            vote.append(
                sum(vqa_accuracy(majority_vote(r["demo_answers"]), r["answers"], summary["metric"]) for r in rows) / len(rows)
            )
        entry = col["entries"][plan]
        assert entry["copy_rate"] == pytest.approx(100 * sum(copy) / 2) and entry["majority_vote"] == pytest.approx(
            100 * sum(vote) / 2
        )
    out = run_cli(lever, "compare", f"plan10@{p10}", "--baseline", f"baseline@{base}", "--resamples", "200")
    assert "Beyond copying (%) on val" in out.out and "plan10 copy" in out.out


def test_tables_use_the_selected_checkpoint_after_evaluating_another_epoch(lever, ws):
    from lever.runs.layout import RunDir

    args = [PLANS / "baseline.toml", *FAST]
    assert run_cli(lever, "run", *args).code == 0
    (run_dir,) = seed_dirs(ws, "baseline")
    (selected_eval,) = list((run_dir / "eval").glob("*/summary.json"))
    other = 1 if json.loads((run_dir / "selected.json").read_text())["epoch"] == 2 else 2
    res = run_cli(lever, "evaluate", *args, "--epoch", str(other))
    assert res.code == 0 and f"epoch {other} chosen with --epoch" in res.text
    assert len(list((run_dir / "eval").glob("*/summary.json"))) == 2
    assert RunDir(run_dir).selected_eval().path == selected_eval.parent  # the newer --epoch evaluation does not replace it
    bad = run_cli(lever, "evaluate", *args, "--epoch", "9")
    assert bad.code == 2 and "its epochs are 1-2" in bad.err


def test_unknown_selection_metric_fails_before_training(lever, ws):
    res = run_cli(lever, "run", PLANS / "baseline.toml", *FAST, "select.metric=losses/ppo", "--no-eval")
    assert res.code == 2 and "select.metric = 'losses/ppo'" in res.err and "val/loss" in res.err
    assert seed_dirs(ws, "baseline") == []


def test_a_checkpoint_that_does_not_fit_is_a_clear_error(lever, ws):
    assert run_cli(lever, "run", PLANS / "baseline.toml", *FAST, "--no-eval").code == 0
    (base,) = seed_dirs(ws, "baseline")
    ckpt = ws / "runs" / json.loads((base / "selected.json").read_text())["checkpoint"]
    res = run_cli(
        lever,
        "run",
        PLANS / "plan5.toml",
        "start.kind=checkpoint",
        f"start.checkpoint={ckpt}",
        "model.hidden=128",
        "rce.epochs=0",
        "grpo.epochs=1",
        "--no-eval",
    )
    assert res.code == 2 and "does not fit the plan's model" in res.err and "Traceback" not in res.text
