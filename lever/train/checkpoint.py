"""Checkpoints: model weights as safetensors plus a small JSON; resume state as a tensors-only file.

Nothing here unpickles arbitrary objects: weights load with safetensors, and the
resume state (optimiser moments, RNG state, counters) with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lever.errors import LeverError
from lever.io import atomic_write, read_json, write_json

State = dict[str, torch.Tensor]


def state_of(model: torch.nn.Module) -> State:
    """A detached CPU copy of the model's weights."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def save_weights(path: Path, state: State, info: dict[str, Any]) -> None:
    """Write `<path>` (safetensors) then `<path>.json` (info); the JSON marks the pair complete."""
    atomic_write(path, lambda p: save_file(state, str(p), metadata={"format": "lever-selector"}))
    write_json(path.with_suffix(".json"), info)


def load_weights(path: Path) -> State:
    if not path.is_file():
        raise LeverError(f"checkpoint {path} does not exist")
    if path.suffix != ".safetensors":
        raise LeverError(f"checkpoint {path}: expected a .safetensors file (other formats are not loaded, for safety)")
    try:
        return load_file(str(path))
    except Exception as err:  # corrupt or foreign file
        raise LeverError(f"checkpoint {path} could not be read as safetensors: {err}") from None


def checkpoint_info(path: Path) -> dict[str, Any] | None:
    return read_json(path.with_suffix(".json"))


def state_digest(state: State) -> str:
    """A short content hash of weights: identifies a start point for stage reuse."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].numpy().tobytes())
    return h.hexdigest()[:16]


def save_resume(path: Path, resume: dict[str, Any]) -> None:
    atomic_write(path, lambda p: torch.save(resume, p))


def load_resume(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def load_into(model: torch.nn.Module, state: State, where: str) -> None:
    """Load weights, turning a key or shape mismatch into a message that names the checkpoint."""
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = "; ".join(line.strip() for line in first[1:4]) or first[0]
        raise LeverError(
            f"checkpoint {where} does not fit the plan's model: {detail}",
            hint="the model settings (model.hidden, layers, heads, feature size) must match the ones it was trained with",
        ) from None
