"""Device names from plans and workspaces ('auto', 'cpu', 'cuda', 'cuda:N') to torch devices."""

from __future__ import annotations

import torch

from lever.errors import LeverError


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; a CUDA device where there is none is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LeverError(f"device {name!r} is not a valid torch device", hint="use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LeverError(f"device {name!r} but CUDA is not available here", hint="use 'auto' or 'cpu'")
    return device
