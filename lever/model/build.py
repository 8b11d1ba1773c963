"""Build the selector a plan's `model` section describes."""

from __future__ import annotations

from lever.spec.schema import ModelSpec

from .heads import HeadConfig
from .original import LeverPlusV3Selector
from .selector import PointerSelector, SelectorBase


def build_selector(d_in: int, m: ModelSpec) -> SelectorBase:
    """lever's PointerSelector, or the original's LeverPlusV3Selector (model.arch = "lever-plus-v3"), with the
    V4 heads the section sets (model.update, step_emb, scoring, diversity, stop; lever/model/heads.py)."""
    if m.arch == "lever-plus-v3":
        return LeverPlusV3Selector(
            d_in, m.hidden, m.layers, m.heads, m.dropout, m.score_temperature, m.attn_dropout, m.dropout_mask,
            HeadConfig.of(m),
        )  # fmt: skip
    return PointerSelector(
        d_in, m.hidden, m.layers, m.heads, m.dropout, m.score_temperature, m.attn_dropout, m.dropout_mask, m.proj_bias, m.init,
        HeadConfig.of(m),
    )  # fmt: skip
