"""The fused selector node (lever/model/fused.py) against the autograd path it replaces in training."""

from __future__ import annotations

import pytest
import torch

from lever.model import PointerSelector
from lever.model import fused as fused_mod
from lever.train import losses as L


def case(B=3, K=7, G=4, L_=3, d_in=12, seed=0, pad=True):
    g = torch.Generator().manual_seed(seed)
    query, pool = torch.randn(B, d_in, generator=g), torch.randn(B, K, d_in, generator=g)
    pool_mask = torch.ones(B, K, dtype=torch.bool)
    seq_mask = torch.ones(B, G, dtype=torch.bool)
    if pad:
        pool_mask[0, -2:] = False  # a padded pool
        seq_mask[1, -1] = False  # a padded sequence (its pointers are garbage)
        seq_mask[-1, 1:] = False
    real = int(pool_mask[0].sum())
    pointers = torch.stack([torch.stack([torch.randperm(real, generator=g)[:L_] for _ in range(G)]) for _ in range(B)])
    if pad:
        pointers[1, -1] = -1
    rewards = torch.rand(B, G, generator=g)
    return query, pool, pool_mask, pointers, seq_mask, rewards


def both(model: PointerSelector, inputs, seed=5):
    """(logp, loss, grads) from the fused node and from the autograd path, with the same dropout draws."""
    query, pool, pool_mask, pointers, seq_mask, rewards = inputs
    out = []
    for use in (True, False):
        model.fused = use
        model.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        logp = model.score_sequences(query, pool, pool_mask, pointers, seq_mask)
        loss = L.rce_loss(logp, rewards, seq_mask, 0.7)
        loss.backward()
        out.append((logp.detach(), loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    model.fused = True
    return out


@pytest.mark.parametrize(
    "kw",
    [
        dict(),  # lever's defaults, dropout on
        dict(heads=2, layers=2),
        dict(proj_bias=False, init="xavier", dropout=0.0),
        dict(heads=4, layers=1, dropout=0.3),
    ],
)
def test_fused_equals_autograd(kw):
    torch.manual_seed(1)
    model = PointerSelector(d_in=12, hidden=8, **kw).train()
    inputs = case()
    (lp_f, loss_f, g_f), (lp_a, loss_a, g_a) = both(model, inputs)
    assert fused_mod.applies(model, inputs[0])
    torch.testing.assert_close(lp_f, lp_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss_f, loss_a, rtol=1e-5, atol=1e-6)
    assert g_f.keys() == g_a.keys()
    for name in g_a:
        assert g_a[name] is not None and g_a[name].abs().sum() > 0, name  # every parameter gets a gradient
        torch.testing.assert_close(g_f[name], g_a[name], rtol=1e-4, atol=1e-6, msg=name)


def test_fused_one_shot_and_eval_mode():
    torch.manual_seed(2)
    model = PointerSelector(d_in=12, hidden=8).eval()  # GRPO's policy mode: no dropout
    inputs = case(L_=1, pad=False)
    (lp_f, _, g_f), (lp_a, _, g_a) = both(model, inputs)
    torch.testing.assert_close(lp_f, lp_a, rtol=1e-5, atol=1e-5)
    for name in g_a:
        torch.testing.assert_close(g_f[name], g_a[name], rtol=1e-4, atol=1e-6, msg=name)


def test_fused_frozen_backbone_gives_no_backbone_gradients():
    torch.manual_seed(3)
    model = PointerSelector(d_in=12, hidden=8).train()
    model.set_backbone_frozen(True)
    (_, _, g_f), (_, _, g_a) = both(model, case())
    for name, grad in g_a.items():
        if grad is None:
            assert g_f[name] is None, name
        else:
            torch.testing.assert_close(g_f[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert g_f["input_proj.weight"] is None and g_f["gate.weight"] is not None


def test_fused_applies_only_where_it_is_exact():
    q = torch.zeros(1, 12)
    model = PointerSelector(d_in=12, hidden=8).train()
    assert fused_mod.applies(model, q)
    assert not fused_mod.applies(PointerSelector(d_in=12, hidden=8, attn_dropout=0.1).train(), q)
    assert not fused_mod.applies(PointerSelector(d_in=12, hidden=8, dropout_mask="sequence").train(), q)
    assert fused_mod.applies(PointerSelector(d_in=12, hidden=8, dropout_mask="sequence").eval(), q)  # no masks to draw
    with torch.no_grad():
        assert not fused_mod.applies(model, q)  # nothing to differentiate: the plain path
    assert not fused_mod.applies(model, q.double())
    model.fused = False
    assert not fused_mod.applies(model, q)


def test_fused_gradients_match_finite_differences():
    """The hand-written backward against torch's numerical check, in float64 on a tiny model."""
    torch.manual_seed(4)
    model = PointerSelector(d_in=5, hidden=4, heads=2, dropout=0.0).double().train()
    query, pool, pool_mask, pointers, seq_mask, _ = case(B=2, K=5, G=3, L_=2, d_in=5)
    x = torch.cat([query.unsqueeze(1), pool], 1).double()
    params = [p for p in model.parameters()]

    def f(*ps):
        return fused_mod._Scores.apply(model, x, pool_mask, pointers, seq_mask, *ps)

    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("policy_mode", ["eval", "train"])
def test_fused_equals_autograd_through_the_grpo_loss(tmp_path, policy_mode):
    """The stage's own GRPO loss (top-k re-padded groups, PPO + KL against stored reference log-probs),
    dropout on in train mode: the same gradient either way, step by step."""
    from lever.data.reader import load_candidates
    from lever.data.rewards import compute_rewards, raw_rewards
    from lever.data.synthetic import synthetic_records, write_records
    from lever.spec.schema import CurriculumStep, GRPOSpec, RewardSpec, SelectSpec
    from lever.train.groups import Groups
    from lever.train.stage import SilentReporter, Stage, StageRunner

    recs = synthetic_records(queries=6, group=6, pool=10, shots=2, seed=0)
    data = load_candidates(write_records(tmp_path / "d.json", recs), log=lambda m: None)
    feats = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    groups = Groups(data, compute_rewards(data, RewardSpec()), raw_rewards(data, RewardSpec()), feats)
    opt = GRPOSpec(epochs=1, batch_size=2, policy_mode=policy_mode, top_k_schedule=[CurriculumStep(from_epoch=1, top_k=4)])
    torch.manual_seed(0)
    model = PointerSelector(d_in=8, hidden=8, dropout=0.1)
    runner = StageRunner(Stage("grpo", "grpo", 1, opt), tmp_path / "s", model, groups, groups, 0, SelectSpec(), SilentReporter())
    objective = runner.objective
    objective.start()
    objective.reference.logp = objective.reference.logp + 0.1 * torch.randn(data.num_sequences)  # ratios away from 1
    objective.begin_epoch(1)
    model.train(policy_mode == "train")
    assert fused_mod.applies(model, groups.features)
    for b in groups.batches(torch.arange(groups.num_queries), 2):
        grads = []
        for use in (True, False):
            model.fused = use
            model.zero_grad(set_to_none=True)
            torch.manual_seed(7)  # the same dropout draws
            loss, _ = objective.loss(b, 0)
            loss.backward()
            grads.append({n: p.grad for n, p in model.named_parameters()})
        for name, grad in grads[1].items():
            assert grad is not None, name
            # relative to the tensor's largest entry: gradients here reach ~400 next to entries near 0
            assert float((grads[0][name] - grad).abs().max()) <= 1e-5 * float(grad.abs().max()), name
