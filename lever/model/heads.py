"""The original's V4 heads (Lever-Plus V4-1 .. V4-10, the kept ones), as settings of either architecture.

Each head is a few parameters on the selector itself, under the original's names, so a V4 checkpoint's
state dict loads name for name (h = hidden, S = `steps`):

    query_update_gate.weight [h, 2h], .bias [h]   update = "gate" (V4-1; lever's arch calls it gate.*)
    decoder_gru.weight_ih [3h, h], .weight_hh [3h, h], .bias_ih [3h], .bias_hh [3h]     update = "gru" (V4-2)
    step_emb.weight [S, h]                         step_emb = true (V4-2)
    div_lambda [S]                                 diversity = "mmr" (V4-3)
    attn_Wq.weight [h, h], attn_Wq.bias [h], attn_Wc.weight [h, h], attn_v.weight [1, h]   scoring = "additive" (V4-5)
    bilinear.weight [1, h, h]                      scoring = "bilinear" (V4-5)
    stop_token [1, h]                              stop = true (V4-10)

What each computes, per step t of a selection (q the query state, c_k the unit-norm candidates, T the
score temperature; docs/selector.md):

    step_emb:  q_t = normalise(q + E[min(t, S-1)])                  (else q_t = q)
    dot:       s_k = <q_t, c_k> / T
    additive:  s_k = v . tanh(W_q q_t + b_q + W_c c_k) / T
    bilinear:  s_k = q_t^T W c_k / T
    mmr:       s_k -= softplus(div_lambda[min(t, S-1)]) * max_j <c_k, c_j>   over the picked j (t > 0; or the mean)
    stop:      the candidates gain c_STOP = normalise(stop_token), scored like any other; picking it ends
               the selection (the original forces STOP at every later step)
    gate:      g = sigmoid(W_g [q; c*] + b_g),  q <- normalise(g q + (1 - g) c*)
    gru:       q <- normalise(GRUCell(c*, q))
    none:      q stays

Initialisation as the original's files: step_emb N(0, 0.02); attn_Wq, attn_Wc xavier-uniform, b_q = 0,
attn_v xavier-uniform x 0.1; bilinear xavier-uniform; div_lambda = div_lambda_init (0.1); stop_token
N(0, 0.02); the GRUCell PyTorch's default.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class HeadConfig:
    """The V4 head settings (model.update, step_emb, steps, scoring, diversity, mmr_reduction, div_lambda_init, stop);
    the defaults are lever's selector as it always was: the gate, dot scores, no STOP."""

    update: str = "gate"  # gate | gru | none
    step_emb: bool = False
    steps: int = 2
    scoring: str = "dot"  # dot | additive | bilinear
    diversity: str = "none"  # none | mmr
    mmr_reduction: str = "max"  # max | mean
    div_lambda_init: float = 0.1
    stop: bool = False

    def __post_init__(self) -> None:
        for name, valid in (
            ("update", ("gate", "gru", "none")),
            ("scoring", ("dot", "additive", "bilinear")),
            ("diversity", ("none", "mmr")),
            ("mmr_reduction", ("max", "mean")),
        ):
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be {'|'.join(valid)}, got {getattr(self, name)!r}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")

    @property
    def plain(self) -> bool:
        """True for lever's selector as it was before the heads (what the fused training node computes)."""
        return self == HeadConfig()

    @classmethod
    def of(cls, spec) -> HeadConfig:
        """From a plan's `model` section (lever.spec.schema.ModelSpec)."""
        return cls(**{name: getattr(spec, name) for name in asdict(cls())})


def add_heads(sel: nn.Module, hidden: int, cfg: HeadConfig) -> None:
    """Register the parameters `cfg` asks for on `sel` under the original's names (none for the defaults, so a
    default model draws the same random numbers as before the heads existed). The gate is the architecture's."""
    sel.heads_cfg = cfg
    if cfg.update == "gru":
        sel.decoder_gru = nn.GRUCell(hidden, hidden)
    if cfg.step_emb:
        sel.step_emb = nn.Embedding(cfg.steps, hidden)
        nn.init.normal_(sel.step_emb.weight, mean=0.0, std=0.02)
    if cfg.scoring == "additive":
        sel.attn_Wq = nn.Linear(hidden, hidden, bias=True)
        sel.attn_Wc = nn.Linear(hidden, hidden, bias=False)
        sel.attn_v = nn.Linear(hidden, 1, bias=False)
        nn.init.xavier_uniform_(sel.attn_Wq.weight)
        nn.init.zeros_(sel.attn_Wq.bias)
        nn.init.xavier_uniform_(sel.attn_Wc.weight)
        nn.init.xavier_uniform_(sel.attn_v.weight)
        with torch.no_grad():
            sel.attn_v.weight.mul_(0.1)  # scores start in about the range of cosine scores
    elif cfg.scoring == "bilinear":
        sel.bilinear = nn.Bilinear(hidden, hidden, 1, bias=False)
        nn.init.xavier_uniform_(sel.bilinear.weight)
    if cfg.diversity == "mmr":
        sel.div_lambda = nn.Parameter(torch.full((cfg.steps,), float(cfg.div_lambda_init)))
    if cfg.stop:
        sel.stop_token = nn.Parameter(torch.randn(1, hidden) * 0.02)
