"""lever.model: the pointer selector (no file I/O here)."""

from __future__ import annotations

from .selector import Encoded, PointerSelector

__all__ = ["Encoded", "PointerSelector"]
