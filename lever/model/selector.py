"""The pointer selector: picks an ordered sequence of demonstrations from a candidate pool.

Shapes: B queries, K pool items, G sequences per query, L steps (shots), h hidden.

    q0   = LN-stack(P x_q attends over P x_c)          # encoder ("backbone")
    q    = normalise(W_q dropout(q0)),  c_k = normalise(W_c dropout(P x_k))
    step t:  s_k = <q, c_k> / T,  s_k = -inf for chosen or padded k
             pick k* (teacher-forced label, argmax or a sample)
             g = sigmoid(W_g [q; c_k*] + b_g),  q <- normalise(g*q + (1-g)*c_k*)

The same step function serves training (teacher forcing over [B, G] sequences) and
decoding (G = 1), so the two can never disagree. The model knows nothing of files.

`SelectorBase` holds the decoding (scores, gate, teacher forcing, greedy decoding);
an architecture only supplies `encode`, its gate layer and its backbone. Two exist:
`PointerSelector` (lever's, here) and `LeverPlusV3Selector` (the original's, in
`original.py`); docs/architecture.md says how they differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import fused
from .heads import HeadConfig, add_heads


@dataclass
class Encoded:
    """One encoding of each query and its pool, reused by every sequence of the group."""

    q: Tensor  # [B, h] unit-norm query state before any pick
    cand: Tensor  # [B, K, h] unit-norm candidates
    pool_mask: Tensor  # [B, K] bool, True = real candidate


class CrossAttentionLayer(nn.Module):
    """q <- LayerNorm(q + W_o attn + b_o): the query token reads the pool (multi-head).

    Per head n (d = h / heads):
        a_k = softmax_k( (W_q,n q + b_q,n) . (W_k,n c_k) / sqrt(d) ),  padded k -> -inf
        attn_n = W_v,n (sum_k a_k c_k) + b_v,n
    This is standard attention for a single query token, reassociated so the K
    candidates are never projected: (W_k c_k) . x = c_k . (W_k^T x), and
    sum_k a_k W_v c_k = W_v sum_k a_k c_k. Cost O(B K h) instead of O(B K h^2). A key
    bias would add the same constant to every logit, which softmax ignores: none.
    """

    def __init__(self, hidden: int, heads: int, attn_dropout: float = 0.0):
        super().__init__()
        self.heads, self.d_head = heads, hidden // heads
        self.q = nn.Linear(hidden, hidden)
        self.k = nn.Linear(hidden, hidden, bias=False)
        self.v = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.attn_dropout = nn.Dropout(attn_dropout)  # on the attention weights, as nn.MultiheadAttention

    def forward(self, q: Tensor, c: Tensor, pad: Tensor) -> Tensor:
        # q [B, h], c [B, K, h], pad [B, K] True = ignore
        B, h = q.shape
        n, d = self.heads, self.d_head
        qh = self.q(q).view(B, n, d)  # [B, n, d]
        q_in_c = torch.einsum("bnd,ndh->bnh", qh, self.k.weight.view(n, d, h))  # [B, n, h]
        logits = torch.einsum("bnh,bkh->bnk", q_in_c, c) / d**0.5  # [B, n, K]
        a = logits.masked_fill(pad.unsqueeze(1), float("-inf")).softmax(-1)  # [B, n, K]
        if self.attn_dropout.p > 0:
            a = self.attn_dropout(a)
        mix = torch.einsum("bnk,bkh->bnh", a, c)  # [B, n, h]
        v = torch.einsum("bnh,ndh->bnd", mix, self.v.weight.view(n, d, h)) + self.v.bias.view(n, d)
        return self.norm(q + self.out(v.reshape(B, h)))


def near_identity(layer: nn.Linear, noise: float = 0.01) -> None:
    """W = I + noise * N(0, 1), b = 0: starts as (almost) plain cosine retrieval."""
    with torch.no_grad():
        layer.weight.copy_(torch.eye(layer.out_features) + noise * torch.randn_like(layer.weight))
        if layer.bias is not None:
            layer.bias.zero_()


def _real_only(pointers: Tensor, seq_mask: Tensor) -> Tensor:
    """Pointers of padded sequences -> 0, so garbage (e.g. -1 fill) never indexes anything."""
    return torch.where(seq_mask.unsqueeze(-1), pointers, torch.zeros_like(pointers))


class SelectorBase(nn.Module):
    """Decoding shared by every architecture: per-step scores, the gate, teacher forcing, greedy decoding.

    A subclass sets `d_in`, `hidden`, `score_temperature`, `dropout_mask` and implements
    `project` (the input projection), `attend` (the rest of the encoder), `gate_layer` and
    `backbone_parameters`.
    """

    d_in: int
    hidden: int
    score_temperature: float
    dropout_mask: str  # "group" | "sequence"

    def _settings(
        self, d_in: int, hidden: int, layers: int, heads: int, dropout: float, score_temperature: float,
        attn_dropout: float, dropout_mask: str,
    ) -> None:  # fmt: skip
        """Check and keep the settings every architecture shares (what `config()` returns)."""
        if hidden % heads != 0:
            raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
        if score_temperature <= 0:
            raise ValueError(f"score_temperature must be > 0, got {score_temperature}")
        if dropout_mask not in ("group", "sequence"):
            raise ValueError(f"dropout_mask must be group|sequence, got {dropout_mask!r}")
        self.d_in, self.hidden, self.layers, self.heads = d_in, hidden, layers, heads
        self.score_temperature = float(score_temperature)
        self.dropout_p, self.attn_dropout_p, self.dropout_mask = float(dropout), float(attn_dropout), dropout_mask

    def project(self, x: Tensor) -> Tensor:
        """The input projection, [..., d_in] -> [..., h] (deterministic: no dropout before it)."""
        raise NotImplementedError

    def attend(self, q: Tensor, c: Tensor, pool_mask: Tensor) -> Encoded:
        """The encoder after the input projection: q [B, h], c [B, K, h], pool_mask [B, K] -> Encoded."""
        raise NotImplementedError

    def encode(self, query: Tensor, pool: Tensor, pool_mask: Tensor | None = None) -> Encoded:
        """Encode each query once against its pool.

        query [B, d_in], pool [B, K, d_in], pool_mask [B, K] bool (True = real item;
        None = all real). Each query needs at least one real candidate.
        """
        pool_mask = self._inputs(query, pool, pool_mask)
        return self.attend(self.project(query), self.project(pool), pool_mask)

    def gate_layer(self) -> nn.Linear:
        """The linear map of the gate g = sigmoid(W [q; c] + b)."""
        raise NotImplementedError

    def config(self) -> dict:
        """Constructor arguments, enough to rebuild the model before loading weights (a subclass adds its own)."""
        return dict(
            d_in=self.d_in,
            hidden=self.hidden,
            layers=self.layers,
            heads=self.heads,
            dropout=self.dropout_p,
            score_temperature=self.score_temperature,
            attn_dropout=self.attn_dropout_p,
            dropout_mask=self.dropout_mask,
            head_config=self.heads_cfg,
        )

    def backbone_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def _inputs(self, query: Tensor, pool: Tensor, pool_mask: Tensor | None) -> Tensor:
        """Check shapes and return the pool mask [B, K] (None = all real)."""
        B, K, _ = pool.shape
        if query.shape != (B, self.d_in) or pool.shape[-1] != self.d_in:
            raise ValueError(
                f"expected query [B, {self.d_in}] and pool [B, K, {self.d_in}], got {tuple(query.shape)} and {tuple(pool.shape)}"
            )
        if pool_mask is None:
            pool_mask = torch.ones(B, K, dtype=torch.bool, device=pool.device)
        if not bool(pool_mask.any(-1).all()):
            raise ValueError("every query needs at least one real candidate (pool_mask row all False)")
        return pool_mask

    # ---- backbone freezing -------------------------------------------------

    def set_backbone_frozen(self, frozen: bool) -> None:
        """Freeze (requires_grad False) or unfreeze the backbone; the heads stay trainable."""
        for p in self.backbone_parameters():
            p.requires_grad_(not frozen)

    def trainable_fraction(self) -> float:
        """Share of parameters (by element count) with requires_grad True."""
        total = sum(p.numel() for p in self.parameters())
        live = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return live / total

    # ---- training entry point ----------------------------------------------

    def score_sequences(self, query: Tensor, pool: Tensor, pool_mask: Tensor, pointers: Tensor, seq_mask: Tensor) -> Tensor:
        """log p of every sequence: [B, G].

        query [B, d_in], pool [B, K, d_in], pool_mask [B, K], pointers [B, G, L], seq_mask [B, G].
        dropout_mask "group" (or eval mode): one encoding per query, so every sequence of a
        group sees the same dropout mask. "sequence" in training: every sequence is encoded
        on its own (query and pool repeated G times), with its own masks, as the original did.
        """
        if not (self.training and self.dropout_mask == "sequence"):
            return self.sequence_logprobs(self.encode(query, pool, pool_mask), pointers, seq_mask)
        B, G, L = pointers.shape
        pool_mask = self._inputs(query, pool, pool_mask)
        q, c = self.project(query), self.project(pool)  # once per query: nothing random comes before
        enc = self.attend_each(q, c, pool_mask, G)  # B*G encodings
        logp = self.sequence_logprobs(enc, pointers.reshape(B * G, 1, L), seq_mask.reshape(B * G, 1))  # [B*G, 1]
        return logp.view(B, G)

    def score_picks(
        self, query: Tensor, pool: Tensor, pool_mask: Tensor, pointers: Tensor, seq_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """log p of every pick and the distribution it was drawn from: ([B, G, L], [B, G, L, K]).

        The same encoding and dropout masks as `score_sequences` (whose value is the picks' sum), through
        autograd: per-pick ratios and entropies need the parts the fused node does not return. 0 (a
        distribution of zeros) where seq_mask is False.
        """
        B, G, L = pointers.shape
        if not (self.training and self.dropout_mask == "sequence"):
            dist = self.log_policy(self.encode(query, pool, pool_mask), pointers, seq_mask)  # [B, G, L, K]
        else:  # a mask per sequence: every sequence is its own encoding, as in score_sequences
            pool_mask = self._inputs(query, pool, pool_mask)
            enc = self.attend_each(self.project(query), self.project(pool), pool_mask, G)
            dist = self.log_policy(enc, pointers.reshape(B * G, 1, L), seq_mask.reshape(B * G, 1)).view(B, G, L, -1)
        real = seq_mask.unsqueeze(-1)  # [B, G, 1]
        picks = dist.gather(-1, _real_only(pointers, seq_mask).unsqueeze(-1)).squeeze(-1)  # [B, G, L]
        picks = torch.where(real, picks, torch.zeros_like(picks))
        dist = torch.where(real.unsqueeze(-1), dist, torch.zeros_like(dist))
        return picks, dist

    def attend_each(self, q: Tensor, c: Tensor, pool_mask: Tensor, G: int) -> Encoded:
        """G encodings of each query, each with its own dropout draws: q [B, h], c [B, K, h] -> Encoded of
        B*G rows (query b's copies at rows b*G .. b*G + G - 1). Here: `attend` on G copies; an architecture
        may compute the same thing without copying (original.py)."""
        return self.attend(q.repeat_interleave(G, 0), c.repeat_interleave(G, 0), pool_mask.repeat_interleave(G, 0))

    # ---- one decoding step, shared by training and inference ---------------

    heads_cfg: HeadConfig = HeadConfig()

    def _candidates(self, enc: Encoded) -> tuple[Tensor, Tensor]:
        """The pickable candidates and what is blocked before any pick: ([B, K', h], [B, K'] bool).

        K' = K, or K + 1 with the STOP candidate last (model.stop; never blocked, it is no pool item).
        """
        if not self.heads_cfg.stop:
            return enc.cand, ~enc.pool_mask
        B, h = enc.cand.shape[0], enc.cand.shape[-1]
        stop = F.normalize(self.stop_token, dim=-1).to(enc.cand.dtype).expand(B, 1, h)  # [B, 1, h]
        free = torch.zeros(B, 1, dtype=torch.bool, device=enc.cand.device)
        return torch.cat([enc.cand, stop], dim=1), torch.cat([~enc.pool_mask, free], dim=1)

    def _row(self, t: int) -> int:
        """The per-step table row of step t: a step past the table reuses its last row."""
        return min(t, self.heads_cfg.steps - 1)

    def _scores(self, q: Tensor, cand: Tensor, t: int) -> Tensor:
        """Step t's scores before masking: q [B, G, h], cand [B, K', h] -> [B, G, K'] (heads.py has the formulas)."""
        cfg = self.heads_cfg
        if cfg.step_emb:
            q = F.normalize(q + self.step_emb.weight[self._row(t)], dim=-1)
        if cfg.scoring == "additive":
            mix = torch.tanh(self.attn_Wq(q).unsqueeze(2) + self.attn_Wc(cand).unsqueeze(1))  # [B, G, K', h]
            return self.attn_v(mix).squeeze(-1) / self.score_temperature
        if cfg.scoring == "bilinear":
            return torch.einsum("bgi,ij,bkj->bgk", q, self.bilinear.weight[0], cand) / self.score_temperature
        return torch.einsum("bgh,bkh->bgk", q, cand) / self.score_temperature  # [B, G, K']

    def _step_logp(self, q: Tensor, cand: Tensor, blocked: Tensor, t: int = 0, redundancy: Tensor | None = None) -> Tensor:
        """log_softmax_k(scores), blocked k at -inf. q [B, G, h] -> [B, G, K'].

        redundancy [B, G, K'] (diversity mmr, t > 0) is subtracted, weighted by softplus(div_lambda[t]).
        Computed in at least float32 so half/bfloat16 models give stable log-probs.
        """
        scores = self._scores(q, cand, t)  # [B, G, K']
        if redundancy is not None:
            scores = scores - F.softplus(self.div_lambda[self._row(t)]) * redundancy
        scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
        return scores.masked_fill(blocked, float("-inf")).log_softmax(-1)

    def _advance(self, q: Tensor, cand: Tensor, picked: Tensor) -> Tensor:
        """The query state after a pick (model.update): gate g = sigmoid(W [q; c] + b), q <- normalise(g*q + (1-g)*c);
        gru q <- normalise(GRUCell(c, q)); none q stays. q [B, G, h], cand [B, K', h], picked [B, G] long -> [B, G, h].
        """
        update = self.heads_cfg.update
        if update == "none":
            return q
        rows = torch.arange(cand.shape[0], device=cand.device).unsqueeze(1)  # [B, 1]
        chosen = cand[rows, picked]  # [B, G, h]
        if update == "gru":
            h = q.shape[-1]
            return F.normalize(self.decoder_gru(chosen.reshape(-1, h), q.reshape(-1, h)).view(q.shape), dim=-1)
        g = torch.sigmoid(self.gate_layer()(torch.cat([q, chosen], dim=-1)))  # [B, G, h]
        return F.normalize(g * q + (1 - g) * chosen, dim=-1)

    def _redundancy(self, cand: Tensor, picked: Tensor, state: tuple[Tensor, Tensor] | None, t: int):
        """MMR redundancy after t + 1 picks: (running max, running sum) of <c_k, c_picked>, and the one step t + 1 uses.

        cand [B, K', h], picked [B, G] -> ([B, G, K'], [B, G, K']), [B, G, K'] (max, or sum / (t + 1) for "mean").
        """
        rows = torch.arange(cand.shape[0], device=cand.device).unsqueeze(1)  # [B, 1]
        sim = torch.einsum("bkh,bgh->bgk", cand, cand[rows, picked])  # [B, G, K']
        hi, total = (sim, sim) if state is None else (torch.maximum(state[0], sim), state[1] + sim)
        use = hi if self.heads_cfg.mmr_reduction == "max" else total / (t + 1)
        return (hi, total), use

    # ---- teacher forcing ---------------------------------------------------

    def log_policy(self, enc: Encoded, pointers: Tensor, seq_mask: Tensor | None = None) -> Tensor:
        """Teacher-forced per-step distributions: [B, G, L, K'] log-probs (K' = K, or K + 1 with STOP last).

        Step t's distribution conditions on pointers[..., :t]. The query state is
        expanded (a view) to [B, G, h]; candidates are never copied per sequence.
        Padded sequences (seq_mask False) may hold garbage pointers: their labels are
        replaced by 0 and they do not block picked items, so every row keeps a finite
        entry and no NaN can reach the gradients. A label equal to K (STOP) ends its
        sequence: later steps put all their mass on STOP, as the original forces them.
        """
        B, G, L = pointers.shape
        cand, blocked0 = self._candidates(enc)
        K = cand.shape[1]
        if L < 1:
            raise ValueError("pointers need at least one step")
        if seq_mask is None:
            seq_mask = torch.ones(B, G, dtype=torch.bool, device=pointers.device)
        pointers = _real_only(pointers, seq_mask)
        q = enc.q.unsqueeze(1).expand(B, G, enc.q.shape[-1])  # [B, G, h], no copy
        blocked = blocked0.unsqueeze(1).expand(B, G, K)  # [B, G, K]
        stop = self.heads_cfg.stop
        ended = torch.zeros(B, G, dtype=torch.bool, device=pointers.device) if stop else None
        mmr, redundancy = None, None
        steps = []
        for t in range(L):
            logp = self._step_logp(q, cand, blocked, t, redundancy)  # [B, G, K]
            if stop and bool(ended.any()):
                only_stop = torch.full((K,), float("-inf"), dtype=logp.dtype, device=logp.device)
                only_stop[K - 1] = 0.0
                logp = torch.where(ended.unsqueeze(-1), only_stop, logp)
            steps.append(logp)
            label = pointers[..., t]  # [B, G]
            # Only real sequences block what they picked (out of place: autograd keeps `blocked`); STOP stays free.
            picked = F.one_hot(label, K).bool() & seq_mask.unsqueeze(-1)
            if stop:
                picked[..., K - 1] = False
                ended = ended | (label == K - 1)
            blocked = blocked | picked
            if t + 1 < L:
                if self.heads_cfg.diversity == "mmr":
                    mmr, redundancy = self._redundancy(cand, label, mmr, t)
                q_next = self._advance(q, cand, label)
                q = torch.where(ended.unsqueeze(-1), q, q_next) if stop else q_next
        return torch.stack(steps, dim=2)  # [B, G, L, K]

    def sequence_logprobs(self, enc: Encoded, pointers: Tensor, seq_mask: Tensor) -> Tensor:
        """log p(seq) = sum_t log_softmax(scores_t)[pointers_t]; 0 where seq_mask is False.

        pointers [B, G, L] long, seq_mask [B, G] bool -> [B, G].
        """
        logp = self.log_policy(enc, pointers, seq_mask)  # [B, G, L, K]
        labels = _real_only(pointers, seq_mask).unsqueeze(-1)  # [B, G, L, 1]
        per_step = logp.gather(-1, labels).squeeze(-1)  # [B, G, L]
        total = per_step.sum(-1)  # [B, G]
        # where (not multiply): a padded -inf must become 0, and its gradient 0, not NaN.
        return torch.where(seq_mask, total, torch.zeros_like(total))

    # ---- inference ---------------------------------------------------------

    @torch.no_grad()
    def decode(
        self,
        enc: Encoded,
        steps: int,
        greedy: bool = True,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
    ) -> Tensor:
        """Pick `steps` distinct real candidates per query: [B, steps] long.

        greedy: argmax of the step scores; else sample from softmax(scores / temperature)
        with `generator`. Any number of steps up to the smallest real pool size.
        With a STOP candidate (model.stop) a selection may end early: the STOP pick and
        every step after it are -1 (no demonstration), so `steps` is a cap.
        """
        B, K = enc.pool_mask.shape
        n_real = int(enc.pool_mask.sum(-1).min())
        if steps < 1 or steps > n_real:
            raise ValueError(f"steps must be in 1..{n_real} (smallest real pool), got {steps}")
        cand, blocked = self._candidates(enc)  # [B, K', h], [B, K']
        Kc = cand.shape[1]
        q = enc.q.unsqueeze(1)  # [B, 1, h]
        blocked = blocked.unsqueeze(1)  # [B, 1, K']
        ended = torch.zeros(B, 1, dtype=torch.bool, device=q.device)
        mmr, redundancy = None, None
        picks = []
        for t in range(steps):
            logp = self._step_logp(q, cand, blocked, t, redundancy)  # [B, 1, K']
            if greedy:
                label = logp.argmax(-1)  # [B, 1]
            else:
                probs = (logp / temperature).softmax(-1).squeeze(1)  # [B, K']
                label = torch.multinomial(probs, 1, generator=generator)  # [B, 1]
            ended = ended | (label == K)  # only a STOP candidate has index K
            picks.append(torch.where(ended, torch.full_like(label, -1), label))
            blocked = blocked | F.one_hot(label, Kc).bool()
            if t + 1 < steps:
                if self.heads_cfg.diversity == "mmr":
                    mmr, redundancy = self._redundancy(cand, label, mmr, t)
                q = torch.where(ended.unsqueeze(-1), q, self._advance(q, cand, label))
        return torch.cat(picks, dim=1)  # [B, steps]


class PointerSelector(SelectorBase):
    """Lever's pointer network over a pool of K candidate demonstrations (docs/architecture.md).

    The input projection is shared by query and candidates: both are items of the
    same CLIP space (mean of image and question embeddings), so one map keeps them
    comparable and costs half the parameters of two maps. The separate query/candidate
    projections after the encoder give each side its own freedom.

    Backbone = input projection + cross-attention layers (the encoder). Frozen, it
    leaves the output projections and the gate trainable: 40% of the parameters at
    the default sizes (d_in 512, hidden 256, 1 layer).

    Options that reproduce the original's choices: proj_bias False (its projections have
    no bias), init "xavier" (xavier-uniform input projection and gate, zero gate bias),
    attn_dropout 0.1, dropout_mask "sequence".
    """

    def __init__(
        self,
        d_in: int = 512,
        hidden: int = 256,
        layers: int = 1,
        heads: int = 1,
        dropout: float = 0.1,
        score_temperature: float = 0.1,
        attn_dropout: float = 0.0,
        dropout_mask: str = "group",
        proj_bias: bool = True,
        init: str = "default",
        head_config: HeadConfig = HeadConfig(),
    ):
        super().__init__()
        self._settings(d_in, hidden, layers, heads, dropout, score_temperature, attn_dropout, dropout_mask)
        if init not in ("default", "xavier"):
            raise ValueError(f"init must be default|xavier, got {init!r}")
        self.proj_bias, self.init = bool(proj_bias), init

        self.input_proj = nn.Linear(d_in, hidden, bias=False)
        self.cross = nn.ModuleList(CrossAttentionLayer(hidden, heads, attn_dropout) for _ in range(layers))
        self.dropout = nn.Dropout(dropout)
        self.query_proj = nn.Linear(hidden, hidden, bias=proj_bias)
        self.cand_proj = nn.Linear(hidden, hidden, bias=proj_bias)
        if head_config.update == "gate":
            self.gate = nn.Linear(2 * hidden, hidden)
        if init == "xavier":
            nn.init.xavier_uniform_(self.input_proj.weight)
            if head_config.update == "gate":
                nn.init.xavier_uniform_(self.gate.weight)
                nn.init.zeros_(self.gate.bias)
        near_identity(self.query_proj)
        near_identity(self.cand_proj)
        add_heads(self, hidden, head_config)
        self.param_names = [name for name, _ in self.named_parameters()]  # fused.py's gradient order

    # Train through the one-node forward and backward of lever/model/fused.py where it applies (the
    # same numbers up to float rounding; a batch-1 RCE epoch 15-27% faster on a CPU); False = the autograd path.
    fused: bool = True

    def config(self) -> dict:
        return {**super().config(), "proj_bias": self.proj_bias, "init": self.init}

    def score_sequences(self, query: Tensor, pool: Tensor, pool_mask: Tensor, pointers: Tensor, seq_mask: Tensor) -> Tensor:
        if fused.applies(self, query):
            return fused.score_sequences(self, query, pool, self._inputs(query, pool, pool_mask), pointers, seq_mask)
        return super().score_sequences(query, pool, pool_mask, pointers, seq_mask)

    def gate_layer(self) -> nn.Linear:
        return self.gate

    # ---- backbone freezing -------------------------------------------------

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Encoder parameters: the shared input projection and every cross-attention layer."""
        return [*self.input_proj.parameters(), *self.cross.parameters()]

    # ---- encoding ----------------------------------------------------------

    def project(self, x: Tensor) -> Tensor:
        """The shared input projection: [..., d_in] -> [..., h]."""
        return self.input_proj(x.to(self.input_proj.weight.dtype))

    def attend(self, q: Tensor, c: Tensor, pool_mask: Tensor) -> Encoded:
        """Cross-attention, dropout, output projections: q [B, h], c [B, K, h], pool_mask [B, K] -> Encoded."""
        for layer in self.cross:
            q = layer(q, c, ~pool_mask)  # [B, h]
        q = F.normalize(self.query_proj(self.dropout(q)), dim=-1)  # [B, h]
        c = F.normalize(self.cand_proj(self.dropout(c)), dim=-1)  # [B, K, h]
        return Encoded(q=q, cand=c, pool_mask=pool_mask)
