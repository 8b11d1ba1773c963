"""The original's V4 heads (lever/model/heads.py): shapes, masking, hand-worked scores, gradients, the original's
state-dict names both ways, and STOP at evaluation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lever.eval.select import demo_rows, select_demos
from lever.model import LeverPlusV3Selector, PointerSelector
from lever.model.heads import HeadConfig
from lever.runs.layout import summarise
from lever.train.original_ckpt import head_settings, load_original, save_v2, save_v3

D, H, K = 6, 4, 5

# The kept heads as the original's plans set them (V4-1 .. V4-10), plus the pieces on lever's own selector.
HEADS = {
    "v4_1": HeadConfig(),
    "v4_2": HeadConfig(update="gru", step_emb=True),
    "v4_3": HeadConfig(update="gru", step_emb=True, diversity="mmr"),
    "v4_5": HeadConfig(update="gru", step_emb=True, scoring="additive"),
    "v4_5_bilinear": HeadConfig(update="gru", step_emb=True, scoring="bilinear"),
    "v4_10": HeadConfig(update="gru", step_emb=True, stop=True),
    "static_mean_mmr": HeadConfig(update="none", diversity="mmr", mmr_reduction="mean"),
}

# Every V4 parameter with its shape in the original's files (pointer_selector_v4_*.py), at hidden h and 2 steps.
ORIGINAL_SHAPES = {
    "query_update_gate.weight": (H, 2 * H),
    "query_update_gate.bias": (H,),
    "decoder_gru.weight_ih": (3 * H, H),
    "decoder_gru.weight_hh": (3 * H, H),
    "decoder_gru.bias_ih": (3 * H,),
    "decoder_gru.bias_hh": (3 * H,),
    "step_emb.weight": (2, H),
    "div_lambda": (2,),
    "attn_Wq.weight": (H, H),
    "attn_Wq.bias": (H,),
    "attn_Wc.weight": (H, H),
    "attn_v.weight": (1, H),
    "bilinear.weight": (1, H, H),
    "stop_token": (1, H),
}
ORIGINAL_KEYS = {
    "v4_1": {"query_update_gate.weight", "query_update_gate.bias"},
    "v4_2": {"decoder_gru.weight_ih", "decoder_gru.weight_hh", "decoder_gru.bias_ih", "decoder_gru.bias_hh", "step_emb.weight"},
}
ORIGINAL_KEYS["v4_3"] = ORIGINAL_KEYS["v4_2"] | {"div_lambda"}
ORIGINAL_KEYS["v4_5"] = ORIGINAL_KEYS["v4_2"] | {"attn_Wq.weight", "attn_Wq.bias", "attn_Wc.weight", "attn_v.weight"}
ORIGINAL_KEYS["v4_5_bilinear"] = ORIGINAL_KEYS["v4_2"] | {"bilinear.weight"}
ORIGINAL_KEYS["v4_10"] = ORIGINAL_KEYS["v4_2"] | {"stop_token"}
BACKBONE = {"input_proj.weight", "query_proj.weight", "cand_proj.weight", "attn_norms.0.weight", "attn_norms.0.bias"}
BACKBONE |= {f"cross_attn_layers.0.{k}" for k in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")}


def make(cfg: HeadConfig, arch=LeverPlusV3Selector, seed: int = 0):
    torch.manual_seed(seed)
    return arch(D, H, 1, 1, 0.0, 0.1, 0.0, "group", head_config=cfg).eval()


def inputs(B: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g), torch.randn(B, K, D, generator=g)


@pytest.mark.parametrize("name", list(HEADS))
@pytest.mark.parametrize("arch", [LeverPlusV3Selector, PointerSelector])
def test_shapes_and_picked_items_are_masked(name, arch):
    m = make(HEADS[name], arch)
    query, pool = inputs()
    enc = m.encode(query, pool)
    pointers = torch.tensor([[[0, 3, 1], [2, 4, 0]], [[1, 0, 4], [3, 2, 1]]])  # [B=2, G=2, L=3]
    logp = m.log_policy(enc, pointers)
    Kc = K + int(HEADS[name].stop)
    assert logp.shape == (2, 2, 3, Kc)
    for t in range(1, 3):  # every earlier pick has probability 0 at step t; the rest sum to 1
        for j in range(t):
            assert torch.isinf(logp[..., t, :].gather(-1, pointers[..., j : j + 1])).all()
    assert torch.allclose(logp.exp().sum(-1), torch.ones(2, 2, 3), atol=1e-5)
    lp = m.score_sequences(query, pool, torch.ones(2, K, dtype=torch.bool), pointers, torch.ones(2, 2, dtype=torch.bool))
    assert lp.shape == (2, 2) and torch.allclose(lp, logp.gather(-1, pointers.unsqueeze(-1)).squeeze(-1).sum(-1))
    picks = m.decode(enc, 4)  # past the 2-row step tables: the last row is reused
    assert picks.shape == (2, 4)
    for row in picks.tolist():
        real = [p for p in row if p >= 0]
        assert len(set(real)) == len(real) and all(p < K for p in real)


def test_hand_worked_scores():
    """Each head's step-t score on h = 2, worked by hand (T = 0.1)."""
    q = torch.tensor([[[1.0, 0.0]]])  # [B=1, G=1, h=2]
    cand = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # [B=1, K=2, h]

    add = LeverPlusV3Selector(2, 2, 1, 1, 0.0, 0.1, 0.0, "group", head_config=HeadConfig(update="gru", scoring="additive"))
    with torch.no_grad():
        add.attn_Wq.weight.copy_(torch.eye(2))
        add.attn_Wq.bias.copy_(torch.tensor([0.5, 0.0]))
        add.attn_Wc.weight.copy_(torch.eye(2))
        add.attn_v.weight.copy_(torch.tensor([[1.0, 2.0]]))
    # s_k = v . tanh(W_q q + b_q + W_c c_k) / T: k=0 tanh(2.5) + 2 tanh(0); k=1 tanh(1.5) + 2 tanh(1)
    want = torch.tensor([math.tanh(2.5), math.tanh(1.5) + 2 * math.tanh(1.0)]) / 0.1
    assert torch.allclose(add._scores(q, cand, 0)[0, 0], want, atol=1e-5)

    bil = LeverPlusV3Selector(2, 2, 1, 1, 0.0, 0.1, 0.0, "group", head_config=HeadConfig(update="gru", scoring="bilinear"))
    with torch.no_grad():
        bil.bilinear.weight.copy_(torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]))
    assert torch.allclose(bil._scores(q, cand, 0)[0, 0], torch.tensor([1.0, 2.0]) / 0.1)  # q^T W c_k / T

    emb = LeverPlusV3Selector(2, 2, 1, 1, 0.0, 0.1, 0.0, "group", head_config=HeadConfig(update="gru", step_emb=True))
    with torch.no_grad():
        emb.step_emb.weight.copy_(torch.tensor([[0.0, 1.0], [0.0, -1.0]]))
    r = 1 / math.sqrt(2)  # q_0 = normalise([1, 1]); step 5 reuses row 1: normalise([1, -1])
    assert torch.allclose(emb._scores(q, cand, 0)[0, 0], torch.tensor([r, r]) / 0.1, atol=1e-5)
    assert torch.allclose(emb._scores(q, cand, 5)[0, 0], torch.tensor([r, -r]) / 0.1, atol=1e-5)

    # mmr: after picking c_0, c_1 = [0.6, 0.8] loses softplus(div_lambda[1]) * <c_1, c_0> = softplus(0.1) * 0.6
    mmr = LeverPlusV3Selector(2, 2, 1, 1, 0.0, 0.1, 0.0, "group", head_config=HeadConfig(update="none", diversity="mmr"))
    cand2 = torch.tensor([[[1.0, 0.0], [0.6, 0.8]]])
    _, red = mmr._redundancy(cand2, torch.tensor([[0]]), None, 0)
    logp = mmr._step_logp(q, cand2, torch.tensor([[[True, False]]]), 1, red)
    assert torch.allclose(red, torch.tensor([[[1.0, 0.6]]]))
    assert logp[0, 0, 0] == float("-inf") and torch.allclose(logp[0, 0, 1], torch.tensor(0.0))  # only c_1 left
    full = mmr._scores(q, cand2, 1) - F.softplus(torch.tensor(0.1)) * red
    assert torch.allclose(full[0, 0, 1], torch.tensor(6.0 - math.log1p(math.exp(0.1)) * 0.6), atol=1e-5)

    # gru: q <- normalise(GRUCell(c*, q)); with every weight and bias 0, r = z = 1/2, n = 0, so q' = q / 2 -> q
    gru = LeverPlusV3Selector(2, 2, 1, 1, 0.0, 0.1, 0.0, "group", head_config=HeadConfig(update="gru"))
    with torch.no_grad():
        for p in gru.decoder_gru.parameters():
            p.zero_()
        gru.decoder_gru.bias_hh[4:].fill_(2.0)  # n = tanh(W_in c + r (W_hn q + b_hn)) = tanh(1/2 * 2) = tanh(1)
    new = gru._advance(q, cand, torch.tensor([[1]]))  # q' = (1 - z) n + z q = (tanh 1 + [1, 0]) / 2, normalised
    want = F.normalize(torch.tensor([math.tanh(1.0) + 1.0, math.tanh(1.0)]), dim=0)
    assert torch.allclose(new[0, 0], want, atol=1e-5)


@pytest.mark.parametrize("name", ["v4_2", "v4_3", "v4_5", "v4_5_bilinear", "v4_10"])
def test_gradcheck(name):
    """Analytic gradients of log p(sequence) against finite differences, in double, for the query and every head
    parameter."""
    m = make(HEADS[name]).double()
    query, pool = (x.double() for x in inputs(1))
    mask, pointers, seq = torch.ones(1, K, dtype=torch.bool), torch.tensor([[[0, 3, 1]]]), torch.ones(1, 1, dtype=torch.bool)
    names = [n for n, _ in m.named_parameters() if n in ORIGINAL_KEYS[name] | {"stop_token", "div_lambda"}]
    assert names

    class Scores(torch.nn.Module):  # functional_call calls forward: route it to score_sequences
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, q):
            return self.m.score_sequences(q, pool, mask, pointers, seq)

    def logp(q, *ps):
        return torch.func.functional_call(Scores(), {f"m.{n}": p for n, p in zip(names, ps)}, (q,))

    params = [dict(m.named_parameters())[n].detach().clone().requires_grad_() for n in names]
    assert torch.autograd.gradcheck(logp, (query.requires_grad_(), *params), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("name", [n for n in HEADS if n in ORIGINAL_KEYS])
def test_state_dict_round_trip_with_the_original_names(name, tmp_path):
    m = make(HEADS[name])
    state = {k: v.detach().clone() for k, v in m.state_dict().items()}
    assert set(state) == BACKBONE | ORIGINAL_KEYS[name]
    for k in ORIGINAL_KEYS[name]:
        assert tuple(state[k].shape) == ORIGINAL_SHAPES[k], k
    query, pool = inputs()
    enc = m.encode(query, pool)
    want = m.decode(enc, 4), m.log_policy(enc, torch.tensor([[[0, 1, 2]], [[4, 3, 2]]]))
    for fmt, save in (("v3", save_v3), ("v2", save_v2)):
        path = tmp_path / f"{name}.{fmt}.ckpt"
        save(path, state)
        raw = torch.load(path, weights_only=True)
        tag = {"v4_1": None, "v4_2": "v4_2", "v4_3": "v4_3", "v4_5": "v4_5", "v4_5_bilinear": "v4_5", "v4_10": "v4_10"}[name]
        assert raw.get("model_type") == tag
        if tag == "v4_5":
            assert raw["attention_type"] == HEADS[name].scoring
        loaded, got = load_original(path)
        assert got == fmt and set(loaded) == set(state)
        settings = head_settings(loaded)
        assert all(getattr(HEADS[name], k) == v for k, v in settings.items()), settings
        fresh = make(HeadConfig(**{**HEADS[name].__dict__, **settings}), seed=9)
        fresh.load_state_dict(loaded)
        enc2 = fresh.encode(query, pool)
        assert torch.equal(fresh.decode(enc2, 4), want[0])
        assert torch.allclose(fresh.log_policy(enc2, torch.tensor([[[0, 1, 2]], [[4, 3, 2]]])), want[1])


def test_stop_ends_a_selection_and_the_evaluation_counts_shots():
    m = make(HEADS["v4_10"])
    query, pool = inputs(3)
    with torch.no_grad():  # make STOP the query's own direction: every selection stops at once...
        m.stop_token.copy_(m.encode(query, pool).q[0:1] * 5)
    enc = m.encode(query, pool)
    assert m.decode(enc, 4)[0].tolist() == [-1, -1, -1, -1]
    with torch.no_grad():  # ... or not at first: STOP points away from the query (cosine -1, below every candidate)
        m.stop_token.copy_(-m.encode(query, pool).q[0:1])
        m.step_emb.weight.zero_()
    assert m.decode(m.encode(query, pool), 4)[0, 0] >= 0

    # select_demos maps pool positions to train rows and keeps -1 for the steps after a STOP
    class Stops(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def eval(self):
            return self

        def encode(self, q, pool, mask):
            return q

        def decode(self, enc, steps, greedy=True):
            return torch.tensor([[2, 0, -1, -1], [1, 3, 4, 0]])[: enc.shape[0], :steps]

    train = torch.randn(10, D)
    pools = torch.tensor([[7, 8, 9, 1, 2], [5, 6, 7, 8, 9]])
    picks = select_demos(Stops(), torch.randn(2, D), train, pools, 4)
    assert picks.tolist() == [[9, 7, -1, -1], [6, 8, 9, 5]]
    assert [demo_rows(picks[0], s) for s in (1, 2, 3, 4)] == [[9], [9, 7], [9, 7], [9, 7]]
    rows = [
        {"split": "val", "shots": s, "shots_used": len(demo_rows(picks[i], s)), "accuracy": 1.0, "failed": False}
        for s in (1, 4)
        for i in range(2)
    ]
    cells = summarise(rows)["val"]
    assert cells["1"]["shots_used"] == 1.0 and cells["1"]["stopped_early"] == 0.0
    assert cells["4"]["shots_used"] == 3.0 and cells["4"]["stopped_early"] == 50.0  # 2 and 4 demonstrations
    plain = [{"split": "val", "shots": 1, "accuracy": 1.0, "failed": False}]  # a selector without STOP: as before
    assert summarise(plain) == {"val": {"1": {"accuracy": 100.0, "n": 1, "failed": 0}}}


@pytest.mark.slow
@pytest.mark.parametrize("plan", ["original/v4_5", "original/v4_10"])
def test_v4_plans_run_end_to_end_and_a_stop_plan_counts_shots(lever, tmp_path, monkeypatch, plan):
    """`lever run plans/original/v4_*.toml`, shortened, on the (small) bundled benchmark, then `lever compare`."""
    import json
    from pathlib import Path

    from workspaces import bench_workspace

    root = Path(__file__).resolve().parents[1]
    ws = bench_workspace(tmp_path)
    monkeypatch.chdir(root)
    cut = ["rce.epochs=1", "grpo.epochs=1", "rce.batch_size=16", "grpo.batch_size=16", "eval.questions=30", 'eval.splits=["val"]']
    res = lever("--workspace", ws, "run", root / "plans" / f"{plan}.toml", *cut, "--no-baseline")
    assert res.code == 0, res.text
    (summary,) = (tmp_path / "runs" / plan).glob("*/seed-0/eval/*/summary.json")
    cells = json.loads(summary.read_text())["splits"]["val"]
    assert sorted(cells) == ["1", "2", "3", "4"] and all(c["n"] == 30 for c in cells.values())
    rows = [json.loads(line) for line in (summary.parent / "results.jsonl").read_text().splitlines()]
    if plan.endswith("v4_10"):
        assert all(0 <= r["shots_used"] <= r["shots"] and len(r["demo_ids"]) == r["shots_used"] for r in rows)
        for s, c in cells.items():
            used = [r["shots_used"] for r in rows if r["shots"] == int(s)]
            assert c["shots_used"] == round(sum(used) / len(used), 3)
        named = f"{plan}@{summary.parents[3].name}"  # the runs of this spec hash (made with overrides)
        out = lever("--workspace", ws, "compare", named, "--baseline", named)
        assert out.code == 0 and "Demonstrations used" in out.text, out.text
    else:
        assert all("shots_used" not in r and len(r["demo_ids"]) == r["shots"] for r in rows)


def test_a_v4_checkpoint_names_the_heads_its_plan_must_set():
    from pathlib import Path

    from lever.errors import LeverError
    from lever.model import build_selector
    from lever.recipe.train import check_heads
    from lever.spec import load_plan

    plans = Path(__file__).resolve().parents[1] / "plans" / "original"
    v45, v410 = (load_plan(plans / f"{n}.toml").plan.model for n in ("v4_5", "v4_10"))
    state = build_selector(16, v45).state_dict()
    check_heads(state, v45, "v4_5.pt")  # the plan it was trained with: fits
    with pytest.raises(LeverError, match='holds a selector with model.scoring = "additive", model.stop = false'):
        check_heads(state, v410, "v4_5.pt")
