"""Atomic writes (lever.io.atomic_write): the file's mode, and every failed write an OSError naming the file."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import SafetensorError

from lever.io import atomic_write

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_get_the_mode_of_the_umask(tmp_path, umask, mode):
    # The umask is read once, when lever.io is imported: a fresh process with this umask.
    out = tmp_path / "sub" / "state.json"
    code = f"import os; os.umask({umask}); from pathlib import Path; from lever.io import write_json; write_json(Path({str(out)!r}), {{}})"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    assert stat.S_IMODE(out.stat().st_mode) == mode  # not mkstemp's 0600


def test_a_safetensors_write_failure_is_an_oserror_naming_the_file(tmp_path):
    final = tmp_path / "ckpt" / "epoch-1.safetensors"

    def disk_full(tmp):
        tmp.write_bytes(b"partial")
        raise SafetensorError('Error while serializing: I/O error: No space left on device (os error 28) at path "x"')

    with pytest.raises(OSError) as err:
        atomic_write(final, disk_full)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(final)
    assert "epoch-1.safetensors" in str(err.value) and "No space left" in str(err.value)
    assert list(final.parent.iterdir()) == []  # no temporary file left


def test_a_safetensors_error_without_errno_is_eio_and_other_errors_pass(tmp_path):
    final = tmp_path / "w.safetensors"

    def older_wording(tmp):
        raise SafetensorError("Error while serializing: IoError(Custom { kind: Other })")

    with pytest.raises(OSError) as err:
        atomic_write(final, older_wording)
    assert err.value.errno == errno.EIO and err.value.filename == str(final)

    def not_a_write(tmp):
        raise SafetensorError("invalid metadata")  # not an I/O failure: a bug, shown as it is

    with pytest.raises(SafetensorError):
        atomic_write(final, not_a_write)


def test_a_write_or_fsync_oserror_names_the_final_file(tmp_path, monkeypatch):
    final = tmp_path / "metrics.jsonl"

    def eio_on_temp(tmp):
        raise OSError(errno.EIO, "Input/output error", str(tmp))  # names the temporary file

    with pytest.raises(OSError) as err:
        atomic_write(final, eio_on_temp)
    assert err.value.filename == str(final) and err.value.errno == errno.EIO

    def no_fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")  # names no file

    monkeypatch.setattr(os, "fsync", no_fsync)
    with pytest.raises(OSError) as err:
        atomic_write(final, lambda tmp: tmp.write_text("x"))
    assert err.value.filename == str(final) and "metrics.jsonl" in str(err.value)
    assert list(tmp_path.iterdir()) == []
