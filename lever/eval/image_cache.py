"""Image work done once: the VLM's vision-encoder output per image, kept in memory.

In an evaluation the same train images recur as demonstrations across questions and shot
counts, and `lever data generate` scores many sequences per query that share the query's image
and their demonstrations'. Each distinct image is read, resized, preprocessed and encoded once;
later uses take its features from here.

An entry is keyed by the image file's content (its SHA-256, `lever.keys.file_digest`) and by
everything that shapes its pixels (the protocol's sizing and the image processor's settings);
each loaded model has its own cache (`cache_for`), so another model or dtype never sees it.
The cache holds the features, not the preprocessed pixels: a hit needs no pixels, and the
features are 4x to 8x smaller. It is bounded by bytes (least recently used first out).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Any

from torch import Tensor

DEFAULT_MB = 1024  # about 650 COCO-size images of Qwen2.5-VL-3B (391 tokens x 2048 bf16 each)


class ImageFeatureCache:
    """Least-recently-used map key -> (grid [3], features [tokens, d]) of at most `max_mb` MiB, with hit counts."""

    def __init__(self, max_mb: float = DEFAULT_MB):
        self.max_bytes = int(max_mb * 2**20)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Any, tuple[Tensor, Tensor]] = OrderedDict()

    def get(self, key: Any) -> tuple[Tensor, Tensor] | None:
        """The entry under `key` (counted as a hit), or None (counted as a miss)."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, key: Any, grid: Tensor, features: Tensor) -> None:
        """Keep an entry, dropping the least recently used ones while over the budget (an entry over it is not kept)."""
        size = features.numel() * features.element_size()
        if size > self.max_bytes or key in self._entries:
            return
        self._entries[key] = (grid, features)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, old) = self._entries.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()

    def __len__(self) -> int:
        return len(self._entries)

    def summary(self) -> str:
        """One line for the log: uses, distinct images encoded, hit rate, memory held."""
        uses = self.hits + self.misses
        rate = self.hits / uses if uses else 0.0
        return (
            f"image features: {uses} uses, {self.misses} encoded, {rate:.0%} reused "
            f"({len(self)} held, {self.bytes / 2**20:.0f} of {self.max_bytes / 2**20:.0f} MiB)"
        )


_CACHES: weakref.WeakKeyDictionary[Any, ImageFeatureCache] = weakref.WeakKeyDictionary()


def cache_for(model: Any, max_mb: float = DEFAULT_MB) -> ImageFeatureCache:
    """The feature cache of this model object: every backend built on one loaded model shares it
    (`lever run A B C`, several seeds, the evaluation and the reward scorer); it goes with the model.
    A later call with another `max_mb` sets the new bound."""
    cache = _CACHES.get(model)
    if cache is None:
        cache = _CACHES[model] = ImageFeatureCache(max_mb)
    cache.max_bytes = int(max_mb * 2**20)
    return cache
