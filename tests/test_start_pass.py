"""The GRPO start pass in chunks: a train-mode pass with one dropout mask per sequence encodes at most
SEQUENCE_CHUNK sequences at once; eval-mode passes (the reference the loss uses) keep their batches and values."""

from __future__ import annotations

import torch

from lever.data.reader import load_candidates
from lever.data.rewards import compute_rewards, raw_rewards
from lever.data.synthetic import synthetic_records, write_records
from lever.model import build_selector
from lever.spec.schema import ModelSpec, RewardSpec
from lever.train import passes
from lever.train.groups import Groups


def _groups(tmp_path, queries: int = 12, group: int = 6) -> Groups:
    recs = synthetic_records(queries=queries, group=group, pool=10, shots=2, seed=0)
    data = load_candidates(write_records(tmp_path / "d.json", recs), log=lambda m: None)
    feats = torch.randn(400, 8, generator=torch.Generator().manual_seed(0))
    spec = RewardSpec()
    return Groups(data, compute_rewards(data, spec), raw_rewards(data, spec), feats)


def _model(mask: str):
    torch.manual_seed(0)
    spec = ModelSpec(arch="lever-plus-v3", hidden=8, heads=2, dropout=0.5, attn_dropout=0.1, dropout_mask=mask)
    return build_selector(8, spec)


def test_a_per_sequence_train_pass_encodes_at_most_a_chunk(tmp_path, monkeypatch):
    g = _groups(tmp_path)
    group = int(g.data.group_sizes().max())
    monkeypatch.setattr(passes, "SEQUENCE_CHUNK", 2 * group + 1)  # two queries' sequences fit, three do not
    model = _model("sequence")
    assert passes.pass_batch(model, g, 256, train=True) == 2
    assert passes.pass_batch(model, g, 256, train=False) == 256  # eval mode: one encoding per query
    assert passes.pass_batch(_model("group"), g, 256, train=True) == 256  # one mask per group: one encoding per query
    seen = []
    real = type(model).score_sequences

    def spy(self, query, *args):
        seen.append((self.training, query.shape[0]))
        return real(self, query, *args)

    monkeypatch.setattr(type(model), "score_sequences", spy)
    torch.manual_seed(0)
    train = passes.all_logprobs(model, g, train=True)
    assert seen == [(True, 2)] * (g.num_queries // 2) and torch.isfinite(train).all()
    seen.clear()
    ev = passes.all_logprobs(model, g)
    assert seen == [(False, g.num_queries)]
    # Dropout makes the train-mode pass another policy; the eval-mode pass does not depend on the chunking.
    assert not torch.allclose(train, ev)
    monkeypatch.setattr(passes, "SEQUENCE_CHUNK", 10**6)
    assert torch.equal(passes.all_logprobs(model, g), ev)
