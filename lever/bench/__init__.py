"""The bundled benchmark: a seeded simulated VQA world, a simulated VLM and candidate data.

It is what every command runs on when no real data is configured. Its numbers are not OK-VQA
results; docs/benchmark.md describes the generative model.
"""

from __future__ import annotations

from .cache import BenchPaths, ensure_bench, is_complete, write_bench
from .config import GENERATOR_VERSION, BenchConfig
from .vlm import SimVLM

__all__ = ["GENERATOR_VERSION", "BenchConfig", "BenchPaths", "SimVLM", "ensure_bench", "is_complete", "write_bench"]
