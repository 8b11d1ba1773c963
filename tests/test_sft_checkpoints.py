"""The supervised stage (`sft`) and the original's checkpoints both ways."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from workspaces import bench_workspace  # noqa: E402

from lever.io import read_jsonl
from lever.train.checkpoint import load_weights

ROOT = Path(__file__).resolve().parents[1]
PLANS = ROOT / "plans"
FAST = ["rce.batch_size=16", "eval.questions=20", "eval.shots=[1]", 'eval.splits=["val"]']


@pytest.fixture
def ws(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    return bench_workspace(tmp_path)


def cli(lever, ws, *args):
    res = lever("--workspace", ws, *args)
    assert res.code == 0, res.text
    return res


def test_sft_stage_trains_and_a_second_plan_starts_from_it(lever, ws, tmp_path):
    (tmp_path / "sft.toml").write_text(
        'description = "SFT only"\nextends = "%s"\n[sft]\nepochs = 2\nbatch_size = 16\n[rce]\nepochs = 0\n'
        % (PLANS / "baseline.toml")
    )
    (tmp_path / "after_sft.toml").write_text(
        'description = "RCE from the SFT plan"\nextends = "%s"\n[start]\nkind = "plan"\nplan = "sft"\n[rce]\nepochs = 1\n'
        % (PLANS / "baseline.toml")
    )
    cli(lever, ws, "run", tmp_path / "sft.toml", "--no-eval")  # no overrides: the start names the plan as it is
    (sft_run,) = sorted((tmp_path / "runs" / "sft").glob("*/seed-0"))
    rows = read_jsonl(sft_run / "metrics.jsonl")
    assert [r["stage"] for r in rows] == ["sft", "sft"] and all("losses/sft" in r for r in rows)
    assert rows[1]["losses/sft"] < rows[0]["losses/sft"]
    cli(lever, ws, "run", tmp_path / "after_sft.toml", *FAST, "rce.lr=1e-12", "--no-eval")
    (after,) = sorted((tmp_path / "runs" / "after_sft").glob("*/seed-0"))
    assert [s["stage"] for s in json.loads((after / "stages.json").read_text())] == ["rce"]
    # it started from the SFT plan's selected weights (an lr of 1e-12 leaves them as they were)
    (sft_entry,) = json.loads((sft_run / "stages.json").read_text())
    (rce_entry,) = json.loads((after / "stages.json").read_text())
    a = load_weights(tmp_path / "runs" / sft_entry["checkpoint"])
    b = load_weights(tmp_path / "runs" / rce_entry["checkpoint"])
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    shown = cli(lever, ws, "show", tmp_path / "sft.toml", "--json").out
    assert '"sft"' in shown


def _v3_plan(tmp_path: Path, name: str, extra: str = "") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'description = "{name}"\nextends = "{PLANS / "original" / "baseline.toml"}"\n[model]\ndropout_mask = "group"\n[rce]\nepochs = 1\nbatch_size = 32\n{extra}'
    )
    return path


def test_export_to_v2_and_start_from_it_gives_the_same_logits(lever, ws, tmp_path):
    from lever.model import build_selector
    from lever.spec import load_plan
    from lever.train.checkpoint import load_into
    from lever.train.original_ckpt import load_original

    src = _v3_plan(tmp_path, "v3")
    cli(lever, ws, "run", src, "--no-eval")
    out = tmp_path / "v3_v2format.ckpt"
    res = cli(lever, ws, "export", src, "--format", "lever-plus-v2", "-o", out)
    assert "lever-plus-v2" in res.text
    raw = torch.load(out, weights_only=True)  # plain types only: the original's inference and lever both read it safely
    assert {"epoch", "global_step", "state_dict", "hyper_parameters"} <= raw.keys()
    assert "lever_lm.pointer_selector.cross_attn.in_proj_weight" in raw["state_dict"]

    (entry,) = json.loads(next((tmp_path / "runs" / "v3").glob("*/seed-0/stages.json")).read_text())
    plan = load_plan(src).plan
    a, b = build_selector(512, plan.model), build_selector(512, plan.model)
    load_into(a, load_weights(tmp_path / "runs" / entry["checkpoint"]), "lever")
    state, fmt = load_original(out)
    load_into(b, state, "v2")
    assert fmt == "v2"
    g = torch.Generator().manual_seed(0)
    q, pool = torch.randn(3, 512, generator=g), torch.randn(3, 8, 512, generator=g)
    a.eval(), b.eval()
    pointers = torch.randint(0, 8, (3, 2, 2), generator=g)
    la = a.log_policy(a.encode(q, pool, None), pointers)
    lb = b.log_policy(b.encode(q, pool, None), pointers)
    assert torch.equal(la, lb)

    # a plan starts from it (format detected), and from the v3 layout too
    start = _v3_plan(tmp_path, "from_v2", f'[start]\nkind = "checkpoint"\ncheckpoint = "{out}"\n')
    cli(lever, ws, "run", start, "rce.lr=1e-12", "--no-eval")
    v3 = tmp_path / "v3.pth"
    torch.save({"model_state_dict": state, "epoch": 1}, v3)
    start3 = _v3_plan(tmp_path, "from_v3", f'[start]\nkind = "checkpoint"\ncheckpoint = "{v3}"\n')
    cli(lever, ws, "run", start3, "rce.lr=1e-12", "--no-eval")


def test_original_checkpoints_refused_with_the_reason(lever, ws, tmp_path):
    import argparse

    from lever.errors import LeverError
    from lever.model import build_selector
    from lever.spec import load_plan
    from lever.train.original_ckpt import head_settings, load_original, to_v2_keys

    plan = load_plan(_v3_plan(tmp_path, "v3")).plan
    state = {k: v.detach() for k, v in build_selector(512, plan.model).state_dict().items()}
    pickled = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": to_v2_keys(state), "hyper_parameters": argparse.Namespace(lr=1e-4)}, pickled)
    with pytest.raises(LeverError, match="pickled objects"):
        load_original(pickled)
    assert load_original(pickled, trust=True)[1] == "v2"
    start = _v3_plan(tmp_path, "p", f'[start]\nkind = "checkpoint"\ncheckpoint = "{pickled}"\n')
    res = lever("--workspace", ws, "run", start, "--no-eval")
    assert res.code == 2 and "start.trust_pickle = true" in res.text
    cli(lever, ws, "run", start, "start.trust_pickle=true", "--no-eval")

    no_gate = tmp_path / "nogate.pth"
    torch.save({k: v for k, v in state.items() if "gate" not in k}, no_gate)
    # The original's V2 before its V4-1 (no gate, no GRU): a static query, model.update = "none".
    assert head_settings(load_original(no_gate)[0])["update"] == "none"
    res = lever(
        "--workspace",
        ws,
        "run",
        _v3_plan(tmp_path, "ng", f'[start]\nkind = "checkpoint"\ncheckpoint = "{no_gate}"\n'),
        "--no-eval",
    )
    assert res.code == 2 and 'model.update = "none"' in res.text, res.text
    other = tmp_path / "other.pth"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(LeverError, match="not one of the original's selector checkpoints"):
        load_original(other)
    res = lever(
        "--workspace", ws, "run", PLANS / "baseline.toml", "start.kind=checkpoint", f"start.checkpoint={other}", "--no-eval"
    )
    assert res.code == 2 and "model.arch = 'lever-plus-v3'" in res.text
    deep = build_selector(512, plan.model.model_copy(update={"layers": 2}))
    with pytest.raises(LeverError, match="exactly one"):
        to_v2_keys(deep.state_dict())
    res = lever("--workspace", ws, "export", PLANS / "baseline.toml", "-o", tmp_path / "x.ckpt")
    assert res.code == 2 and "cannot be written in the original's layout" in res.text


def test_export_to_v3_keeps_every_layer_and_a_plan_started_from_it_has_the_same_logits(lever, ws, tmp_path):
    from lever.model import build_selector
    from lever.recipe import Recipe
    from lever.recipe.train import start_state
    from lever.spec import load_plan, load_workspace
    from lever.train.checkpoint import load_into

    src = _v3_plan(tmp_path, "deep")
    src.write_text(src.read_text().replace('dropout_mask = "group"', 'dropout_mask = "group"\nlayers = 2'))
    cli(lever, ws, "run", src, "--no-eval")
    v2 = lever("--workspace", ws, "export", src, "--format", "lever-plus-v2", "-o", tmp_path / "deep_v2.ckpt")
    assert v2.code == 2 and "exactly one" in v2.text  # v2 holds one attention layer
    out = tmp_path / "deep_v3.pt"
    res = cli(lever, ws, "export", src, "--format", "lever-plus-v3", "-o", out)
    assert "lever-plus-v3" in res.text
    raw = torch.load(out, weights_only=True)  # plain types only
    assert set(raw) == {"epoch", "phase", "model_state_dict", "kl_beta", "metrics"}  # the original's trainer's file
    (entry,) = json.loads(next((tmp_path / "runs" / "deep").glob("*/seed-0/stages.json")).read_text())
    assert (raw["epoch"], raw["phase"], raw["kl_beta"]) == (entry["epoch"] - 1, "rce", 0.0)  # its epochs count from 0
    trained = load_weights(tmp_path / "runs" / entry["checkpoint"])
    assert set(raw["model_state_dict"]) == set(trained)  # name for name, layer 1 included
    assert "cross_attn_layers.1.in_proj_weight" in raw["model_state_dict"]

    # a plan that starts from the export (start.kind = "checkpoint"), through the run's own start path
    start = _v3_plan(tmp_path, "from_deep", f'[start]\nkind = "checkpoint"\ncheckpoint = "{out}"\n')
    start.write_text(start.read_text().replace('dropout_mask = "group"', 'dropout_mask = "group"\nlayers = 2'))
    lp = load_plan(start)
    plan = lp.plan
    a, b = build_selector(512, plan.model), build_selector(512, plan.model)
    load_into(a, trained, "lever")
    start_state(Recipe.build(lp, load_workspace(ws), 0, lambda m: None), b)
    g = torch.Generator().manual_seed(0)
    q, pool = torch.randn(3, 512, generator=g), torch.randn(3, 8, 512, generator=g)
    a.eval(), b.eval()
    pointers = torch.randint(0, 8, (3, 2, 2), generator=g)
    assert torch.equal(a.log_policy(a.encode(q, pool, None), pointers), b.log_policy(b.encode(q, pool, None), pointers))
    cli(lever, ws, "run", start, "rce.lr=1e-12", "--no-eval")  # and it trains
