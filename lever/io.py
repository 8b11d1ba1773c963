"""Atomic writes, JSON helpers and file locks (used by every layer that writes): nothing is ever half-written, two processes never write one run."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lever.errors import DamagedState, LeverError
from lever.keys import bytes_digest


def _read_umask() -> int:
    """The process's umask (os.umask can only be read by setting it: set it back at once)."""
    old = os.umask(0)
    os.umask(old)
    return old


FILE_MODE = 0o666 & ~_read_umask()  # what open() would give a new file: 0644 under the usual umask 022


def _write_failure(err: Exception, path: Path) -> OSError | None:
    """A writer's report of a failed write as an OSError naming `path`, or None when `err` is another error.

    torch.save reports a full disk as a RuntimeError ("file write failed"); safetensors as a
    SafetensorError ("I/O error: No space left on device (os error 28)"). The errno is the one the
    message gives, else ENOSPC when it says the disk is full, else EIO.
    """
    text = str(err)
    if type(err).__name__ == "SafetensorError":
        if not re.search(r"i/?o ?error|os error", text, re.IGNORECASE):
            return None
    elif not (isinstance(err, RuntimeError) and "write" in text.lower()):
        return None
    code = re.search(r"(?:os error|code:) ?(\d+)", text)
    number = int(code.group(1)) if code else errno.ENOSPC if "no space left" in text.lower() else errno.EIO
    return OSError(number, f"write failed ({text.splitlines()[0][:200]})", str(path))


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file next to `path`, fsync it, then rename it into place.

    The file gets the mode a plain open() would give (FILE_MODE), not mkstemp's 0600. A failed write
    or fsync is an OSError naming `path` (not the temporary file), also when the writer reported it
    otherwise (_write_failure); the temporary file is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            write(tmp_path)
            os.chmod(tmp_path, FILE_MODE)  # after the write: a writer may replace the file it was given
            with open(tmp_path, "rb") as fh:
                os.fsync(fh.fileno())
        except OSError as err:
            if err.filename in (None, tmp, tmp_path):
                err.filename = str(path)
            raise
        except Exception as err:
            failure = _write_failure(err, path)
            if failure is None:
                raise
            raise failure from err
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    write_rows(path, rows)


def rows_text(rows: list[dict[str, Any]]) -> str:
    """JSONL text of rows, exactly as written."""
    return "".join(json.dumps(r) + "\n" for r in rows)


def rows_record(text: str) -> dict[str, Any]:
    """What a writer records of JSONL rows, so a reader can verify them: their count and the digest of their bytes."""
    return {"rows": text.count("\n"), "sha256": bytes_digest(text.encode("utf-8"))}


def write_rows(path: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Write JSONL rows atomically; returns their record (rows_record) for the summary that vouches for them."""
    text = rows_text(rows)
    write_text(path, text)
    return rows_record(text)


def check_rows(path: Path, record: Any, fix: str) -> None:
    """Check a JSONL file against the {"rows", "sha256"} recorded when it was written; damage names the file and `fix`."""
    if not path.is_file():
        raise DamagedState(f"{path} is missing", hint=fix)
    if not isinstance(record, dict):
        raise DamagedState(f"{path}: no row count or digest was recorded for it (written by an older lever?)", hint=fix)
    got = rows_record(path.read_text(encoding="utf-8"))
    if got["rows"] != record.get("rows"):
        raise DamagedState(f"{path} has {got['rows']} rows but {record.get('rows')} were written", hint=fix)
    if got["sha256"] != record.get("sha256"):
        raise DamagedState(f"{path} was changed after it was written (its digest does not match)", hint=fix)


def os_reason(err: OSError) -> str:
    """Why a file cannot be used, in the user's words: "it does not exist", "permission denied", ..."""
    if isinstance(err, FileNotFoundError):
        return "it does not exist"
    if isinstance(err, IsADirectoryError):
        return "it is a folder, not a file"
    if isinstance(err, PermissionError):
        return "permission denied"
    return err.strerror or str(err)


def stat_input(path: Path, what: str = "file") -> os.stat_result | None:
    """os.stat of a user's input: None when nothing is there; a LeverError naming it and the reason when it
    cannot be looked at (a folder on the way the user may not enter: "permission denied"), where pathlib's
    exists() / is_file() raise PermissionError."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        raise LeverError(f"{what} {path} cannot be read: {os_reason(err)}") from None


def is_input_file(path: Path, what: str = "file") -> bool:
    """Whether a user's input is a file (stat_input: a path that cannot be looked at is a LeverError)."""
    st = stat_input(path, what)
    return st is not None and stat.S_ISREG(st.st_mode)


def check_readable(path: Path, what: str = "file") -> None:
    """Raise a LeverError naming the file and the reason when `path` cannot be opened for reading."""
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise LeverError(f"{what} {path} cannot be read: {os_reason(err)}") from None


def read_text(path: Path, what: str = "file") -> str:
    """A user's UTF-8 text file; a LeverError names it and why it cannot be read (missing, no permission, binary, not UTF-8)."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise LeverError(f"{what} {path} cannot be read: {os_reason(err)}") from None
    if b"\0" in data:
        raise LeverError(f"{what} {path} is a binary file, not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise LeverError(
            f"{what} {path} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})", hint="save it as UTF-8"
        ) from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The object lines of a JSONL file ([] when absent). A line a kill cut short is skipped:
    files written by appending (partial evaluation answers) can end in one."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_state(path: Path, fix: str, default: Any = None) -> Any:
    """A JSON file lever wrote (`default` when absent); unreadable JSON is a DamagedState naming the file and `fix`."""
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DamagedState(f"{path} is damaged ({type(err).__name__}: {err})", hint=fix) from None


def read_rows(path: Path, fix: str) -> list[dict[str, Any]]:
    """Every line of a JSONL file lever wrote whole ([] when absent); a cut or non-object line is a DamagedState."""
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            raise DamagedState(f"{path} is damaged: line {i} is not a complete JSON object", hint=fix)
        rows.append(row)
    return rows


@contextlib.contextmanager
def file_lock(path: Path, *, wait: bool, what: str, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if needed); released when the process dies.

    wait=False refuses with a LeverError when another process holds it; wait=True blocks
    (after calling `on_wait` once with a message).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            if not wait:
                raise LeverError(
                    f"{what} is being run by {holder}; wait for it to finish", hint=f"lock file: {path}", exit_code=1
                ) from None
            if on_wait:
                on_wait(f"waiting for {holder}, which holds {what}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        yield
    finally:
        fh.close()


def lock_holder(path: Path) -> str | None:
    """Who holds the `file_lock` on `path` now ("pid 123"), or None when nobody does (or the file is absent).

    A probe: it takes the lock without waiting and lets it go at once; it never creates the file."""
    try:
        fh = open(path)
    except FileNotFoundError:
        return None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return fh.read().strip() or "another process"
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None
