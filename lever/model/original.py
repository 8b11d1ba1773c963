"""The original's selector (Lever-Plus `PointerSelectorV3`, whose layers are its V2's), parameter for parameter.

Its state dict has the original's names and shapes, so the original's checkpoints load
into it and its weights export to the original unchanged (h = hidden, d = d_in, n = layers):

    input_proj.weight                       [h, d]    no bias; absent when d == h (an identity)
    cross_attn_layers.{i}.in_proj_weight    [3h, h]   nn.MultiheadAttention, batch first
    cross_attn_layers.{i}.in_proj_bias      [3h]
    cross_attn_layers.{i}.out_proj.weight   [h, h]
    cross_attn_layers.{i}.out_proj.bias     [h]
    attn_norms.{i}.weight / .bias           [h]       LayerNorm after each attention (residual)
    query_proj.weight, cand_proj.weight     [h, h]    no bias
    query_update_gate.weight                [h, 2h]
    query_update_gate.bias                  [h]

Forward, as the original computes it:

    q0 = LN_i(MHA_i(q, c, c) + q) over the layers,  q = P x_q,  c_k = P x_k
    q  = normalise(W_q dropout(q0)),  c_k = normalise(W_c dropout(P x_k))

then the shared decoding of `SelectorBase` (cosine / T scores, chosen items masked, the
gate). Initialisation as the original: xavier-uniform input projection and gate weight,
zero gate bias, near-identity query/candidate projections; attention dropout inside
nn.MultiheadAttention. The original masks chosen items with a score of -100 instead of
-inf: a probability below e^-90 of the unmasked ones, the same log-probabilities to float
precision.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .heads import HeadConfig, add_heads
from .selector import Encoded, SelectorBase, near_identity


@functools.cache
def _rand_is_bernoulli() -> bool:
    """Whether this build draws bernoulli_(p) on the CPU as rand(float64) < p from the same generator state
    (PyTorch's portable kernel does; the MKL kernel it uses on Intel CPUs draws otherwise)."""
    drawn = torch.empty(256).bernoulli_(0.5, generator=torch.Generator().manual_seed(0))
    uniform = torch.rand(256, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return torch.equal(drawn, (uniform < 0.5).float())


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """F.dropout(x, p, training): x * bernoulli(1 - p) / (1 - p), the same draws from the same generator.

    On the CPU, where `_rand_is_bernoulli`, the mask is drawn as rand(float64) < 1 - p, the same numbers
    2.5x faster than bernoulli_: the per-sequence encoding draws K*h of them per sequence.
    """
    if not training or p == 0 or x.device.type != "cpu" or not _rand_is_bernoulli():
        return F.dropout(x, p, training)
    keep = torch.rand(x.shape, dtype=torch.float64) < 1 - p
    return x * keep.to(x.dtype).div_(1 - p)


class _Unit(torch.autograd.Function):
    """y = x / max(|x|, 1e-12) along the last dim (F.normalize), with its gradient written out:
    dx = (dy - y (y . dy)) / max(|x|, 1e-12) (0 where |x| < 1e-12 clamps, as F.normalize gives). Three passes
    over the per-sequence candidates [B, G, K, h] instead of autograd's seven."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        n = x.norm(dim=-1, keepdim=True)
        inv = n.clamp_min(1e-12).reciprocal()
        y = x * inv
        ctx.save_for_backward(y, inv, n)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor) -> Tensor:
        y, inv, n = ctx.saved_tensors
        dot = torch.linalg.vecdot(y, dy).unsqueeze(-1)  # y . dy
        dot = dot.masked_fill(n < 1e-12, 0.0)  # clamped: y = x * 1e12, no gradient through the norm
        return torch.addcmul(dy, y, dot, value=-1).mul_(inv)


def _unit(x: Tensor) -> Tensor:
    """F.normalize(x, dim=-1), the same to float rounding, with a lighter backward (`_Unit`)."""
    return _Unit.apply(x)


class LeverPlusV3Selector(SelectorBase):
    """The original's pointer selector (see the module docstring for its parameters)."""

    def __init__(
        self,
        d_in: int = 512,
        hidden: int = 256,
        layers: int = 1,
        heads: int = 1,
        dropout: float = 0.5,
        score_temperature: float = 0.1,
        attn_dropout: float = 0.1,
        dropout_mask: str = "sequence",
        head_config: HeadConfig = HeadConfig(),
    ):
        super().__init__()
        self._settings(d_in, hidden, layers, heads, dropout, score_temperature, attn_dropout, dropout_mask)

        self.input_proj: nn.Module = nn.Linear(d_in, hidden, bias=False) if d_in != hidden else nn.Identity()
        self.cross_attn_layers = nn.ModuleList(
            nn.MultiheadAttention(hidden, heads, dropout=attn_dropout, batch_first=True) for _ in range(layers)
        )
        self.attn_norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.query_proj = nn.Linear(hidden, hidden, bias=False)
        self.cand_proj = nn.Linear(hidden, hidden, bias=False)
        self.dropout = nn.Dropout(dropout)
        if head_config.update == "gate":  # the original's V4-1 (its V2 since then); V4-2 and later have a GRU instead
            self.query_update_gate = nn.Linear(2 * hidden, hidden)
        if isinstance(self.input_proj, nn.Linear):
            nn.init.xavier_uniform_(self.input_proj.weight)
        near_identity(self.query_proj)
        near_identity(self.cand_proj)
        if head_config.update == "gate":
            nn.init.xavier_uniform_(self.query_update_gate.weight)
            nn.init.zeros_(self.query_update_gate.bias)
        add_heads(self, hidden, head_config)

    def gate_layer(self) -> nn.Linear:
        return self.query_update_gate

    def backbone_parameters(self) -> list[nn.Parameter]:
        """What the original's `freeze_backbone_in_grpo` froze: the input, query and candidate
        projections (the attention layers, norms and gate stay trainable: 60% at d 512, h 256)."""
        return [*self.input_proj.parameters(), *self.query_proj.parameters(), *self.cand_proj.parameters()]

    def project(self, x: Tensor) -> Tensor:
        """The input projection (an identity when d_in == hidden): [..., d_in] -> [..., h]."""
        return self.input_proj(x.to(self.query_proj.weight.dtype))

    def attend(self, q: Tensor, c: Tensor, pool_mask: Tensor) -> Encoded:
        """Attention layers, dropout, output projections: q [B, h], c [B, K, h], pool_mask [B, K] -> Encoded."""
        q = self._attention(q.unsqueeze(1), c, ~pool_mask).squeeze(1)  # [B, h]
        q = F.normalize(self.query_proj(self.dropout(q)), dim=-1)  # [B, h]
        c = F.normalize(self.cand_proj(self.dropout(c)), dim=-1)  # [B, K, h]
        return Encoded(q=q, cand=c, pool_mask=pool_mask)

    def attend_each(self, q: Tensor, c: Tensor, pool_mask: Tensor, G: int) -> Encoded:
        """`attend` on G copies of each query and its pool (one dropout draw per copy, the original's
        per-sequence encoding) without copying the pool: the draws of dropout on the copies, in their
        order, so the same numbers as `attend(q.repeat_interleave(G, 0), ...)` to float rounding.
        q [B, h], c [B, K, h], pool_mask [B, K] -> Encoded of B*G rows."""
        B, K, h = c.shape
        q = self._attention(q.unsqueeze(1).expand(B, G, h), c, ~pool_mask)  # [B, G, h]
        q = _unit(self.query_proj(dropout(q, self.dropout.p, self.training)))  # [B, G, h]
        each = dropout(c.unsqueeze(1).expand(B, G, K, h), self.dropout.p, self.training)  # the copies' draws
        c = _unit(self.cand_proj(each))  # [B, G, K, h]
        return Encoded(q=q.reshape(B * G, h), cand=c.reshape(B * G, K, h), pool_mask=pool_mask.repeat_interleave(G, 0))

    def _attention(self, q: Tensor, c: Tensor, pad: Tensor) -> Tensor:
        """The attention layers (nn.MultiheadAttention + residual + LayerNorm) for G queries per pool:
        q [B, G, h], c [B, K, h], pad [B, K] True = ignore -> q [B, G, h].

        Per head n (d = h / heads), with W_q, W_k, W_v and biases the layer's in_proj:
            a_k = dropout(softmax_k((W_q,n q + b_q,n) . (W_k,n c_k + b_k,n) / sqrt(d)))
            out_n = sum_k a_k (W_v,n c_k + b_v,n) = W_v,n (sum_k a_k c_k) + b_v,n sum_k a_k
        reassociated so the K candidates are never projected: (W_k c_k) . x = c_k . (W_k^T x), and the
        key bias adds one constant to every logit, which softmax ignores. Cost O(G K h) per pool instead
        of O(G K h^2); the attention dropout draws as nn.MultiheadAttention's, in its order.
        """
        B, G, h = q.shape
        for attn, norm in zip(self.cross_attn_layers, self.attn_norms):
            n = attn.num_heads
            d = h // n
            w_q, w_k, w_v = attn.in_proj_weight.chunk(3)  # [h, h] each
            b_q, _, b_v = attn.in_proj_bias.chunk(3)
            x = F.linear(q, w_q, b_q).view(B, G, n, d)
            x = torch.einsum("bgnd,ndh->bgnh", x, w_k.view(n, d, h)).reshape(B, G * n, h)  # W_k^T (W_q q + b_q)
            logits = torch.bmm(x, c.transpose(1, 2)) / math.sqrt(d)  # [B, G*n, K]
            a = logits.masked_fill(pad.unsqueeze(1), float("-inf")).softmax(-1)
            a = dropout(a, attn.dropout, self.training)  # [B, G*n, K]
            mix = torch.bmm(a, c).view(B, G, n, h)  # sum_k a_k c_k
            v = torch.einsum("bgnh,ndh->bgnd", mix, w_v.view(n, d, h)) + b_v.view(n, d) * a.sum(-1).view(B, G, n, 1)
            q = norm(attn.out_proj(v.reshape(B, G, h)) + q)
        return q
