"""Lever's selector scored in one autograd node: the forward of `score_sequences` and its gradient by hand.

Why: at batch 1 a training step builds and then walks an autograd graph of ~160 nodes for a
few hundred small tensor ops, and that bookkeeping, more than the arithmetic, sets the step
time on a CPU (a batch-1 RCE step on one thread: ~5 ms, of which the matrix products are under
1 ms). Here the same forward (the same products, the same dropout draws in the same order) is
one node whose backward is written out below: a step's graph has ~24 nodes (this one, the
loss's, the parameters' accumulators). Measured with benchmarks/bench_train.py on 2 shared
cores (four runs, each the best of 5 with both paths alternated in the run), at batch 1: an
RCE epoch 3.18-3.54 s -> 2.59-2.80 s, GRPO 3.35-3.59 s -> 2.71-3.14 s; at batch 32: RCE
1.02 s -> 0.77 s, GRPO 0.91 s -> 0.72 s. It also runs fewer tensor ops (~405 a step instead of ~480: fewer kernel launches on a GPU).

`applies(model)` says when it is used: lever's architecture in float32, training with autograd
on, no attention dropout and one dropout mask per group while training (the defaults). Anything
else takes the autograd path (`SelectorBase.score_sequences`), which stays the definition: the
tests check this one's values and every parameter's gradient against it (and against finite
differences), with padded groups and pools, several heads, layers and shots, dropout on and
off, a frozen backbone. The two agree to float rounding; over many Adam steps at batch 1 such
rounding differences grow (see tests/test_run.py, STORED_GRPO).

Notation as in selector.py: B queries, K pool items, G sequences, L steps, h hidden, n heads,
d = h / n. Each backward formula is next to the forward line it differentiates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from .selector import PointerSelector

EPS = 1e-12  # F.normalize's


def applies(model: PointerSelector, query: Tensor) -> bool:
    """True when the fused node computes what the autograd path would, up to float rounding (module docstring)."""
    return (
        model.fused
        and model.heads_cfg.plain  # the V4 heads train through autograd
        and torch.is_grad_enabled()
        and query.dtype == torch.float32
        and model.input_proj.weight.dtype == torch.float32
        and not (model.training and (model.attn_dropout_p > 0 or model.dropout_mask == "sequence"))
    )


def score_sequences(model: PointerSelector, query: Tensor, pool: Tensor, pool_mask: Tensor, pointers: Tensor, seq_mask: Tensor):
    """log p of every sequence, [B, G], as `SelectorBase.score_sequences` (inputs already checked)."""
    x = torch.cat([query.unsqueeze(1), pool], dim=1)  # [B, 1 + K, d_in]: one projection for both
    return _Scores.apply(model, x, pool_mask, pointers, seq_mask, *model.parameters())


def _normalize(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """y = x / max(|x|, eps) over the last dim (F.normalize), with |x| and the divisor for the backward."""
    n = x.norm(dim=-1, keepdim=True)
    m = n.clamp_min(EPS)
    return x / m, n, m


def _normalize_back(dy: Tensor, y: Tensor, n: Tensor, m: Tensor) -> Tensor:
    """dx = (dy - [|x| >= eps] (y . dy) y) / max(|x|, eps)."""
    dot = (y * dy).sum(-1, keepdim=True)
    return (dy - torch.where(n >= EPS, dot, torch.zeros_like(dot)) * y) / m


def _flat(x: Tensor) -> Tensor:
    """[..., f] -> [rows, f] (a weight gradient sums over every leading dim)."""
    return x.reshape(-1, x.shape[-1])


class _Scores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, model, x, pool_mask, pointers, seq_mask, *params):  # type: ignore[override]
        B, K, h = x.shape[0], pool_mask.shape[1], model.hidden
        P = F.linear(x, model.input_proj.weight)  # [B, 1 + K, h]
        q, c = P[:, 0], P[:, 1:]  # [B, h], [B, K, h]
        pad = (~pool_mask).unsqueeze(1)  # [B, 1, K]
        layers = []
        for layer in model.cross:  # CrossAttentionLayer.forward (matmuls for its einsums)
            n, d = layer.heads, layer.d_head
            qh = F.linear(q, layer.q.weight, layer.q.bias)  # [B, h]
            u = (qh.view(B, n, 1, d) @ layer.k.weight.view(n, d, h)).view(B, n, h)  # W_k^T (W_q q + b_q)
            a = ((u @ c.transpose(1, 2)) / d**0.5).masked_fill(pad, float("-inf")).softmax(-1)  # [B, n, K]
            mix = a @ c  # [B, n, h]
            v = (mix.view(B, n, 1, h) @ layer.v.weight.view(n, d, h).transpose(1, 2)).view(B, h) + layer.v.bias
            y = q + F.linear(v, layer.out.weight, layer.out.bias)  # [B, h]
            out, mean, rstd = torch.native_layer_norm(y, [h], layer.norm.weight, layer.norm.bias, layer.norm.eps)
            layers.append((q, qh, u, a, mix, v, y, mean, rstd))
            q = out
        # Dropout noise (0 or 1 / (1 - p)) drawn by F.dropout itself, query first as in attend(): the same
        # random draws as the autograd path on a CPU or a GPU, kept for the backward.
        p = model.dropout_p if model.training else 0.0
        noise_q = F.dropout(torch.ones_like(q), p, training=True) if p > 0 else None
        noise_c = F.dropout(torch.ones_like(c), p, training=True) if p > 0 else None
        qd = q * noise_q if noise_q is not None else q
        cd = c * noise_c if noise_c is not None else c
        qf, norm_q, div_q = _normalize(F.linear(qd, model.query_proj.weight, model.query_proj.bias))  # [B, h]
        C, norm_c, div_c = _normalize(F.linear(cd, model.cand_proj.weight, model.cand_proj.bias))  # [B, K, h]

        # Teacher-forced decoding (SelectorBase.log_policy); Q starts as [B, 1, h], shared by the group.
        G, L = pointers.shape[1:]
        labels = torch.where(seq_mask.unsqueeze(-1), pointers, torch.zeros_like(pointers))  # [B, G, L]
        blocked = pad.expand(B, G, K)
        rows = torch.arange(B, device=x.device).unsqueeze(1)  # [B, 1]
        Wg, bg = model.gate.weight, model.gate.bias
        T = model.score_temperature
        Q = qf.unsqueeze(1)  # [B, 1, h]
        total = torch.zeros(B, G, device=x.device)
        steps = []
        for t in range(L):
            lp = ((Q @ C.transpose(1, 2)) / T).masked_fill(blocked, float("-inf")).log_softmax(-1)  # [B, G, K]
            label = labels[..., t]  # [B, G]
            total = total + lp.gather(-1, label.unsqueeze(-1)).squeeze(-1)
            step: dict[str, Tensor] = {"Q": Q, "lp": lp, "label": label}
            if t + 1 < L:  # g = sigmoid(W [Q; c] + b) = sigmoid(W_1 Q + W_2 c + b), Q <- normalise(g Q + (1 - g) c)
                blocked = blocked | (F.one_hot(label, K).bool() & seq_mask.unsqueeze(-1))  # real sequences block their pick
                chosen = C[rows, label]  # [B, G, h]
                g = torch.sigmoid(F.linear(Q, Wg[:, :h], bg) + F.linear(chosen, Wg[:, h:]))  # [B, G, h]
                Q, nr, mr = _normalize(g * Q + (1 - g) * chosen)
                step.update(chosen=chosen, g=g, Qn=Q, nr=nr, mr=mr)
            steps.append(step)
        ctx.model, ctx.layers, ctx.steps, ctx.names = model, layers, steps, model.param_names
        ctx.save_for_backward(x, seq_mask)
        ctx.head = (c, noise_q, noise_c, qd, cd, qf, norm_q, div_q, C, norm_c, div_c)
        return torch.where(seq_mask, total, torch.zeros_like(total))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dlogp):  # type: ignore[override]
        model = ctx.model
        x, seq_mask = ctx.saved_tensors
        c, noise_q, noise_c, qd, cd, qf, norm_q, div_q, C, norm_c, div_c = ctx.head
        B, K, h = C.shape
        Wg = model.gate.weight
        T = model.score_temperature
        rows = torch.arange(B, device=x.device).unsqueeze(1)
        dtot = torch.where(seq_mask, dlogp, torch.zeros_like(dlogp))  # [B, G]: padded sequences carry none
        dC = torch.zeros_like(C)
        dW1, dW2, dbg = 0.0, 0.0, 0.0  # the gate's gradient: W = [W_1 | W_2] and b, summed over the steps
        dQ: Tensor | None = None  # d/dQ_{t+1}, the state after step t's gate
        for t in reversed(range(len(ctx.steps))):
            s = ctx.steps[t]
            Q, label = s["Q"], s["label"]
            shared = Q.shape[1] == 1  # step 0: Q [B, 1, h] broadcast over the group
            # lp = log_softmax(Q C^T / T masked): the gather puts dtot on the label, softmax spreads it
            dlp = torch.zeros_like(s["lp"]).scatter_(-1, label.unsqueeze(-1), dtot.unsqueeze(-1))
            dS = torch._log_softmax_backward_data(dlp, s["lp"], -1, torch.float32) / T  # [B, G, K]; 0 where blocked
            if shared:
                dS = dS.sum(1, keepdim=True)
            dQt = dS @ C
            dC += dS.transpose(1, 2) @ Q
            if dQ is not None:  # and through the gate to Q_{t+1}
                dr = _normalize_back(dQ, s["Qn"], s["nr"], s["mr"])  # [B, G, h]
                g, ch = s["g"], s["chosen"]
                dz = dr * (Q - ch) * g * (1 - g)  # through r = g Q + (1 - g) c and g = sigmoid(z)
                dzQ = dz.sum(1, keepdim=True) if shared else dz
                dW1 = dW1 + _flat(dzQ).T @ _flat(Q)
                dW2 = dW2 + _flat(dz).T @ _flat(ch)
                dbg = dbg + _flat(dz).sum(0)
                drg = dr * g
                dQt = dQt + (drg.sum(1, keepdim=True) if shared else drg) + dzQ @ Wg[:, :h]
                dch = dr * (1 - g) + dz @ Wg[:, h:]  # [B, G, h]
                dC.index_put_((rows.expand_as(label), label), dch, accumulate=True)  # chosen = C[rows, label]
            dQ = dQt
        assert dQ is not None
        # One step (L = 1) never uses the gate: no gradient, as autograd (AdamW then leaves it alone).
        grads: dict[str, Tensor] = {}
        if len(ctx.steps) > 1:
            grads["gate.weight"], grads["gate.bias"] = torch.cat([dW1, dW2], dim=1), dbg  # type: ignore[list-item]
        # Output projections and dropout.
        dqr = _normalize_back(dQ.squeeze(1), qf, norm_q, div_q)  # [B, h]
        dcr = _normalize_back(dC, C, norm_c, div_c)  # [B, K, h]
        grads["query_proj.weight"], grads["cand_proj.weight"] = dqr.T @ qd, _flat(dcr).T @ _flat(cd)
        if model.proj_bias:
            grads["query_proj.bias"], grads["cand_proj.bias"] = dqr.sum(0), _flat(dcr).sum(0)
        # The encoder, only when it trains (freeze_backbone stops here).
        if model.input_proj.weight.requires_grad or any(p.requires_grad for p in model.cross.parameters()):
            dq, dc = dqr @ model.query_proj.weight, dcr @ model.cand_proj.weight
            if noise_q is not None:
                dq, dc = dq * noise_q, dc * noise_c
            for i in reversed(range(len(model.cross))):
                layer = model.cross[i]
                q_in, qh, u, a, mix, v, y, mean, rstd = ctx.layers[i]
                n, d = layer.heads, layer.d_head
                dy, dgamma, dbeta = torch.ops.aten.native_layer_norm_backward(
                    dq, y, [h], mean, rstd, layer.norm.weight, layer.norm.bias, [True, True, True]
                )
                dWo, dbo, dv = dy.T @ v, dy.sum(0), dy @ layer.out.weight  # y = q + W_o v + b_o
                dvh = dv.view(B, n, 1, d)
                dWv = (dvh.squeeze(2).permute(1, 2, 0) @ mix.transpose(0, 1)).reshape(h, h)  # v_n = W_v,n mix_n
                dmix = (dvh @ layer.v.weight.view(n, d, h)).view(B, n, h)
                da = dmix @ c.transpose(1, 2)  # [B, n, K]; mix = a c
                dc = dc + a.transpose(1, 2) @ dmix
                dlog = torch._softmax_backward_data(da, a, -1, torch.float32) / d**0.5  # 0 at padded k
                du = dlog @ c  # [B, n, h]; logits = u c^T / sqrt(d)
                dc = dc + dlog.transpose(1, 2) @ u
                dqh = (du.view(B, n, 1, h) @ layer.k.weight.view(n, d, h).transpose(1, 2)).view(B, h)  # u_n = W_k,n^T qh_n
                dWk = (qh.view(B, n, d).permute(1, 2, 0) @ du.transpose(0, 1)).reshape(h, h)
                pre = f"cross.{i}."
                grads[pre + "q.weight"], grads[pre + "q.bias"], grads[pre + "k.weight"] = dqh.T @ q_in, dqh.sum(0), dWk
                grads[pre + "v.weight"], grads[pre + "v.bias"] = dWv, dv.sum(0)
                grads[pre + "out.weight"], grads[pre + "out.bias"] = dWo, dbo
                grads[pre + "norm.weight"], grads[pre + "norm.bias"] = dgamma, dbeta
                dq = dy + dqh @ layer.q.weight  # the residual and the query map
            dP = torch.cat([dq.unsqueeze(1), dc], dim=1)  # [B, 1 + K, h]
            grads["input_proj.weight"] = _flat(dP).T @ _flat(x)
        # Gradients in the order of model.parameters(), the node's inputs; a trained one without one is a bug here.
        out = [grads.pop(name, None) for name in ctx.names]
        if grads:
            raise RuntimeError(f"the fused selector computed gradients for unknown parameters {sorted(grads)}")
        missing = [n for n, g, p in zip(ctx.names, out, model.parameters()) if g is None and p.requires_grad]
        if missing and not (len(ctx.steps) == 1 and all(n.startswith("gate.") for n in missing)):
            raise RuntimeError(f"the fused selector has no gradient for {missing}; set model.fused = False")
        return (None, None, None, None, None, *out)
