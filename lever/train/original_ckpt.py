"""The original project's selector checkpoints, both ways (arch "lever-plus-v3" only; lever/model/original.py), its V4
heads included (lever/model/heads.py: their parameters keep the original's names, so they map unchanged).

Formats, detected from the file's contents:

- v3: `torch.save({"model_state_dict": {...}, "epoch", "phase", "kl_beta", "metrics"})` (its GRPO trainer's
  per-epoch file; or the bare state dict), keys as
  `LeverPlusV3Selector`'s: input_proj.weight, cross_attn_layers.{i}.*, attn_norms.{i}.*, query_proj.weight,
  cand_proj.weight, query_update_gate.* (or a V4 head's: decoder_gru.*, step_emb.weight, div_lambda, attn_W*, attn_v.weight,
  bilinear.weight, stop_token). Its V4 trainers add `model_type` (v4_2 ... v4_10) and a few flags; lever writes them
  too and reads the heads from the key names (`head_settings`).
- v2: a PyTorch Lightning checkpoint `{"state_dict": {"lever_lm.pointer_selector.<key>": ...}, "epoch",
  "global_step", "pytorch-lightning_version", "hyper_parameters"}` of a ONE-layer selector, where layer 0's
  keys are named cross_attn.* and attn_norm.* (the key mapping of the original's
  scripts/convert_v3_to_v2_format.py). Other `lever_lm.*` weights (its CLIP encoders) are not the selector's
  and are ignored.

Reading never unpickles code unless asked: `torch.load(weights_only=True)` first; a file that needs
more (e.g. Lightning hyper-parameters pickled as objects) is refused with the reason, unless the caller
trusts it (`start.trust_pickle = true`).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from lever.errors import LeverError
from lever.io import atomic_write

from .checkpoint import State

V2_PREFIX = "lever_lm.pointer_selector."
V3_MARKERS = ("query_proj.weight", "cand_proj.weight")


def _load(path: Path, trust: bool) -> Any:
    if not path.is_file():
        raise LeverError(f"checkpoint {path} does not exist")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save's zip archive, or a legacy pickle
        raise LeverError(
            f"checkpoint {path} is not a PyTorch checkpoint (neither torch.save's zip archive nor a pickle)",
            hint="start.checkpoint takes the original's v2 / v3 .ckpt files, or a lever .safetensors checkpoint",
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as err:
        if not trust:
            reason = str(err).strip().splitlines()[0][:300]
            raise LeverError(
                f"checkpoint {path} holds pickled objects besides tensors, and loading them would run code from the file "
                f"({reason})",
                hint="if you trust the file, set start.trust_pickle = true in the plan (or convert it once with "
                "`lever export` after a trusted load)",
            ) from None
    except Exception as err:
        raise LeverError(f"checkpoint {path} could not be read: {type(err).__name__}: {err}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise LeverError(f"checkpoint {path} could not be read: {type(err).__name__}: {err}") from None


def _tensors(d: Any) -> bool:
    return isinstance(d, dict) and bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())


def from_v2_keys(state: dict[str, torch.Tensor]) -> State:
    """v2 names -> LeverPlusV3Selector names (one layer); keys outside the pointer selector are dropped."""
    out = {}
    for key, value in state.items():
        if not key.startswith(V2_PREFIX):
            continue
        k = key[len(V2_PREFIX) :].replace("cross_attn.", "cross_attn_layers.0.", 1).replace("attn_norm.", "attn_norms.0.", 1)
        out[k] = value.detach().float().contiguous()
    return out


def to_v2_keys(state: State) -> dict[str, torch.Tensor]:
    """LeverPlusV3Selector names -> v2 names; v2 has one attention layer, so a deeper model cannot map."""
    deeper = sorted(
        {k.split(".")[1] for k in state if k.startswith("cross_attn_layers.") and not k.startswith("cross_attn_layers.0.")}
    )
    if deeper:
        raise LeverError(
            f"the checkpoint has {len(deeper) + 1} attention layers; the original's v2 format holds exactly one",
            hint="export a plan with model.layers = 1, or use the v3 weights (lever's safetensors keep the original's names)",
        )
    out = {}
    for k, v in state.items():
        name = k.replace("cross_attn_layers.0.", "cross_attn.", 1).replace("attn_norms.0.", "attn_norm.", 1)
        out[V2_PREFIX + name] = v
    return out


def load_original(path: Path, trust: bool = False) -> tuple[State, str]:
    """(weights with LeverPlusV3Selector names, "v2" | "v3") from an original checkpoint file."""
    obj = _load(Path(path), trust)
    if isinstance(obj, dict) and _tensors(obj.get("state_dict")) and any(k.startswith(V2_PREFIX) for k in obj["state_dict"]):
        state, fmt = from_v2_keys(obj["state_dict"]), "v2"
    elif isinstance(obj, dict) and _tensors(obj.get("model_state_dict")):
        state, fmt = obj["model_state_dict"], "v3"
    elif _tensors(obj) and all(m in obj for m in V3_MARKERS):
        state, fmt = obj, "v3"
    else:
        keys = ", ".join(list(obj)[:6]) if isinstance(obj, dict) else type(obj).__name__
        raise LeverError(
            f"checkpoint {path} is not one of the original's selector checkpoints (found: {keys})",
            hint="expected a v2 Lightning checkpoint (state_dict with lever_lm.pointer_selector.* keys) "
            "or a v3 one (model_state_dict with query_proj / cand_proj / cross_attn_layers.* keys)",
        )
    state = {k: v.detach().float().contiguous() for k, v in state.items()}
    return state, fmt


def head_settings(state: State) -> dict[str, Any]:
    """The model.* head settings (lever/model/heads.py) that a V4 state dict's keys and shapes imply.

    query_update_gate -> update gate, decoder_gru -> gru (else none); step_emb -> step_emb, its rows -> steps;
    div_lambda -> diversity mmr (its length -> steps); attn_Wq / bilinear -> scoring; stop_token -> stop. What
    no key shows (mmr_reduction, div_lambda_init) is not returned.
    """
    out: dict[str, Any] = {
        "update": "gate" if "query_update_gate.weight" in state else "gru" if "decoder_gru.weight_ih" in state else "none",
        "step_emb": "step_emb.weight" in state,
        "scoring": "additive" if "attn_Wq.weight" in state else "bilinear" if "bilinear.weight" in state else "dot",
        "diversity": "mmr" if "div_lambda" in state else "none",
        "stop": "stop_token" in state,
    }
    rows = state["step_emb.weight"].shape[0] if "step_emb.weight" in state else state.get("div_lambda", torch.zeros(0)).shape[0]
    if rows:
        out["steps"] = int(rows)
    return out


def original_model_type(state: State) -> dict[str, Any]:
    """What the original's V4 trainers write beside `model_state_dict` (its loaders detect the model by these or
    by the key names): model_type v4_2 / v4_3 / v4_5 (+ attention_type) / v4_10 (+ use_gru, use_step_emb), nothing
    for its v3 (the gate, dot scores)."""
    h = head_settings(state)
    if h["stop"]:
        return {"model_type": "v4_10", "use_gru": h["update"] == "gru", "use_step_emb": h["step_emb"]}
    if h["scoring"] != "dot":
        return {"model_type": "v4_5", "attention_type": h["scoring"]}
    if h["diversity"] == "mmr":
        return {"model_type": "v4_3"}
    if h["update"] == "gru" or h["step_emb"]:
        return {"model_type": "v4_2"}
    return {}


def save_v3(
    path: Path, state: State, epoch: int = 0, phase: str = "grpo", kl_beta: float = 0.0, metrics: dict[str, float] | None = None
) -> None:
    """Write the selector as the original's v3 checkpoint, the dict its GRPO trainer saves per epoch: `epoch` (its
    0-based epoch index), `phase` ("rce" / "grpo"), `model_state_dict` (LeverPlusV3Selector's names, unchanged),
    `kl_beta` and `metrics`. Its v3 loader (`load_v3_from_grpo_checkpoint`) reads `model_state_dict` name for name,
    every layer included, and restores `kl_beta`; plain types only, so it loads with weights_only too."""
    ckpt = {
        "epoch": int(epoch),
        "phase": str(phase),
        "model_state_dict": {k: v.detach().float().contiguous() for k, v in state.items()},
        "kl_beta": float(kl_beta),
        "metrics": {str(k): float(v) for k, v in (metrics or {}).items() if isinstance(v, int | float)},
        **original_model_type(state),
    }
    atomic_write(Path(path), lambda tmp: torch.save(ckpt, tmp))


def save_v2(path: Path, state: State, epoch: int = 0) -> None:
    """Write the selector as the original's v2 Lightning checkpoint (plain types only: it loads with weights_only)."""
    ckpt = {
        "epoch": int(epoch),
        "global_step": 0,
        "pytorch-lightning_version": "2.0.0",
        "state_dict": to_v2_keys(state),
        "hyper_parameters": {"lr": 1e-4, "weight_decay": 0.001, "warm_steps": 0.05},
        **original_model_type(state),  # as its convert_v4_*_to_v2_format scripts mark a V4 selector
    }
    atomic_write(Path(path), lambda tmp: torch.save(ckpt, tmp))
