"""The pointer selector (docs/selector.md): shapes, masking, teacher forcing, freezing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lever.model import Encoded, PointerSelector
from lever.model.selector import CrossAttentionLayer

D, H, K = 16, 8, 10  # small sizes keep the tests fast


def make(seed: int = 0, **kw) -> PointerSelector:
    torch.manual_seed(seed)
    return PointerSelector(d_in=D, hidden=H, **kw)


def inputs(B: int, k: int = K, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g), torch.randn(B, k, D, generator=g)


def test_shapes():
    m = make().eval()
    query, pool = inputs(3)
    enc = m.encode(query, pool)
    assert isinstance(enc, Encoded)
    assert enc.q.shape == (3, H) and enc.cand.shape == (3, K, H) and enc.pool_mask.shape == (3, K)
    assert torch.allclose(enc.q.norm(dim=-1), torch.ones(3))  # unit norm, so scores are cosines
    assert torch.allclose(enc.cand.norm(dim=-1), torch.ones(3, K))
    ptr = torch.randint(0, K, (3, 4, 2))
    seq_mask = torch.ones(3, 4, dtype=torch.bool)
    assert m.log_policy(enc, ptr, seq_mask).shape == (3, 4, 2, K)
    assert m.sequence_logprobs(enc, ptr, seq_mask).shape == (3, 4)
    assert m.decode(enc, 3).shape == (3, 3)
    assert m.decode(enc, 3).dtype == torch.long


def test_default_sizes_and_frozen_fraction():
    torch.manual_seed(0)
    m = PointerSelector()  # 512 -> 256, 1 layer, 1 head
    assert m.trainable_fraction() == 1.0
    m.set_backbone_frozen(True)
    frac = m.trainable_fraction()
    assert 0.3 <= frac <= 0.7
    # backbone = input projection (512*256) + attention (4 maps 256*256, biases on q, v, out)
    # + LayerNorm (2*256); heads = projections (2 * (256*256 + 256)) + gate (512*256 + 256)
    frozen = 512 * 256 + 4 * 256 * 256 + 3 * 256 + 2 * 256
    assert frozen / (frozen + 2 * (256 * 256 + 256) + 512 * 256 + 256) == pytest.approx(0.6, abs=0.01)
    total = sum(p.numel() for p in m.parameters())
    assert sum(p.numel() for p in m.backbone_parameters()) == frozen
    assert frac == pytest.approx(1 - frozen / total)
    m.set_backbone_frozen(False)
    assert m.trainable_fraction() == 1.0


@pytest.mark.parametrize("heads", [1, 2])
def test_cross_attention_equals_standard_multihead_attention(heads):
    # the layer skips projecting the candidates; it must still be plain attention
    torch.manual_seed(0)
    layer = CrossAttentionLayer(H, heads)
    ref = torch.nn.MultiheadAttention(H, heads, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([layer.q.weight, layer.k.weight, layer.v.weight]))
        ref.in_proj_bias.copy_(torch.cat([layer.q.bias, torch.randn(H), layer.v.bias]))  # key bias: no effect
        ref.out_proj.weight.copy_(layer.out.weight)
        ref.out_proj.bias.copy_(layer.out.bias)
    q, c = torch.randn(3, H), torch.randn(3, K, H)
    pad = torch.zeros(3, K, dtype=torch.bool)
    pad[1, 6:] = True
    want, _ = ref(q.unsqueeze(1), c, c, key_padding_mask=pad, need_weights=False)
    want = layer.norm(q + want.squeeze(1))
    assert torch.allclose(layer(q, c, pad), want, atol=1e-5)


def test_frozen_backbone_gets_no_gradient():
    m = make()
    m.set_backbone_frozen(True)
    query, pool = inputs(2)
    enc = m.encode(query, pool)
    ptr = torch.tensor([[[0, 1]], [[2, 3]]])
    m.sequence_logprobs(enc, ptr, torch.ones(2, 1, dtype=torch.bool)).sum().backward()
    assert all(p.grad is None for p in m.backbone_parameters())
    assert m.gate.weight.grad is not None and m.query_proj.weight.grad is not None


def test_seeded_init_is_deterministic():
    a, b, c = make(seed=5), make(seed=5), make(seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    # the output projections start near identity
    assert (a.query_proj.weight - torch.eye(H)).abs().max() < 0.1
    assert PointerSelector(**a.config()).state_dict().keys() == sa.keys()


def test_decode_never_repeats_and_runs_past_training_length():
    m = make().eval()
    query, pool = inputs(4)
    enc = m.encode(query, pool)
    for steps in (1, 2, 8, K):
        picks = m.decode(enc, steps)
        assert all(len(set(row.tolist())) == steps for row in picks)
    g = torch.Generator().manual_seed(3)
    sampled = m.decode(enc, 8, greedy=False, generator=g)
    assert all(len(set(row.tolist())) == 8 for row in sampled)
    again = m.decode(enc, 8, greedy=False, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sampled, again)  # seeded sampling is reproducible
    with pytest.raises(ValueError, match="steps"):
        m.decode(enc, K + 1)


def test_teacher_forcing_blocks_earlier_labels():
    m = make().eval()
    query, pool = inputs(2)
    enc = m.encode(query, pool)
    ptr = torch.tensor([[[4, 1, 7]], [[0, 9, 3]]])  # [B=2, G=1, L=3]
    lp = m.log_policy(enc, ptr, torch.ones(2, 1, dtype=torch.bool))  # [2, 1, 3, K]
    for b in range(2):
        for s in range(3):
            for earlier in ptr[b, 0, :s].tolist():
                assert lp[b, 0, s, earlier] == float("-inf")
            assert torch.isfinite(lp[b, 0, s, ptr[b, 0, s]])
    assert torch.allclose(lp.exp().sum(-1), torch.ones(2, 1, 3))


def test_greedy_decode_logprob_is_sum_of_step_maxima():
    m = make().eval()
    query, pool = inputs(3)
    enc = m.encode(query, pool)
    picks = m.decode(enc, 4)  # [3, 4]
    ptr = picks.unsqueeze(1)  # [3, 1, 4]
    seq_mask = torch.ones(3, 1, dtype=torch.bool)
    lp = m.log_policy(enc, ptr, seq_mask)  # [3, 1, 4, K]
    assert torch.equal(lp.argmax(-1), ptr)  # each pick was the step's argmax
    want = lp.max(-1).values.sum(-1)  # [3, 1]
    assert torch.allclose(m.sequence_logprobs(enc, ptr, seq_mask), want)


def test_ragged_batch_equals_each_sequence_alone():
    # 3 queries with pools of 10, 7, 5 real items (padded to 10) and groups of 4, 2, 1
    # sequences; padding holds garbage. Batched log-probs must equal each sequence
    # scored alone against its unpadded pool (eval mode: no dropout).
    m = make().double().eval()
    query, pool = inputs(3)
    query, pool = query.double(), pool.double()
    pool_sizes, group_sizes, L = [10, 7, 5], [4, 2, 1], 3
    pool_mask = torch.arange(K).unsqueeze(0) < torch.tensor(pool_sizes).unsqueeze(1)  # [3, K]
    seq_mask = torch.arange(4).unsqueeze(0) < torch.tensor(group_sizes).unsqueeze(1)  # [3, 4]
    g = torch.Generator().manual_seed(7)
    ptr = torch.zeros(3, 4, L, dtype=torch.long)  # padded sequences stay 0-filled (repeats)
    for b in range(3):
        for i in range(group_sizes[b]):
            ptr[b, i] = torch.randperm(pool_sizes[b], generator=g)[:L]
    batch = m.sequence_logprobs(m.encode(query, pool, pool_mask), ptr, seq_mask)  # [3, 4]
    for b in range(3):
        n = pool_sizes[b]
        enc = m.encode(query[b : b + 1], pool[b : b + 1, :n])
        for i in range(group_sizes[b]):
            alone = m.sequence_logprobs(enc, ptr[b : b + 1, i : i + 1], torch.ones(1, 1, dtype=torch.bool))
            assert batch[b, i].item() == pytest.approx(alone.item(), abs=1e-10)
        assert (batch[b, group_sizes[b] :] == 0).all()


def test_padded_sequences_give_zero_and_finite_grads():
    m = make().train()  # dropout on: gradients must still be finite
    query, pool = inputs(2)
    pool_mask = torch.ones(2, K, dtype=torch.bool)
    pool_mask[1, 0] = False  # the 0-filled garbage pointer points at a padded item
    ptr = torch.zeros(2, 3, 2, dtype=torch.long)
    ptr[0, 2] = -1  # any fill value is fine in padding
    ptr[0, 0] = torch.tensor([1, 2])
    ptr[1, 0] = torch.tensor([3, 4])
    ptr[1, 1] = torch.tensor([5, 3])
    seq_mask = torch.tensor([[True, False, False], [True, True, False]])
    logp = m.sequence_logprobs(m.encode(query, pool, pool_mask), ptr, seq_mask)
    assert (logp[~seq_mask] == 0).all()
    assert torch.isfinite(logp).all()
    (-logp.sum()).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert m.input_proj.weight.grad.abs().sum() > 0  # one encoding trains the backbone too


def test_pool_mask_is_respected():
    m = make().eval()
    query, pool = inputs(2)
    # make padded slots the most attractive items: copies of the query itself
    pool[:, 6:] = query.unsqueeze(1)
    pool_mask = torch.ones(2, K, dtype=torch.bool)
    pool_mask[:, 6:] = False
    enc = m.encode(query, pool, pool_mask)
    assert (m.decode(enc, 6) < 6).all()
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        assert (m.decode(enc, 6, greedy=False, generator=g) < 6).all()
    lp = m.log_policy(enc, torch.zeros(2, 1, 1, dtype=torch.long), torch.ones(2, 1, dtype=torch.bool))
    assert (lp[..., 6:] == float("-inf")).all()
    with pytest.raises(ValueError, match="steps"):
        m.decode(enc, 7)
    with pytest.raises(ValueError, match="real candidate"):
        m.encode(query, pool, torch.zeros(2, K, dtype=torch.bool))


def test_encoder_ignores_padded_pool_content():
    m = make().eval()
    query, pool = inputs(2)
    pool_mask = torch.ones(2, K, dtype=torch.bool)
    pool_mask[:, 7:] = False
    a = m.encode(query, pool, pool_mask)
    pool2 = pool.clone()
    pool2[:, 7:] = 100.0  # change only padded items
    b = m.encode(query, pool2, pool_mask)
    assert torch.allclose(a.q, b.q)
    assert torch.allclose(a.cand[:, :7], b.cand[:, :7])


def test_gate_mixes_query_with_pick():
    # q_new = normalise(g*q + (1-g)*c): with the gate pinned to g = 1 the state never moves,
    # so every step scores like the first (minus blocked items)
    m = make().eval()
    with torch.no_grad():
        m.gate.weight.zero_()
        m.gate.bias.fill_(50.0)  # sigmoid(50) = 1 to float precision
    query, pool = inputs(1)
    enc = m.encode(query, pool)
    picks = m.decode(enc, 4)[0]
    first_scores = enc.cand[0] @ enc.q[0]  # [K]
    assert picks.tolist() == first_scores.argsort(descending=True)[:4].tolist()
    # with g = 0 the state becomes the last pick: q <- c_pick
    with torch.no_grad():
        m.gate.bias.fill_(-50.0)
    q1 = m._advance(enc.q.unsqueeze(1), enc.cand, torch.tensor([[2]]))
    assert torch.allclose(q1[0, 0], F.normalize(enc.cand[0, 2], dim=-1), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes(dtype):
    m = make(layers=2, heads=2).to(dtype).eval()
    query, pool = inputs(2)  # float32 features are cast to the model's dtype
    enc = m.encode(query, pool)
    assert enc.q.dtype == dtype
    picks = m.decode(enc, 3)
    logp = m.sequence_logprobs(enc, picks.unsqueeze(1), torch.ones(2, 1, dtype=torch.bool))
    assert torch.isfinite(logp).all() and (logp <= 0).all()
    assert logp.dtype == torch.promote_types(dtype, torch.float32)
