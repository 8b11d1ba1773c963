"""The JSON layer of candidate-data files: raw records, typed decoding, messages.

msgspec (a C JSON decoder) splits the memory-mapped file into one raw record per
query while checking the syntax of the whole file, then decodes records into typed
structs (unknown fields skipped, types checked in C). Its errors are turned into
messages that name the file, line and column, or the query, candidate and field.

NaN / Infinity are not JSON, but Python's json writes them: when the file has them,
they are read as marker strings ("\\u0000NaN"), so fields lever does not use may hold
them, used fields fail with a precise message, and `unmark` restores the bytes.
"""

from __future__ import annotations

import json
import mmap
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from lever.errors import LeverError

RECORD_HINT = 'a query record is {"query": {...}, "candidate_pool_ids": [...], "pointer_candidates": [{...}, ...]}'
CAND_HINT = "a candidate needs pointer, vqa_correct and vqa_acc_score (see docs/data.md)"


class Cand(msgspec.Struct, gc=False):
    """The candidate fields lever uses; any other field is skipped."""

    pointer: list[int]
    vqa_correct: bool | int | float | None = None
    vqa_acc_score: int | float | None = None
    vqa_gt_prob: int | float | None = None
    vqa_rel_score: int | float | None = None
    eval_failed: bool | int | None = None
    vqa_eval_mode: str | None = None
    gen_method: str | None = None
    pointer_global: list[int] | None = None
    behaviour_logp: int | float | None = None
    behaviour_step_logps: list[int | float] | None = None


class QueryInfo(msgspec.Struct, gc=False):
    query_id: Any = None  # the rest of the query object (question, answers) is skipped


class Record(msgspec.Struct, gc=False):
    candidate_pool_ids: list[int]
    pointer_candidates: list[Cand]
    query: QueryInfo | None = None


_TOP = msgspec.json.Decoder(dict[str, msgspec.Raw])
_RECORD = msgspec.json.Decoder(Record)
decode_json = msgspec.json.Decoder().decode  # any JSON value, untyped


class RawFile:
    """The file memory-mapped and split into raw members (key -> undecoded JSON bytes), in file order.

    Use as a context manager; `members` is only valid inside it.
    """

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> RawFile:
        size = self.path.stat().st_size
        if size == 0:
            raise LeverError(f"{self.path}: the file is empty", hint='expected a JSON object {"<query_id>": {...}, ...}')
        self._f = open(self.path, "rb")
        self.mm = mmap.mmap(self._f.fileno(), 0, access=mmap.ACCESS_READ)
        self.buf: Any = self.mm  # what the members point into
        self.marked = False  # True when NaN / Infinity literals were turned into marker strings
        try:
            self.members: dict[str, msgspec.Raw] = self._split()
        except BaseException:
            self.close()
            raise
        return self

    def _split(self) -> dict[str, msgspec.Raw]:
        try:
            try:
                members = _TOP.decode(self.buf)
                self._check_unique(members)
                self.release()  # the scan paged in the whole file
                return members
            except msgspec.DecodeError as err:
                at = _byte_of(str(err))
                if at is None or not NONFINITE_AT.match(self.mm, at):
                    raise
            # Python's json writes NaN / Infinity (not JSON): read them as marker strings, so
            # unused fields may hold them and used fields fail with their query and field
            self.buf, self.marked = mark_nonfinite(self.mm[:]), True
            members = _TOP.decode(self.buf)
            self._check_unique(members)
            return members
        except msgspec.ValidationError as err:
            raise LeverError(
                f"{self.path}: the top level must be a JSON object ({_plain(str(err))})",
                hint='a candidate-data file is one object {"_meta": {...}, "<query_id>": {...}, ...}',
            ) from None
        except msgspec.DecodeError as err:
            raise LeverError(self._syntax_message(str(err))) from None

    def _check_unique(self, members: dict[str, msgspec.Raw]) -> None:
        """Refuse a repeated top-level key: a JSON object keeps only its last value, silently.

        Walks the file with the members in order: each is `, "key": value` with the member's key and
        its value's length, and after the last comes only the closing brace. A repeated key leaves
        a value the walk does not account for: the first step that does not fit names the key.
        """
        buf, pos, prev, gap = self.buf, 0, "?", None
        for key, value in members.items():
            gap = _GAP.match(buf, pos)
            if gap is None or not _is_key(gap.group(1), key):
                break
            pos, prev = gap.end() + len(value), key
        else:
            if _END.fullmatch(buf, pos):
                return
            gap = _GAP.match(buf, pos)  # a further key: one given before
        raise LeverError(
            f"{self.path}: query key {json.loads(gap.group(1)) if gap else prev!r} appears more than once",
            hint="each query is one top-level key; a JSON reader would keep only its last record",
        )

    def release(self) -> None:
        """Unmap the file's pages from this process (they stay in the OS cache and fault back
        in when a record is read again): keeps the resident memory of a 1 GB file low."""
        if self.buf is self.mm and hasattr(mmap, "MADV_DONTNEED"):
            self.mm.madvise(mmap.MADV_DONTNEED)

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.members = {}  # raw members point into the map: drop them first
        self.buf = None
        try:
            self.mm.close()
        except BufferError:  # a raw member is still referenced (by a traceback): unmapped when collected
            pass
        self._f.close()

    def _syntax_message(self, err: str) -> str:
        """'JSON is malformed: ... (byte N)' -> file, line, column."""
        at = _byte_of(err)
        what = _plain(re.sub(r"\s*\(byte \d+\)", "", err).removeprefix("JSON is malformed: "))
        if at is None:
            if "truncated" in what:
                what = "the file ends before the JSON is complete (a truncated copy?)"
            return f"{self.path}: invalid JSON: {what}"
        buf = self.buf
        at = min(at, len(buf))
        line = buf[:at].count(b"\n") + 1  # error path only: the copy is fine
        start = buf.rfind(b"\n", 0, at) + 1
        prefix = bytes(buf[start:at])
        col = len(prefix.decode("utf-8", "replace")) + 1 - prefix.count(MARK) * (len(MARK) + 1)
        if at >= len(buf):
            what = "the file ends before the JSON is complete"
        return f"{self.path}: invalid JSON at line {line}, column {col}: {what}"

    def unmark(self, data: bytes) -> bytes:
        """Bytes of a member as they are in the file (marker strings back to NaN / Infinity)."""
        return UNMARK.sub(rb"\1", data) if self.marked else data

    def queries(self) -> Iterator[tuple[str, msgspec.Raw]]:
        """(key, raw record) of every query member; keys starting with '_' are not queries."""
        return ((k, v) for k, v in self.members.items() if not k.startswith("_"))


def _is_key(text: bytes, key: str) -> bool:
    """Whether JSON string `text` (quotes included) is `key`; escapes are decoded only when present."""
    return text[1:-1] == key.encode() or (b"\\" in text and json.loads(text) == key)


def _plain(msg: str) -> str:
    return msg.replace("`", "")


def _lc(msg: str) -> str:
    return msg[:1].lower() + msg[1:]


def _byte_of(err: str) -> int | None:
    m = re.search(r"\(byte (\d+)\)", err)
    return int(m.group(1)) if m else None


# NaN / Infinity after ':', ',' or '[' (where a value starts). A string that itself holds
# such text (": NaN,") is not told apart; it then fails as invalid JSON.
NONFINITE_AT = re.compile(rb"-?(NaN|Infinity)")
_STR = rb'"(?:[^"\\]|\\.)*"'  # a JSON string
_GAP = re.compile(rb"\s*[{,]\s*(" + _STR + rb")\s*:\s*")  # before a top-level value: its key
_END = re.compile(rb"\s*}\s*")  # after the last value
_NONFINITE = re.compile(rb"([:,\[]\s*)(-?Infinity|NaN)(?=\s*[,\]}])")
MARK = b'"\\u0000'  # a non-finite literal X is read as the string "\u0000X"
UNMARK = re.compile(rb'"\\u0000(-?Infinity|NaN)"')


def mark_nonfinite(data: bytes) -> bytes:
    """NaN / Infinity / -Infinity literals -> the strings "\u0000NaN", ... (reversible by UNMARK)."""
    return _NONFINITE.sub(rb'\1"\\u0000\2"', data)


def decode_record(path: Path, key: str, raw: msgspec.Raw) -> Record:
    """One query record as a typed struct; type problems name the query, candidate and field."""
    try:
        return _RECORD.decode(raw)
    except msgspec.ValidationError as err:
        raise _validation_error(path, key, str(err), raw) from None


def _value_at(raw: msgspec.Raw, where: str) -> Any:
    """The value at a msgspec path like '.pointer_candidates[3].pointer[1]' (None if not found)."""
    value: Any = decode_json(raw)
    for name, index in re.findall(r"\.(\w+)|\[(\d+)\]", where):
        try:
            value = value[name] if name else value[int(index)]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def _validation_error(path: Path, key: str, err: str, raw: msgspec.Raw) -> LeverError:
    """msgspec's 'Expected `int`, got `str` - at `$.pointer_candidates[3].pointer[1]`' -> our words."""
    msg, _, where = err.partition(" - at ")
    where = where.strip("`").removeprefix("$")
    msg = _plain(msg)
    value = _value_at(raw, where) if "got str" in msg else None
    if isinstance(value, str) and value.startswith("\x00"):  # a NaN / Infinity literal (see mark_nonfinite)
        msg = f"is {value[1:]}, scores and indices must be finite numbers"
    elif "out of range" in msg:
        msg = "is a number out of range (Infinity?): scores must be finite numbers"
    m = re.match(r"\.pointer_candidates\[(\d+)\](?:\.(\w+)(.*))?$", where)
    if m:
        cand, field, rest = m.groups()
        if field is None:
            missing = re.match(r"Object missing required field (\w+)", msg)
            if missing:
                return LeverError(f"{path}: query {key}, candidate {cand}: missing field '{missing.group(1)}'", hint=CAND_HINT)
            return LeverError(f"{path}: query {key}, candidate {cand}: {_lc(msg)}", hint=CAND_HINT)
        item = f" item {rest.strip('[]')}" if rest else ""
        return LeverError(f"{path}: query {key}, candidate {cand}: field '{field}'{item}: {_lc(msg)}")
    missing = re.match(r"Object missing required field (\w+)", msg)
    if missing and not where:
        return LeverError(f"{path}: query {key}: missing field '{missing.group(1)}'", hint=RECORD_HINT)
    field = where.lstrip(".") or "(the record)"
    return LeverError(f"{path}: query {key}: field '{field}': {_lc(msg)}", hint=RECORD_HINT)
