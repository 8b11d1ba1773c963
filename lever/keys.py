"""Content keys and input fingerprints: what every cache key in lever is made of.

`content_key` is the one "JSON -> sha256" rule (spec hashes, stage keys, evaluation keys,
feature caches, benchmark folders). The fingerprints name inputs by content without
reading them again when they have not changed: a file's SHA-256 is remembered by
(path, size, mtime) in a small JSON memo, a folder of images by a hash of its sorted
listing (names, sizes, mtimes), and a model folder by the hashes of its config and
weight files.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from lever.errors import LeverError

# Files of a model folder that decide what it computes (configs, tokenizer files, weights).
MODEL_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".txt", ".py")


def content_key(*parts: Any, length: int = 12) -> str:
    """A short stable hash of JSON-able parts (sorted keys, so dict order never matters)."""
    blob = json.dumps(parts[0] if len(parts) == 1 else list(parts), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def bytes_digest(data: bytes) -> str:
    """SHA-256 of bytes (hex): the digest summaries record of the rows they summarise."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path, block: int = 8 << 20) -> str:
    """SHA-256 of the file's bytes, read in blocks."""
    h = hashlib.sha256()
    buf = bytearray(block)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


_memo: dict[str, str] = {}


def file_digest(path: Path, memo_file: Path | None = None) -> str:
    """SHA-256 of a file, remembered in memory and in `memo_file` by (absolute path, size, mtime, inode,
    ctime): an edit that keeps the size and sets the mtime back (os.utime) still changes the ctime, which a
    user cannot set, and a replaced file has another inode."""
    from lever.io import os_reason, write_json  # lever.io imports this module: import it here, not at the top

    path = Path(path)
    try:
        st = path.stat()
    except OSError as err:
        raise LeverError(f"input file {path} cannot be read: {os_reason(err)}") from None
    tag = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{st.st_ctime_ns}"
    if tag in _memo:
        return _memo[tag]
    disk: dict[str, str] = {}
    if memo_file is not None:
        try:
            disk = json.loads(Path(memo_file).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            disk = {}
    digest = disk.get(tag) if isinstance(disk, dict) else None
    if not isinstance(digest, str):
        try:
            digest = file_sha256(path)
        except OSError as err:
            raise LeverError(f"input file {path} cannot be read: {os_reason(err)}") from None
        if memo_file is not None:
            try:
                here = f"{path.resolve()}|"  # older digests of this file are dropped: the memo does not grow
                kept = {k: v for k, v in disk.items() if not k.startswith(here)} if isinstance(disk, dict) else {}
                write_json(Path(memo_file), {**kept, tag: digest})
            except OSError:
                pass  # a memo that cannot be written costs time, not correctness
    _memo[tag] = digest
    return digest


def listing_fingerprint(folder: Path) -> str:
    """A hash of a folder's sorted listing (relative names, sizes, mtimes), without reading file contents."""
    folder = Path(folder)
    entries = []
    for dirpath, _, files in os.walk(folder):
        for name in files:
            p = Path(dirpath) / name
            try:
                st = p.stat()
            except OSError:
                continue
            entries.append((str(p.relative_to(folder)), st.st_size, st.st_mtime_ns))
    return content_key(sorted(entries), length=16)


def model_fingerprint(folder: Path, memo_file: Path | None = None) -> str:
    """A hash of a model folder's config, tokenizer and weight files (each hashed once per size and mtime)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in MODEL_SUFFIXES)
    return content_key([[str(p.relative_to(folder)), file_digest(p, memo_file)[:16]] for p in files], length=16)


def path_fingerprint(path: Path, memo_file: Path | None = None) -> str:
    """The fingerprint of an input: a file's digest, a folder's listing, or "missing"."""
    path = Path(path)
    if path.is_file():
        return file_digest(path, memo_file)[:16]
    if path.is_dir():
        return listing_fingerprint(path)
    return "missing"
