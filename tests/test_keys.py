"""Content keys and input fingerprints (lever.keys): stable, cheap, and changed by every change that matters."""

from __future__ import annotations

import hashlib
import json
import os
import time

from lever.keys import _memo, content_key, file_digest, listing_fingerprint, model_fingerprint


def test_content_key_is_the_old_json_sha256_rule():
    data = {"b": 1, "a": [1, 2]}
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    assert content_key(data) == hashlib.sha256(blob.encode()).hexdigest()[:12]  # spec hashes did not move
    assert content_key({"a": [1, 2], "b": 1}) == content_key(data)
    assert content_key("x", 1) == content_key(["x", 1]) and len(content_key(data, length=16)) == 16


def test_file_digest_is_remembered_by_size_and_mtime(tmp_path):
    f, memo = tmp_path / "a.bin", tmp_path / "memo.json"
    f.write_bytes(b"one")
    first = file_digest(f, memo)
    assert first == hashlib.sha256(b"one").hexdigest()
    _memo.clear()
    assert file_digest(f, memo) == first  # from the memo file
    f.write_bytes(b"two")
    os.utime(f, ns=(f.stat().st_mtime_ns + 10**9,) * 2)
    assert file_digest(f, memo) == hashlib.sha256(b"two").hexdigest()
    assert len(json.loads(memo.read_text())) == 1  # one entry per file: the memo does not grow


def test_file_digest_sees_a_same_size_edit_with_the_mtime_set_back(tmp_path):
    f, memo = tmp_path / "a.bin", tmp_path / "memo.json"
    f.write_bytes(b"one")
    before = f.stat()
    assert file_digest(f, memo) == hashlib.sha256(b"one").hexdigest()
    while f.stat().st_ctime_ns == before.st_ctime_ns:  # the kernel's clock moves in ticks of a few ms
        time.sleep(0.005)
        f.write_bytes(b"two")  # same size, same inode
    os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns))  # size and mtime as they were
    now = f.stat()
    assert (now.st_size, now.st_mtime_ns, now.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    assert file_digest(f, memo) == hashlib.sha256(b"two").hexdigest()  # not the in-process memo's
    _memo.clear()
    assert file_digest(f, memo) == hashlib.sha256(b"two").hexdigest()  # nor the memo file's


def test_folder_and_model_fingerprints_change_with_their_files(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(b"a")
    before = listing_fingerprint(images)
    (images / "b.jpg").write_bytes(b"b")
    assert listing_fingerprint(images) != before
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"w")
    before = model_fingerprint(model)
    (model / "README.md").write_text("notes")  # not a file that changes what the model computes
    assert model_fingerprint(model) == before
    (model / "config.json").write_text('{"hidden": 2}')
    assert model_fingerprint(model) != before
