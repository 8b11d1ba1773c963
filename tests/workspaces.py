"""Workspace files for the CLI tests: the bundled benchmark in a cache every test shares."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL_BENCH = "[bench]\nn_train = 600\nn_queries = 120\nn_val = 80\n"
# The small benchmark on generator 2's image-only item features: the stored GRPO values of the tests were recorded
# (and their advantages worked out) on it; with the default features no top-3 group of its 96 is mixed.
SMALL_BENCH_IMAGE = SMALL_BENCH + 'item_features = "image"\n'


def shared_cache() -> Path:
    """The cache every test shares (generated benchmarks, parsed candidates): LEVER_TEST_CACHE or .lever-cache/tests."""
    return Path(os.environ.get("LEVER_TEST_CACHE", ROOT / ".lever-cache" / "tests"))


def bench_workspace(folder: Path, bench: str = SMALL_BENCH) -> Path:
    """folder/lever.toml: runs in folder/runs, the shared test cache, and `bench` (the small benchmark;
    "" = the default size)."""
    path = folder / "lever.toml"
    path.write_text(f'runs = "runs"\ncache = "{shared_cache()}"\n{bench}', encoding="utf-8")
    return path
