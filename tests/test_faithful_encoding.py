"""The original architecture's per-sequence encoding (lever/model/original.py) computed without copies: the
same numbers, to float rounding, as every sequence encoded on its own copy of the query and pool through
nn.MultiheadAttention, F.dropout and F.normalize (the original's forward), with the same dropout draws."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lever.model.original import LeverPlusV3Selector, _unit, dropout
from lever.model.selector import Encoded


def _copies(model: LeverPlusV3Selector, query, pool, pool_mask, G: int) -> Encoded:
    """The original's forward on G copies of each query and its pool: nn.MultiheadAttention per layer, then
    dropout and normalise (torch's own ops throughout)."""
    q = model.project(query).repeat_interleave(G, 0).unsqueeze(1)  # [B*G, 1, h]
    c = model.project(pool).repeat_interleave(G, 0)  # [B*G, K, h]
    mask = pool_mask.repeat_interleave(G, 0)
    for attn, norm in zip(model.cross_attn_layers, model.attn_norms):
        out, _ = attn(q, c, c, key_padding_mask=~mask, need_weights=False)
        q = norm(out + q)
    q = F.normalize(model.query_proj(F.dropout(q.squeeze(1), model.dropout_p, model.training)), dim=-1)
    c = F.normalize(model.cand_proj(F.dropout(c, model.dropout_p, model.training)), dim=-1)
    return Encoded(q=q, cand=c, pool_mask=mask)


def _case(heads: int, layers: int):
    torch.manual_seed(0)
    model = LeverPlusV3Selector(d_in=12, hidden=8, heads=heads, layers=layers, dropout=0.5, attn_dropout=0.1)
    with torch.no_grad():  # a key bias that is not zero (softmax must ignore it) and a value bias
        for attn in model.cross_attn_layers:
            attn.in_proj_bias.normal_()
    g = torch.Generator().manual_seed(1)
    B, G, K = 3, 4, 7
    query, pool = torch.randn(B, 12, generator=g), torch.randn(B, K, 12, generator=g)
    pool_mask = torch.ones(B, K, dtype=torch.bool)
    pool_mask[1, 5:] = False  # a padded pool
    pointers = torch.stack([torch.randperm(5, generator=g)[:2] for _ in range(B * G)]).view(B, G, 2)
    seq_mask = torch.ones(B, G, dtype=torch.bool)
    seq_mask[2, 3] = False  # a padded sequence
    return model, (query, pool, pool_mask, pointers, seq_mask)


@pytest.mark.parametrize(("heads", "layers"), [(1, 1), (2, 2)])
@pytest.mark.parametrize("train", [True, False])
def test_per_sequence_encoding_equals_the_copies(heads, layers, train):
    model, (query, pool, pool_mask, pointers, seq_mask) = _case(heads, layers)
    model.train(train)
    B, G, L = pointers.shape
    torch.manual_seed(7)
    got = model.score_sequences(query, pool, pool_mask, pointers, seq_mask)  # [B, G]
    torch.manual_seed(7)
    enc = _copies(model, query, pool, pool_mask, G)
    want = model.sequence_logprobs(enc, pointers.reshape(B * G, 1, L), seq_mask.reshape(B * G, 1)).view(B, G)
    # Dropout draws that differed would move log-probs by O(1); rounding moves them by 1e-6.
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    params = list(model.parameters())
    weights = torch.randn(B, G, generator=torch.Generator().manual_seed(2))
    for a, b in zip(torch.autograd.grad((got * weights).sum(), params), torch.autograd.grad((want * weights).sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    if train:  # the per-sequence masks: copies of one sequence score differently
        same, real = pointers[:1, :1].expand(1, G, L), torch.ones(1, G, dtype=torch.bool)
        assert len(set(model.score_sequences(query[:1], pool[:1], pool_mask[:1], same, real)[0].tolist())) == G


def test_eval_mode_encodes_each_query_once_as_the_attention_module():
    model, (query, pool, pool_mask, pointers, seq_mask) = _case(2, 2)
    model.eval()
    got = model.encode(query, pool, pool_mask)
    want = _copies(model, query, pool, pool_mask, 1)
    torch.testing.assert_close(got.q, want.q, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.cand, want.cand, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_draws_as_torch(p):
    x = torch.randn(4, 5, 33).unsqueeze(1).expand(4, 3, 5, 33)  # an expanded view, as the per-sequence copies
    torch.manual_seed(3)
    got = dropout(x, p, True)
    after = torch.rand(1)  # the generator advanced by the same draws
    torch.manual_seed(3)
    want = F.dropout(x, p, True)
    assert torch.equal(got, want) and torch.equal(after, torch.rand(1))
    assert torch.equal(dropout(x, p, False), x)


def test_unit_gradient_as_normalize():
    x = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_unit, (x,))
    z = x.detach().clone()
    z[0, 0] = 0.0  # a zero row: F.normalize's value and gradient there too
    z.requires_grad_()
    dy = torch.randn(3, 5, 7, dtype=torch.float64)
    (a,) = torch.autograd.grad((_unit(z) * dy).sum(), z)
    (b,) = torch.autograd.grad((F.normalize(z, dim=-1) * dy).sum(), z)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(_unit(z), F.normalize(z, dim=-1))
