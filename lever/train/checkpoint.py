"""Checkpoints: model weights as safetensors plus a small JSON; resume state as a tensors-only file.

Nothing here unpickles arbitrary objects: weights load with safetensors, and the
resume state (optimiser moments, RNG state, counters) with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, load_file, save

from lever.errors import DamagedState, LeverError
from lever.io import atomic_write, read_state, write_json
from lever.keys import bytes_digest

State = dict[str, torch.Tensor]


def state_of(model: torch.nn.Module) -> State:
    """A detached CPU copy of the model's weights."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def save_weights(path: Path, state: State, info: dict[str, Any]) -> str:
    """Write `<path>` (safetensors) then `<path>.json` (info and the file's SHA-256); the JSON marks the pair
    complete. Returns the digest, which every record naming this checkpoint carries."""
    data = save(state, metadata={"format": "lever-selector"})
    digest = bytes_digest(data)
    atomic_write(path, lambda p: p.write_bytes(data))
    write_json(path.with_suffix(".json"), {**info, "sha256": digest})
    return digest


def load_verified(path: Path, sha256: str, fix: str = "") -> State:
    """Weights of a checkpoint lever wrote, after checking the file's SHA-256 against the record naming it:
    a copied, replaced or damaged file is a DamagedState naming it and the repair (`fix`)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DamagedState(f"checkpoint {path} is missing", hint=fix) from None
    except OSError as err:
        raise LeverError(f"checkpoint {path} cannot be read: {err.strerror or err}") from None
    if bytes_digest(data) != sha256:
        raise DamagedState(
            f"checkpoint {path} is not the file that was recorded (its SHA-256 does not match): it was replaced or damaged",
            hint=fix,
        )
    return load(data)


def epoch_digest(path: Path, epoch: int, fix: str = "") -> str:
    """The SHA-256 recorded beside a stage's checkpoint of `epoch` (its .json); damage or a mismatch is a DamagedState."""
    info = checkpoint_info(path, fix)
    if not isinstance(info, dict) or info.get("epoch") != epoch or not isinstance(info.get("sha256"), str):
        raise DamagedState(f"{path.with_suffix('.json')} is missing or does not record epoch {epoch}'s digest", hint=fix)
    return info["sha256"]


def load_weights(path: Path) -> State:
    if not path.is_file():
        raise LeverError(f"checkpoint {path} does not exist")
    if path.suffix != ".safetensors":
        raise LeverError(f"checkpoint {path}: expected a .safetensors file (other formats are not loaded, for safety)")
    try:
        return load_file(str(path))
    except Exception as err:  # corrupt or foreign file
        raise LeverError(f"checkpoint {path} could not be read as safetensors: {err}") from None


def checkpoint_info(path: Path, fix: str = "") -> dict[str, Any] | None:
    """The .json beside a checkpoint (its stage, epoch, metrics and SHA-256); None when absent."""
    return read_state(path.with_suffix(".json"), fix)


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
