"""lever.model: the pointer selectors (no file I/O here)."""

from __future__ import annotations

from .build import build_selector
from .original import LeverPlusV3Selector
from .selector import Encoded, PointerSelector, SelectorBase

__all__ = ["Encoded", "LeverPlusV3Selector", "PointerSelector", "SelectorBase", "build_selector"]
