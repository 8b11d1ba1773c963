"""Settings that reproduce the original trainer, and the two fixes that came with them, against hand-worked values."""

from __future__ import annotations

import math

import pytest
import torch
from test_losses import ppo_loss

from lever.data.reader import load_candidates
from lever.data.rewards import compute_rewards, raw_rewards
from lever.data.synthetic import synthetic_records, write_records
from lever.model import LeverPlusV3Selector, PointerSelector, build_selector
from lever.spec.schema import AdaptiveKL, GRPOSpec, KLSpec, ModelSpec, RCESpec, RewardSpec, SelectSpec
from lever.train import losses as L
from lever.train.checkpoint import load_weights, save_weights, state_of
from lever.train.folder import handoff_checkpoint
from lever.train.groups import Batch, Groups
from lever.train.grpo import grpo_flags
from lever.train.objectives import rce_rewards
from lever.train.stage import SilentReporter, Stage, StageRunner, lr_scale


def batch(raw: list[list[float]], rewards: list[list[float]]) -> Batch:
    """A batch of one query: only the rewards matter here."""
    B, G = len(raw), len(raw[0])
    return Batch(
        query=torch.zeros(B, 4), pool=torch.zeros(B, 3, 4), pool_mask=torch.ones(B, 3, dtype=torch.bool),
        pointers=torch.zeros(B, G, 2, dtype=torch.long), rewards=torch.tensor(rewards), raw=torch.tensor(raw),
        seq=torch.arange(B * G).view(B, G), mask=torch.ones(B, G, dtype=torch.bool),
    )  # fmt: skip


# ---- fix: rce.rewards = "raw" reads the raw rewards whatever reward.normalize says ----------


def test_rce_raw_rewards_ignore_reward_normalize():
    # raw [2, 0]; reward.normalize = "zscore" made them [0.7071, -0.7071] (sample std sqrt(2))
    b = batch([[2.0, 0.0]], [[0.70710678, -0.70710678]])
    assert rce_rewards(b, "raw", 0.1).tolist() == [[2.0, 0.0]]
    # tau = 1, logp = [-1, -2]: w = softmax([2, 0]) = [0.880797, 0.119203]; loss = 0.880797 + 2 * 0.119203
    logp = torch.tensor([[-1.0, -2.0]])
    assert float(L.rce_loss(logp, rce_rewards(b, "raw", 0.1), b.mask, 1.0)) == pytest.approx(1.119203, abs=1e-6)
    # "normalized": the z-score of the raw rewards, w = softmax([0.7071, -0.7071]) = [0.804420, 0.195580]
    z = rce_rewards(b, "normalized", 0.1)
    assert z[0].tolist() == pytest.approx([1 / math.sqrt(2), -1 / math.sqrt(2)], abs=1e-6)
    assert float(L.rce_loss(logp, z, b.mask, 1.0)) == pytest.approx(0.804420 + 2 * 0.195580, abs=1e-5)
    # "original": no floor, clamped at 3; here the same z-scores
    assert rce_rewards(b, "original", 0.1)[0].tolist() == pytest.approx([1 / math.sqrt(2), -1 / math.sqrt(2)], abs=1e-6)
    # a close group: the floor 0.1 binds for "normalized", not for "original" (std 0.0707: z = +-0.7071)
    close = batch([[1.0, 0.9]], [[0.0, 0.0]])
    assert rce_rewards(close, "normalized", 0.1)[0].tolist() == pytest.approx([0.5, -0.5], abs=1e-6)
    assert rce_rewards(close, "original", 0.1)[0].tolist() == pytest.approx([1 / math.sqrt(2), -1 / math.sqrt(2)], abs=1e-5)


# ---- two-stage advantages (advantage.normalization = "original") ------------------------


def test_two_stage_advantage_small_group():
    # r = [2, 1, 0, 0, 1.5]: mean 0.9, deviations [1.1, 0.1, -0.9, -0.9, 0.6], sum of squares 3.2,
    # sample std sqrt(3.2 / 4) = 0.894427 -> z = [1.229837, 0.111803, -1.006231, -1.006231, 0.670820]
    r = torch.tensor([[2.0, 1.0, 0.0, 0.0, 1.5]], dtype=torch.float64)
    m = torch.ones(1, 5, dtype=torch.bool)
    z = L.group_zscore_clamped(r, m, 3.0)
    assert z[0].tolist() == pytest.approx([1.229837, 0.111803, -1.006231, -1.006231, 0.670820], abs=1e-6)
    # top-3 by z: sequences 0, 4, 1; their z have mean 0.670820 and sample std 0.559017 -> A = [1, -1, 0]
    adv, kept = L.two_stage_advantages(r, m, 3)
    assert kept[0].tolist() == [True, True, False, False, True]
    assert adv[0].tolist() == pytest.approx([1.0, -1.0, 0.0, 0.0, 0.0], abs=1e-9)


def test_two_stage_floor_is_in_z_units():
    # r = [1.0, 1.05, 0, 0], top-2. lever: kept rewards [1.0, 1.05], sample std 0.035355 < 0.1, so
    # A = +-0.025 / 0.1 = +-0.25. original: z = [0.823290, 0.907730, -0.865510, -0.865510] (mean 0.5125,
    # std 0.592136), kept z differ by 0.084440: std 0.059708 < 0.1, so A = +-0.042220 / 0.1 = +-0.422200.
    r = torch.tensor([[1.0, 1.05, 0.0, 0.0]], dtype=torch.float64)
    m = torch.ones(1, 4, dtype=torch.bool)
    lever = L.group_advantages(r, L.top_k_mask(r, m, 2), "zscore", 0.1)
    assert lever[0].tolist() == pytest.approx([-0.25, 0.25, 0.0, 0.0], abs=1e-9)
    adv, _ = L.two_stage_advantages(r, m, 2, std_floor=0.1)
    assert adv[0].tolist() == pytest.approx([-0.422200, 0.422200, 0.0, 0.0], abs=1e-6)


def test_stage_one_clamps_and_ignores_padding():
    # r = [10, 0 x 19]: mean 0.5, sample std sqrt((90.25 + 19 * 0.25) / 19) = sqrt(5) -> z_0 = 9.5 / 2.236068 = 4.2485 -> 3
    r = torch.zeros(2, 20, dtype=torch.float64)
    r[0, 0] = 10.0
    r[1] = 99.0  # padding garbage, except the first two
    r[1, :2] = torch.tensor([1.0, 1.0])  # a constant group: z = 0
    m = torch.zeros(2, 20, dtype=torch.bool)
    m[0], m[1, :2] = True, True
    z = L.group_zscore_clamped(r, m, 3.0)
    assert float(z[0, 0]) == 3.0 and float(z[0, 1]) == pytest.approx(-0.5 / math.sqrt(5))
    assert z[1].abs().sum() == 0


# ---- top-k tie order ---------------------------------------------------------------------


def test_top_k_tie_order():
    r = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    m = torch.ones(1, 4, dtype=torch.bool)
    assert L.top_k_mask(r, m, 2, "index")[0].tolist() == [True, True, False, False]  # lower index first
    topk = L.top_k_mask(r, m, 2, "topk")
    assert set(torch.nonzero(topk[0]).squeeze(-1).tolist()) == set(r.topk(2).indices[0].tolist())
    assert topk[0].tolist() == [False, True, True, False]  # torch.topk's choice on the pinned torch
    # padding never makes it, even when k exceeds the group
    r2, m2 = torch.tensor([[0.5, 7.0, 7.0]]), torch.tensor([[True, False, False]])
    assert L.top_k_mask(r2, m2, 3, "topk")[0].tolist() == [True, False, False]


# ---- PPO diagnostics ---------------------------------------------------------------------


def test_clip_frac_pos_counts_positive_terms_clipped():
    # ratios [1.5, 1.1, 1.5, 0.5], A [1, 1, -1, -1], eps 0.2: A>0 terms: 1.5 clipped (no gradient), 1.1 not;
    # A<0 terms: 1.5 not clipped (min takes 1.5 * -1), 0.5 clipped (below 0.8).
    ratio = torch.tensor([[1.5, 1.1, 1.5, 0.5]], dtype=torch.float64)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]], dtype=torch.float64)
    m = torch.ones(1, 4, dtype=torch.bool)
    _, st = ppo_loss(ratio.log(), torch.zeros_like(ratio), adv, m)
    assert st["clip_frac"] == pytest.approx(0.5) and st["clip_frac_pos"] == pytest.approx(0.5)


# ---- per-sequence dropout masks ------------------------------------------------------------


def _inputs(B: int = 1, K: int = 6, d: int = 8):
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, d, generator=g), torch.randn(B, K, d, generator=g), torch.ones(B, K, dtype=torch.bool)


@pytest.mark.parametrize("arch", [PointerSelector, LeverPlusV3Selector])
def test_dropout_mask_per_sequence_or_per_group(arch):
    q, pool, pm = _inputs()
    same = torch.tensor([[[0, 1], [0, 1], [0, 1]]])  # one sequence three times
    mask = torch.ones(1, 3, dtype=torch.bool)
    for kind, differ in (("group", False), ("sequence", True)):
        torch.manual_seed(0)
        model = arch(d_in=8, hidden=8, dropout=0.5, attn_dropout=0.0, dropout_mask=kind)
        model.train()
        logp = model.score_sequences(q, pool, pm, same, mask)[0]
        assert (len(set(logp.tolist())) > 1) == differ, (kind, logp)
        model.eval()  # no dropout: one value, whatever the mask rule
        ev = model.score_sequences(q, pool, pm, same, mask)[0]
        assert len(set(ev.tolist())) == 1
        assert torch.allclose(ev, model.sequence_logprobs(model.encode(q, pool, pm), same, mask)[0])


# ---- the original's architecture ---------------------------------------------------------

# The original's state dict at d = 512, hidden 256, one layer: names and shapes.
ORIGINAL_STATE = {
    "input_proj.weight": (256, 512),
    "cross_attn_layers.0.in_proj_weight": (768, 256),
    "cross_attn_layers.0.in_proj_bias": (768,),
    "cross_attn_layers.0.out_proj.weight": (256, 256),
    "cross_attn_layers.0.out_proj.bias": (256,),
    "attn_norms.0.weight": (256,),
    "attn_norms.0.bias": (256,),
    "query_proj.weight": (256, 256),
    "cand_proj.weight": (256, 256),
    "query_update_gate.weight": (256, 512),
    "query_update_gate.bias": (256,),
}


def test_lever_plus_v3_state_dict_round_trip(tmp_path):
    model = build_selector(512, ModelSpec(arch="lever-plus-v3"))
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == ORIGINAL_STATE  # exports as the original's
    # an original checkpoint (its names, random weights) loads strictly, and survives lever's checkpoint files
    g = torch.Generator().manual_seed(1)
    theirs = {k: 0.05 * torch.randn(shape, generator=g) for k, shape in ORIGINAL_STATE.items()}
    model.load_state_dict(theirs, strict=True)
    save_weights(tmp_path / "w.safetensors", state_of(model), {})
    again = build_selector(512, ModelSpec(arch="lever-plus-v3"))
    again.load_state_dict(load_weights(tmp_path / "w.safetensors"), strict=True)
    q, pool, pm = _inputs(2, 5, 512)
    ptr, m = torch.tensor([[[0, 1], [2, 3]], [[4, 0], [1, 2]]]), torch.ones(2, 2, dtype=torch.bool)
    model.eval(), again.eval()
    assert torch.equal(model.score_sequences(q, pool, pm, ptr, m), again.score_sequences(q, pool, pm, ptr, m))


def test_lever_plus_v3_computes_the_original_formula():
    """Two steps of the original's forward written out: attention, residual + LayerNorm, projections, gate."""
    torch.manual_seed(0)
    model = LeverPlusV3Selector(d_in=6, hidden=4, dropout=0.0, attn_dropout=0.0).eval()
    sd = {k: v.double() for k, v in model.state_dict().items()}
    q_in, pool, pm = (x.double() if x.is_floating_point() else x for x in _inputs(1, 5, 6))
    model.double()
    P = sd["input_proj.weight"]
    q, c = q_in[0] @ P.T, pool[0] @ P.T  # [h], [K, h]
    Wq, Wk, Wv = sd["cross_attn_layers.0.in_proj_weight"].chunk(3)
    bq, bk, bv = sd["cross_attn_layers.0.in_proj_bias"].chunk(3)
    a = torch.softmax((c @ Wk.T + bk) @ (Wq @ q + bq) / 2.0, dim=0)  # sqrt(h) = 2
    attn = sd["cross_attn_layers.0.out_proj.weight"] @ (a @ (c @ Wv.T + bv)) + sd["cross_attn_layers.0.out_proj.bias"]
    x = torch.nn.functional.layer_norm(q + attn, (4,), sd["attn_norms.0.weight"], sd["attn_norms.0.bias"])
    qs = torch.nn.functional.normalize(sd["query_proj.weight"] @ x, dim=0)
    cs = torch.nn.functional.normalize(c @ sd["cand_proj.weight"].T, dim=-1)
    step1 = torch.log_softmax(cs @ qs / 0.1, dim=0)
    gate = torch.sigmoid(sd["query_update_gate.weight"] @ torch.cat([qs, cs[3]]) + sd["query_update_gate.bias"])
    qs2 = torch.nn.functional.normalize(gate * qs + (1 - gate) * cs[3], dim=0)
    s2 = cs @ qs2 / 0.1
    s2[3] = float("-inf")
    want = step1[3] + torch.log_softmax(s2, dim=0)[1]
    got = model.score_sequences(q_in, pool, pm, torch.tensor([[[3, 1]]]), torch.ones(1, 1, dtype=torch.bool))
    assert float(got.detach()) == pytest.approx(float(want), abs=1e-9)


def test_model_settings_validate():
    # proj_bias and init shape lever's architecture; the original's has them fixed
    keys = build_selector(8, ModelSpec(arch="lever-plus-v3", hidden=8)).state_dict()
    assert "query_proj.bias" not in keys and "cand_proj.bias" not in keys
    m = PointerSelector(d_in=8, hidden=8, proj_bias=False, init="xavier")
    assert m.query_proj.bias is None and m.cand_proj.bias is None and float(m.gate.bias.detach().abs().sum()) == 0


# ---- batch size / learning rate, hand-off, flags -----------------------------------------


def test_lr_scaling_and_handoff(tmp_path):
    from lever.records import RowsRecord, StageSelection
    from lever.train.checkpoint import epoch_digest
    from lever.train.stage import checkpoint_path

    assert lr_scale(RCESpec(batch_size=16)) == 1.0
    assert lr_scale(RCESpec(batch_size=16, lr_scaling="sqrt")) == 4.0
    assert lr_scale(RCESpec(batch_size=16, lr_scaling="linear")) == 16.0
    rows = [{"epoch": 1}, {"epoch": 2}, {"epoch": 3}]
    for e in (1, 2, 3):
        save_weights(checkpoint_path(tmp_path, e), {"w": torch.full((1,), float(e))}, {"epoch": e})
    digest = epoch_digest(checkpoint_path(tmp_path, 2), 2)
    sel = StageSelection("rce", 2, "val/loss", "min", 0.5, "why", digest, RowsRecord(3, ""))
    assert handoff_checkpoint(tmp_path, sel, rows, "selected")["w"].item() == 2.0
    assert handoff_checkpoint(tmp_path, sel, rows, "last")["w"].item() == 3.0


def test_a_phase_sets_its_own_handoff():
    """original/plan9: phase 1 starts from RCE's last epoch (grpo.handoff), phase 2 from phase 1's best."""
    from pathlib import Path

    from lever.spec.load import load_plan

    plans = Path(__file__).resolve().parents[1] / "plans"
    lp = load_plan(plans / "original" / "plan9.toml", plans_dir=plans)
    stages = {stage.name: stage for stage in lp.plan.stages()}
    assert lp.plan.grpo.handoff == "last"
    assert stages["easy"].opt.handoff == "last" and stages["all"].opt.handoff == "selected"
    assert stages["all"].opt.model_copy(update={"handoff": "last"}) == stages["easy"].opt  # nothing else differs


def test_grpo_flags():
    calm = [{"epoch": 1, "policy/start_ratio": 1.0, "policy/clip_frac_pos": 0.1}]
    assert grpo_flags("grpo", calm) == []
    far = [
        {"epoch": 1, "policy/start_ratio": 2.4, "policy/clip_frac_pos": 0.9},
        {"epoch": 2, "policy/start_ratio": 2.4, "policy/clip_frac_pos": 0.3},
    ]
    flags = grpo_flags("grpo", far)
    assert len(flags) == 2 and "2.40 is far from 1" in flags[0] and "1 of 2 epochs" in flags[1]


# ---- KL adaptation per step, policy mode, start ratio (a tiny stage) -----------------------


def _stage(tmp_path, **grpo):
    recs = synthetic_records(queries=6, group=6, pool=10, shots=2, seed=0)
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = load_candidates(write_records(tmp_path / "d.json", recs), log=lambda m: None)
    feats = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))  # rows = every id the file uses
    spec = RewardSpec()
    groups = Groups(data, compute_rewards(data, spec), raw_rewards(data, spec), feats)
    opt = GRPOSpec(epochs=1, batch_size=2, **grpo)  # 6 queries: 3 steps
    torch.manual_seed(0)
    model = PointerSelector(d_in=8, hidden=8, dropout=0.1)
    runner = StageRunner(Stage("grpo", "grpo", 1, opt), tmp_path / "s", model, groups, groups, 0, SelectSpec(), SilentReporter())
    return runner.run().rows[0]


@pytest.mark.parametrize("cadence,beta", [("epoch", 0.1), ("step", 0.1 * 1.5**3)])
def test_adaptive_kl_per_step_or_per_epoch(tmp_path, cadence, beta):
    # KL > high = 1e-8 at every step (dropout on): per step, beta grows x1.5 three times within the epoch;
    # per epoch, the row shows the beta the epoch used (0.1), the update comes after it.
    adaptive = AdaptiveKL(enabled=True, low=1e-9, high=1e-8, cadence=cadence)
    row = _stage(tmp_path, policy_mode="train", kl=KLSpec(beta=0.1, adaptive=adaptive, max_kl=1e9))
    assert row["kl/value"] > 1e-8
    assert row["kl/beta"] == pytest.approx(beta)


def test_policy_mode_and_start_ratio(tmp_path):
    ev = _stage(tmp_path / "eval")
    assert ev["policy/start_ratio"] == 1.0 and ev["policy/first_step_ratio"] == pytest.approx(1.0)
    tr = _stage(tmp_path / "train", policy_mode="train", kl=KLSpec(max_kl=1e9))  # dropout against an eval-mode reference
    assert tr["policy/start_ratio"] != pytest.approx(1.0, abs=1e-3)
