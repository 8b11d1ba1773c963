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

import torch.nn.functional as F
from torch import Tensor, nn

from .heads import HeadConfig, add_heads
from .selector import Encoded, SelectorBase, near_identity


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
        q = q.unsqueeze(1)  # [B, 1, h]
        pad = ~pool_mask  # [B, K] True = ignore
        for attn, norm in zip(self.cross_attn_layers, self.attn_norms):
            out, _ = attn(q, c, c, key_padding_mask=pad, need_weights=False)  # [B, 1, h]
            q = norm(out + q)
        q = F.normalize(self.query_proj(self.dropout(q.squeeze(1))), dim=-1)  # [B, h]
        c = F.normalize(self.cand_proj(self.dropout(c)), dim=-1)  # [B, K, h]
        return Encoded(q=q, cand=c, pool_mask=pool_mask)
