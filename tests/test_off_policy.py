"""Behaviour log-probabilities (generated, read, validated) and GRPO's truncated importance weights
(grpo.off_policy = "truncated_is"): hand-worked values, the reader's rules, the preflight through the CLI."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from data_cli import run_cli as data_cli
from test_losses import ppo_loss
from workspaces import SMALL_BENCH_IMAGE, bench_workspace  # noqa: E402

from lever.bench.candidates import step_logps as bench_step_logps
from lever.bench.candidates import uniform_logps
from lever.data.reader import parse_candidates
from lever.data.synthetic import synthetic_records
from lever.errors import LeverError
from lever.eval.generate import (
    Sources,
    dedupe_set,
    propose,
    sample,
    selector_policy,
    similarity_policy,
    step_logps,
    uniform_step_logps,
)
from lever.model import PointerSelector
from lever.spec import load_plan
from lever.train import losses as L

ROOT = Path(__file__).resolve().parents[1]
PLANS = ROOT / "plans"


# --------------------------------------------------------------------------- generation


def test_generated_behaviour_logps_are_the_proposing_policys_scores():
    """A tiny selector proposes beams and samples: their behaviour log-probs are its own teacher-forced scores
    (tempered at tau 1.3); random draws carry the uniform draw's; retrieval none."""
    torch.manual_seed(0)
    model = PointerSelector(d_in=8, hidden=8, dropout=0.0).eval().requires_grad_(False)
    Q, K, shots = 2, 6, 2
    query, pool = torch.randn(Q, 8), torch.randn(Q, K, 8)
    gens = [torch.Generator().manual_seed(i) for i in range(Q)]
    src = Sources(beams=3, temperatures=(1.0, 1.3), samples=2, random=2, retrieval=1)
    groups = propose(selector_policy(model, query, pool), torch.randn(Q, K), shots, src, gens, "ordered")
    seen = set()
    for qi, group in enumerate(groups):
        for p in group:
            method, beh, steps = p["gen_method"], p["behaviour_logp"], p["behaviour_step_logps"]
            seen.add(method)
            ptr = torch.tensor([[p["pointer"]]])  # [1, 1, L]
            if method == "retrieval":
                assert beh is None and steps is None
                continue
            assert beh == pytest.approx(sum(steps), abs=1e-5)
            if method == "random":
                assert steps == pytest.approx([math.log(1 / 6), math.log(1 / 5)], abs=1e-6)
                continue
            q1, p1 = query[qi : qi + 1], pool[qi : qi + 1]
            per_step = model.log_policy(model.encode(q1, p1), ptr)[0, 0]  # [L, K]: the policy's own distributions
            tau = p["temperature"] or 1.0
            want = [float((per_step[t] / tau).log_softmax(-1)[p["pointer"][t]]) for t in range(shots)]
            assert steps == pytest.approx(want, abs=1e-5), (method, tau)
            if tau == 1.0:  # beams and tau-1 samples: the policy's score of the ordered sequence
                score = model.score_sequences(q1, p1, None, ptr, torch.ones(1, 1, dtype=torch.bool))
                assert beh == pytest.approx(float(score), abs=1e-5)
                if method == "beam":
                    assert beh == pytest.approx(p["beam_score"], abs=1e-4)
    assert seen == {"beam", "sample", "random", "retrieval"}


@pytest.mark.parametrize("tau", [1.0, 1.3])
def test_sampled_log_probs_are_the_teacher_forced_pass_bit_for_bit(tau):
    """`sample` keeps the log-probs of the distributions it drew from: the same bits as a second, teacher-forced pass
    (`step_logps`), which online GRPO and `data generate` took before."""
    torch.manual_seed(0)
    model = PointerSelector(d_in=8, hidden=8, dropout=0.0).eval().requires_grad_(False)
    step = selector_policy(model, torch.randn(3, 8), torch.randn(3, 7, 8))
    seqs, logps = sample(step, 5, 3, tau, [torch.Generator().manual_seed(i) for i in range(3)], 7)
    assert seqs.shape == logps.shape == (3, 5, 3)
    assert torch.equal(logps, step_logps(step, seqs, tau))


def test_uniform_draw_and_the_similarity_policy_by_hand():
    # a pool of 4 choosing 2, ordered: log(1/4 * 1/3)
    assert sum(uniform_step_logps(4, 2)) == pytest.approx(math.log(1 / 4 * 1 / 3))
    assert uniform_logps(4, 2) == pytest.approx((math.log(1 / 4), math.log(1 / 3)))
    # the similarity policy softmax(cos / 0.1) on cosines [1, 0.9, 0] (query along x): beam 0 is [0, 1]
    step = similarity_policy(torch.tensor([[1.0, 0.0]]), torch.tensor([[[1.0, 0.0], [0.9, 0.43589], [0.0, 1.0]]]))
    beam = propose(step, torch.zeros(1, 3), 2, Sources(1, (), 0, 0, 0), [torch.Generator()])[0][0]
    z0 = math.exp(10) + math.exp(9) + 1
    z1 = math.exp(9) + 1  # item 0 picked
    assert beam["pointer"] == [0, 1]
    assert beam["behaviour_step_logps"] == pytest.approx([10 - math.log(z0), 9 - math.log(z1)], abs=1e-5)
    # the bundled benchmark's generator scores its sequences the same way
    logits = torch.tensor([[10.0, 9.0, 0.0]])
    bench = bench_step_logps(logits, torch.tensor([[[0, 1]]]))[0, 0]
    assert bench.tolist() == pytest.approx(beam["behaviour_step_logps"], abs=1e-5)


def test_set_dedupe_keeps_the_kept_sources_own_logp():
    group = [
        {"pointer": [1, 0], "gen_method": "random", "behaviour_logp": -2.48},
        {"pointer": [0, 1], "gen_method": "beam", "behaviour_logp": -0.2},
        {"pointer": [1, 0], "gen_method": "retrieval", "behaviour_logp": None},
    ]
    assert [(p["gen_method"], p["behaviour_logp"]) for p in dedupe_set(group)] == [("beam", -0.2)]


# --------------------------------------------------------------------------- the reader


def with_behaviour() -> dict:
    """Synthetic records with behaviour log-probs: -1 per pick, null for retrieval."""
    recs = synthetic_records(queries=3, group=5, pool=6, shots=2, ragged=False, seed=1)
    for key, rec in recs.items():
        if key.startswith("_"):
            continue
        for c in rec["pointer_candidates"]:
            det = c["gen_method"] == "retrieval"
            c["behaviour_logp"] = None if det else -2.0
            c["behaviour_step_logps"] = None if det else [-1.0, -1.0]
    return recs


def test_reader_exposes_behaviour_logps_and_still_reads_files_without(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(with_behaviour()))
    d = parse_candidates(path)
    det = torch.tensor([d.source_names[s] == "retrieval" for s in d.source.tolist()])
    assert det.any() and d.has_behaviour() and d.has_behaviour(steps=True)
    assert torch.isnan(d.behaviour_logp[det]).all() and (d.behaviour_logp[~det] == -2.0).all()
    assert d.behaviour_steps.shape == (d.num_sequences, 2) and (d.behaviour_steps[~det] == -1.0).all()
    sub = d.subset(torch.tensor([2, 0]))  # the fields travel with their sequences
    assert sub.behaviour_logp.shape == (sub.num_sequences,) and sub.behaviour_steps.shape == (sub.num_sequences, 2)
    old = synthetic_records(queries=3, group=5, pool=6, shots=2, ragged=False, seed=1)
    path.write_text(json.dumps(old))
    d = parse_candidates(path)
    assert d.behaviour_logp is None and d.behaviour_steps is None and not d.has_behaviour()


def _cand(recs: dict, method: str) -> dict:
    return next(c for k, r in recs.items() if not k.startswith("_") for c in r["pointer_candidates"] if c["gen_method"] == method)


@pytest.mark.parametrize(
    "change, needles",
    [
        (lambda c: c.update(behaviour_logp=0.5, behaviour_step_logps=[0.25, 0.25]), ["'behaviour_logp' is 0.5", "<= 0"]),
        (lambda c: c.update(behaviour_step_logps=[-1.0]), ["'behaviour_step_logps' has 1 values, 'pointer' has 2"]),
        (lambda c: c.update(behaviour_step_logps=[-1.0, -3.0]), ["sums to -4", "'behaviour_logp' is -2"]),
        (lambda c: c.update(behaviour_logp=None), ["'behaviour_step_logps' is given without 'behaviour_logp'"]),
        (
            lambda c: c.update(behaviour_logp=None, behaviour_step_logps=None),
            ["field 'behaviour_logp' is missing", "other sequences of the file have one"],
        ),
        (lambda c: [c.pop("behaviour_logp"), c.pop("behaviour_step_logps")], ["deterministic source (retrieval)"]),
        (lambda c: c.update(behaviour_logp="-Infinity"), ["behaviour_logp"]),
    ],
)
def test_bad_behaviour_logps_are_refused(tmp_path, change, needles):
    recs = copy.deepcopy(with_behaviour())
    change(_cand(recs, "beam"))
    path = tmp_path / "c.json"
    path.write_text(json.dumps(recs))
    code, out = data_cli("stats", path, "--no-cache")
    assert code == 2 and "Traceback" not in out, out
    assert str(path) in out and "candidate" in out
    for needle in needles:
        assert needle in out, out


# --------------------------------------------------------------------------- the weights


def test_truncated_is_weights_by_hand():
    # one group: three real sequences of two picks and a padded one
    old = torch.tensor([[[-1.0, -2.0], [-3.0, -1.0], [-1.0, -1.0], [0.0, 0.0]]])  # [1, 4, 2]
    beh = torch.tensor([[[-2.0, -2.0], [-1.0, -1.0], [math.nan, math.nan], [-5.0, -5.0]]])  # seq 2: retrieval
    mask = torch.tensor([[True, True, True, False]])
    e = math.e
    # token: mean_t min(exp(old_t - beh_t), 2): seq 0 (min(e, 2) + 1) / 2 = 1.5, seq 1 (e^-2 + 1) / 2
    w, st = L.truncated_is_weights(old, beh, mask, cap=2.0, level="token")
    assert w.tolist()[0] == pytest.approx([1.5, (e**-2 + 1) / 2, 1.0, 0.0])
    assert st["is/capped_frac"] == pytest.approx(1 / 2) and st["is/deterministic_frac"] == pytest.approx(1 / 3)
    assert st["is/weight_mean"] == pytest.approx((1.5 + (e**-2 + 1) / 2 + 1) / 3)
    # sequence: min(exp(sum_t old_t - beh_t), C): seq 0 exp(1) capped at 2, seq 1 exp(-2)
    w, _ = L.truncated_is_weights(old, beh, mask, cap=2.0, level="sequence")
    assert w.tolist()[0] == pytest.approx([2.0, e**-2, 1.0, 0.0])
    w, st = L.truncated_is_weights(old, beh, mask, cap=10.0, level="sequence")
    assert w.tolist()[0] == pytest.approx([e, e**-2, 1.0, 0.0]) and st["is/capped_frac"] == 0.0
    # sequence level from sequence log-probs [B, G] is the same; no gradient flows through the weights
    seq_old = old.sum(-1).requires_grad_()
    w2, _ = L.truncated_is_weights(seq_old, beh.sum(-1), mask, cap=2.0, level="sequence")
    assert w2.tolist()[0] == pytest.approx([2.0, e**-2, 1.0, 0.0]) and not w2.requires_grad
    with pytest.raises(Exception, match="per-pick"):
        L.truncated_is_weights(seq_old, beh.sum(-1), mask, level="token")
    # a huge ratio does not overflow: it is capped in log space
    w, _ = L.truncated_is_weights(torch.zeros(1, 1, 2), torch.full((1, 1, 2), -1e4), torch.ones(1, 1, dtype=torch.bool), 3.0)
    assert w.item() == pytest.approx(3.0)


def test_weighted_loss_is_the_weighted_terms_and_weights_one_are_todays_loss():
    torch.manual_seed(0)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    logp = torch.randn(2, 3, requires_grad=True)
    ref = logp.detach() + 0.3 * torch.randn(2, 3)
    adv = torch.randn(2, 3) * mask
    today, st0 = ppo_loss(logp, ref, adv, mask)
    ones, _ = L.truncated_is_weights(ref.unsqueeze(-1), ref.unsqueeze(-1), mask)  # behaviour = old: w = 1
    assert (ones[mask] == 1).all()
    same, st1 = ppo_loss(logp, ref, adv * ones, mask)
    g0 = torch.autograd.grad(today, logp)[0]
    g1 = torch.autograd.grad(same, logp)[0]
    assert same.item() == today.item() and torch.equal(g0, g1) and st0 == st1
    # A * w weights each sequence's clipped term by w (w > 0): loss = mean_q mean_i w_i l_i
    w = torch.tensor([[0.5, 2.0, 1.0], [1.5, 0.25, 0.0]])
    ratio = (logp - ref).exp()
    terms = -torch.minimum(ratio * adv, ratio.clamp(0.8, 1.2) * adv)
    weighted, _ = ppo_loss(logp, ref, adv * w, mask)
    assert weighted.item() == pytest.approx(L.masked_mean(w * terms, mask).item(), abs=1e-6)


def test_reference_pick_logprobs_sum_to_the_sequence_logprobs(tmp_path):
    """Token level's pi_old per pick (all_pick_logprobs) adds up to the sequence log-probs the PPO ratio uses."""
    from lever.train.groups import Groups
    from lever.train.passes import all_logprobs, all_pick_logprobs

    path = tmp_path / "c.json"
    path.write_text(json.dumps(synthetic_records(queries=4, group=6, pool=8, shots=3, seed=2)))
    data = parse_candidates(path)
    torch.manual_seed(0)
    groups = Groups(data, torch.zeros(data.num_sequences), torch.zeros(data.num_sequences), torch.randn(200, 8))
    model = PointerSelector(d_in=8, hidden=8)
    picks = all_pick_logprobs(model, groups, batch_size=3)  # [S, L], ragged batches
    assert picks.shape == (data.num_sequences, 3) and (picks < 0).all()
    assert torch.allclose(picks.sum(-1), all_logprobs(model, groups), atol=1e-5)


# --------------------------------------------------------------------------- the plan and the preflight


def test_off_policy_keys_leave_todays_hashes_alone(tmp_path):
    plan5 = load_plan(PLANS / "plan5.toml")
    with pytest.raises(LeverError, match="only apply with off_policy"):  # a weight setting while off changes nothing
        load_plan(PLANS / "plan5.toml", ["grpo.is_cap=3.0"])
    on = load_plan(PLANS / "plan5.toml", ["grpo.off_policy=truncated_is"])
    assert on.hash != plan5.hash
    assert load_plan(PLANS / "plan5.toml", ["grpo.off_policy=truncated_is", "grpo.is_level=sequence"]).hash != on.hash
    assert load_plan(PLANS / "plan5.toml", ["grpo.off_policy=truncated_is", "grpo.is_cap=3.0"]).hash != on.hash
    # keys at their defaults are left out (plans made before them keep their hash); the option itself is in
    assert "off_policy" not in plan5.spec_dict()["grpo"] and on.spec_dict()["grpo"]["off_policy"] == "truncated_is"
    assert "is_cap" not in on.spec_dict()["grpo"]


def test_truncated_is_on_data_without_behaviour_logps_fails_before_training(lever, tmp_path):
    from lever.data.sources import bench_paths
    from lever.spec.workspace import load_workspace

    ws = bench_workspace(tmp_path)
    paths = bench_paths(load_workspace(ws), lambda m: None)
    data = json.loads(paths.candidates.read_text())
    for key, rec in data.items():
        for c in [] if key.startswith("_") else rec["pointer_candidates"]:
            c.pop("behaviour_logp"), c.pop("behaviour_step_logps")
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    feats = tmp_path / "f.pt"
    shutil.copy(paths.features, feats)
    args = ["run", PLANS / "plan5.toml", f"data.candidates={old}", f"data.features={feats}", "grpo.off_policy=truncated_is"]
    res = lever("--workspace", ws, *args)
    assert res.code == 2 and "Traceback" not in res.text, res.text
    for needle in (str(old), "grpo.off_policy = 'truncated_is'", "behaviour_step_logps", "lever data generate"):
        assert needle in res.text, res.text
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- a short GRPO run (slow tier)

# plan5 with these overrides on the small bundled benchmark (seed 0, CPU), token and sequence level. The weights
# depend on the data and on the policy after RCE, not on GRPO's noisy first steps (see test_run.py's STORED_GRPO).
OFF = ["rce.epochs=2", "rce.batch_size=16", "grpo.epochs=2", "grpo.off_policy=truncated_is", "--no-eval"]
STORED_IS = {
    "token": {
        "is/weight_mean": [0.782711, 0.846705],
        "is/capped_frac": [0.0367590, 0.0728600],
        # retrieval sequences (weight 1): 19 of the 288 kept in epoch 1 (top-3), 55 of 480 in epoch 2 (top-5)
        "is/deterministic_frac": [19 / 288, 55 / 480],
    },
    "sequence": {
        "is/weight_mean": [0.604420, 0.703552],
        "is/capped_frac": [0.0220134, 0.0354746],
        "is/deterministic_frac": [19 / 288, 55 / 480],
    },
}


@pytest.mark.slow
def test_grpo_with_truncated_is_matches_stored_values(lever, tmp_path, monkeypatch):
    from lever.io import read_jsonl

    monkeypatch.chdir(ROOT)
    ws = bench_workspace(tmp_path, SMALL_BENCH_IMAGE)
    for level, stored in STORED_IS.items():
        res = lever("--workspace", ws, "run", PLANS / "plan5.toml", *OFF, f"grpo.is_level={level}")
        assert res.code == 0, res.text
        spec = load_plan(PLANS / "plan5.toml", [*OFF[:-1], f"grpo.is_level={level}"])
        run_dir = tmp_path / "runs" / "plan5" / spec.hash / "seed-0"
        rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["stage"] == "grpo"]
        for key, values in stored.items():
            assert [r[key] for r in rows] == pytest.approx(values, rel=1e-4), (level, key)
