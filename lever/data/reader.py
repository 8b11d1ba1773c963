"""Read and validate a candidate-data JSON file (DOMAIN.md section 3) into `CandidateData`.

Why it is fast on a 1 GB file: the file is memory-mapped and split into one raw
record per query by msgspec (a C JSON decoder that also checks the syntax of the
whole file); then queries are decoded in chunks into typed structs (unknown fields
skipped, types checked in C), and every chunk's candidates become flat numpy arrays
checked all at once. The stdlib `json` decoder is 4-5x slower and builds millions
of dicts. Parsed files are cached as a torch file keyed by the file's SHA-256.

Read-time rules:
- structural problems (bad JSON, missing fields, bad pointers, NaN, inconsistent
  scores, ...) raise LeverError naming the file, query id, candidate index and field;
- duplicate sequences (same index set in one query) are dropped, keeping the first
  (a usable evaluation wins over a failed one), and counted;
- failed evaluations (eval_failed, or vqa_eval_mode fallback/error) are kept and
  flagged; their vqa_correct / vqa_acc_score may be missing (read as 0). The plan's
  `skip_failed` drops them;
- vqa_gt_prob / vqa_rel_score are optional (NaN where missing, counted); the reward
  mode that needs them refuses data without them.
"""

from __future__ import annotations

import gc
import hashlib
import json
import mmap
import os
import re
import tempfile
import time
from array import array
from contextlib import contextmanager
from itertools import chain
from itertools import repeat
from operator import attrgetter, is_not
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import msgspec
import numpy as np
import torch

from lever.errors import LeverError

from .candidates import CandidateData
from .segments import one_thread

CACHE_VERSION = 1
CHUNK = 256  # queries decoded into Python objects at a time (small: stays in the CPU caches)
FAILED_MODES = frozenset({"fallback", "error"})
RECORD_HINT = 'a query record is {"query": {...}, "candidate_pool_ids": [...], "pointer_candidates": [{...}, ...]}'
CAND_HINT = "a candidate needs pointer, vqa_correct and vqa_acc_score (see DOMAIN.md section 3)"

Log = Callable[[str], Any]


class _Cand(msgspec.Struct, gc=False):
    """The candidate fields lever uses; any other field is skipped."""

    pointer: list[int]
    vqa_correct: Union[bool, int, float, None] = None
    vqa_acc_score: Union[int, float, None] = None
    vqa_gt_prob: Union[int, float, None] = None
    vqa_rel_score: Union[int, float, None] = None
    eval_failed: Union[bool, int, None] = None
    vqa_eval_mode: Optional[str] = None
    gen_method: Optional[str] = None
    pointer_global: Optional[list[int]] = None


class _QueryInfo(msgspec.Struct, gc=False):
    query_id: Any = None  # the rest of the query object (question, answers) is skipped


class _Record(msgspec.Struct, gc=False):
    candidate_pool_ids: list[int]
    pointer_candidates: list[_Cand]
    query: Optional[_QueryInfo] = None


_FIELDS = attrgetter("pointer", "vqa_correct", "vqa_acc_score", "vqa_gt_prob", "vqa_rel_score", "eval_failed",
                     "vqa_eval_mode", "gen_method", "pointer_global")  # fmt: skip
_TOP = msgspec.json.Decoder(dict[str, msgspec.Raw])
_RECORD = msgspec.json.Decoder(_Record)
_ANY = msgspec.json.Decoder()


# --------------------------------------------------------------------------- entry point


def file_sha256(path: Path, block: int = 8 << 20) -> str:
    """SHA-256 of the file's bytes (the cache key), read in blocks."""
    h = hashlib.sha256()
    buf = bytearray(block)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


@one_thread()
def load_candidates(path: Path | str, cache_dir: Path | str | None = None, log: Log = print) -> CandidateData:
    """Read, validate and (with cache_dir) cache a candidate-data JSON file."""
    path = Path(path)
    if not path.is_file():
        raise LeverError(f"{path}: no such candidate-data file")
    t0 = time.perf_counter()
    digest = file_sha256(path)
    cache = Path(cache_dir) / f"candidates-{digest[:32]}-v{CACHE_VERSION}.pt" if cache_dir else None
    if cache is not None and cache.is_file():
        data = _read_cache(cache, digest, log)
        if data is not None:
            data.meta["path"] = str(path)
            log(f"{path}: {data.describe()} (from cache, {time.perf_counter() - t0:.1f} s)")
            return data
    data = parse_candidates(path)
    data.meta.update(path=str(path), sha256=digest, size=path.stat().st_size)
    read = data.meta["read"]
    log(
        f"{path}: {data.describe()}, read in {time.perf_counter() - t0:.1f} s "
        f"({read['duplicates_dropped']} duplicate sequences dropped, {read['failed']} failed evaluations flagged)"
    )
    if cache is not None:
        _write_cache(cache, data, log)
    return data


# --------------------------------------------------------------------------- cache

_TENSORS = ("query_ids", "pools", "pool_sizes", "offsets", "pointers", "correct", "acc", "gt_prob", "rel",
            "failed", "source", "cand_index")  # fmt: skip


def _write_cache(cache: Path, data: CandidateData, log: Log) -> None:
    """torch.save to a temp file in the cache folder, then os.replace: never a half-written cache."""
    payload = {
        "version": CACHE_VERSION,
        "sha256": data.meta["sha256"],
        "meta_json": json.dumps(data.meta),
        "source_names": list(data.source_names),
        "tensors": {name: getattr(data, name) for name in _TENSORS},
    }
    tmp = None
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache.parent, prefix=cache.name, suffix=".tmp", delete=False) as f:
            tmp = f.name
            torch.save(payload, f)
        os.replace(tmp, cache)
    except OSError as err:
        log(f"warning: could not write the data cache {cache}: {err}")
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)


def _read_cache(cache: Path, digest: str, log: Log) -> CandidateData | None:
    try:
        payload = torch.load(cache, weights_only=True)
        if payload.get("version") != CACHE_VERSION or payload.get("sha256") != digest:
            return None
        return CandidateData(
            **payload["tensors"], source_names=list(payload["source_names"]), meta=json.loads(payload["meta_json"])
        )
    except Exception as err:  # a damaged cache is re-parsed, never trusted
        log(f"warning: ignoring unreadable data cache {cache}: {err}")
        return None


# --------------------------------------------------------------------------- raw records


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
                return _TOP.decode(self.buf)
            except msgspec.DecodeError as err:
                at = _byte_of(str(err))
                if at is None or not NONFINITE_AT.match(self.mm, at):
                    raise
            # Python's json writes NaN / Infinity (not JSON): read them as marker strings, so
            # unused fields may hold them and used fields fail with their query and field
            self.buf, self.marked = mark_nonfinite(self.mm[:]), True
            return _TOP.decode(self.buf)
        except msgspec.ValidationError as err:
            raise LeverError(
                f"{self.path}: the top level must be a JSON object ({_plain(str(err))})",
                hint='a candidate-data file is one object {"_meta": {...}, "<query_id>": {...}, ...}',
            ) from None
        except msgspec.DecodeError as err:
            raise LeverError(self._syntax_message(str(err))) from None

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
_NONFINITE = re.compile(rb"([:,\[]\s*)(-?Infinity|NaN)(?=\s*[,\]}])")
MARK = b'"\\u0000'  # a non-finite literal X is read as the string "\u0000X"
UNMARK = re.compile(rb'"\\u0000(-?Infinity|NaN)"')


def mark_nonfinite(data: bytes) -> bytes:
    """NaN / Infinity / -Infinity literals -> the strings "\u0000NaN", ... (reversible by UNMARK)."""
    return _NONFINITE.sub(rb'\1"\\u0000\2"', data)


def decode_record(path: Path, key: str, raw: msgspec.Raw) -> _Record:
    """One query record as a typed struct; type problems name the query, candidate and field."""
    try:
        return _RECORD.decode(raw)
    except msgspec.ValidationError as err:
        raise _validation_error(path, key, str(err), raw) from None


def _value_at(raw: msgspec.Raw, where: str) -> Any:
    """The value at a msgspec path like '.pointer_candidates[3].pointer[1]' (None if not found)."""
    value: Any = _ANY.decode(raw)
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


# --------------------------------------------------------------------------- parser


def parse_candidates(path: Path) -> CandidateData:
    """Parse and validate the whole file (no cache)."""
    with no_gc(), one_thread():
        return _Parser(Path(path)).run()


@contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector: millions of short-lived acyclic objects would
    otherwise trigger full collections over everything alive (2-3x slower parsing)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class _Parser:
    """One pass: raw records -> chunks of typed records -> flat checked arrays -> CandidateData."""

    def __init__(self, path: Path):
        self.path = path
        self.L: int | None = None  # shots, from the file's first sequence
        self.first_seq: tuple[str, int] = ("", 0)  # (query key, candidate index) that set L
        self.source_codes: dict[str | None, int] = {}
        self.parts: list[dict[str, np.ndarray]] = []
        self.counts = dict(candidates=0, duplicates_dropped=0, failed=0, missing_gt_prob=0, missing_rel_score=0)

    def run(self) -> CandidateData:
        with RawFile(self.path) as raw:
            file_meta = _ANY.decode(raw.members["_meta"]) if "_meta" in raw.members else None
            ignored = [k for k in raw.members if k.startswith("_") and k != "_meta"]
            keys: list[str] = []
            recs: list[_Record] = []
            for key, value in raw.queries():
                keys.append(key)
                recs.append(decode_record(self.path, key, value))
                if len(keys) == CHUNK:
                    self.parts.append(_Chunk(self, keys, recs).build())
                    keys, recs = [], []
            if keys:
                self.parts.append(_Chunk(self, keys, recs).build())
        if not self.parts:
            raise LeverError(f"{self.path}: no queries in the file", hint=RECORD_HINT)
        meta = {"file_meta": file_meta, "read": dict(self.counts), "ignored_keys": ignored}
        return self._finish(meta)

    def _finish(self, meta: dict[str, Any]) -> CandidateData:
        cat = {k: np.concatenate([p[k] for p in self.parts]) for k in self.parts[0]}
        qids = cat["query_ids"]
        meta["read"]["queries"] = len(qids)
        order = np.argsort(qids, kind="stable")
        dup = np.nonzero(np.diff(qids[order]) == 0)[0]
        if len(dup):
            raise LeverError(
                f"{self.path}: query id {int(qids[order][dup[0]])} appears more than once",
                hint="each query is one top-level key; keys are compared as integers",
            )
        sizes = cat["pool_sizes"]  # ragged pools -> [Q, K] padded with -1
        pools = np.full((len(qids), int(sizes.max())), -1, dtype=np.int64)
        rows = np.repeat(np.arange(len(qids)), sizes)
        cols = np.arange(len(rows)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        pools[rows, cols] = cat["pool_flat"]
        offsets = np.zeros(len(qids) + 1, dtype=np.int64)
        np.cumsum(cat["group_sizes"], out=offsets[1:])
        t = torch.from_numpy
        data = CandidateData(
            query_ids=t(qids), pools=t(pools), pool_sizes=t(sizes), offsets=t(offsets),
            pointers=t(cat["pointers"]), correct=t(cat["correct"]), acc=t(cat["acc"]),
            gt_prob=t(cat["gt_prob"]), rel=t(cat["rel"]), failed=t(cat["failed"]), source=t(cat["source"]),
            source_names=["unknown" if s is None else s for s in self.source_codes],
            meta=meta, cand_index=t(cat["cand_index"]),
        )  # fmt: skip
        if np.any(np.diff(qids) < 0):
            data = data.subset(torch.from_numpy(order))  # queries sorted by id as integers
        return data


class _Chunk:
    """A chunk of queries as flat numpy arrays, checked all at once."""

    def __init__(self, parser: _Parser, keys: list[str], recs: list[_Record]):
        self.p, self.path, self.keys, self.recs = parser, parser.path, keys, recs
        self.qids = [_query_id(k, self.path) for k in keys]
        self.cands = list(chain.from_iterable(r.pointer_candidates for r in recs))
        self.ncand = np.fromiter((len(r.pointer_candidates) for r in recs), dtype=np.int64, count=len(recs))
        self.seq_q = np.repeat(np.arange(len(recs)), self.ncand)  # [Sc] query of each candidate
        starts = np.cumsum(self.ncand) - self.ncand
        self.cand_idx = np.arange(len(self.cands)) - starts[self.seq_q]  # [Sc] index in its query's list

    def where(self, k: int) -> str:
        return f"{self.path}: query {self.keys[self.seq_q[k]]}, candidate {self.cand_idx[k]}"

    def fail(self, bad: np.ndarray, field: str, what: Callable[[int], str], hint: str | None = None) -> None:
        """Raise for the first True row of bad [Sc], counting the others."""
        rows = np.flatnonzero(bad)
        if len(rows):
            k = int(rows[0])
            more = f" ({len(rows) - 1} more candidates have this problem)" if len(rows) > 1 else ""
            raise LeverError(f"{self.where(k)}: field '{field}' {what(k)}{more}", hint=hint)

    def build(self) -> dict[str, np.ndarray]:
        self._check_records()
        pool_flat, pool_sizes = self._pools()
        cols = self._columns()
        self._check(cols, pool_flat, pool_sizes)
        keep = self._dedupe(cols)
        c = self.p.counts
        c["candidates"] += len(self.cands)
        c["duplicates_dropped"] += int(len(keep) - keep.sum())
        c["failed"] += int(cols["failed"][keep].sum())
        c["missing_gt_prob"] += int(np.isnan(cols["gt_prob"][keep]).sum())
        c["missing_rel_score"] += int(np.isnan(cols["rel"][keep]).sum())
        f32 = np.float32
        return {
            "query_ids": np.array(self.qids, dtype=np.int64),
            "pool_flat": pool_flat,
            "pool_sizes": pool_sizes,
            "group_sizes": np.bincount(self.seq_q[keep], minlength=len(self.qids)),
            "pointers": cols["pointers"][keep],
            "correct": cols["correct"][keep].astype(f32),
            "acc": cols["acc"][keep].astype(f32),
            "gt_prob": cols["gt_prob"][keep].astype(f32),
            "rel": cols["rel"][keep].astype(f32),
            "failed": cols["failed"][keep],
            "source": cols["source"][keep],
            "cand_index": self.cand_idx[keep],
        }

    def _check_records(self) -> None:
        for key, qid, rec in zip(self.keys, self.qids, self.recs):
            if not rec.pointer_candidates:
                raise LeverError(
                    f"{self.path}: query {key}: no usable sequence: 'pointer_candidates' is empty",
                    hint="every query needs at least one scored candidate sequence; remove the query or regenerate it",
                )
            if not rec.candidate_pool_ids:
                raise LeverError(f"{self.path}: query {key}: field 'candidate_pool_ids' is empty", hint=RECORD_HINT)
            q = rec.query.query_id if rec.query is not None else None
            if type(q) is int and q != qid:
                raise LeverError(
                    f"{self.path}: query {key}: field 'query.query_id' is {q}, but the record's key is {key}",
                    hint="each record's key is its query id",
                )

    def _pools(self) -> tuple[np.ndarray, np.ndarray]:
        pools = [r.candidate_pool_ids for r in self.recs]
        sizes = np.fromiter(map(len, pools), dtype=np.int64, count=len(pools))
        flat = _int64(pools, int(sizes.sum()), f"{self.path}: query {self.keys[0]}..: field 'candidate_pool_ids'")
        bad = np.flatnonzero(flat < 0)
        if len(bad):
            q = int(np.searchsorted(np.cumsum(sizes), bad[0], side="right"))
            raise LeverError(
                f"{self.path}: query {self.keys[q]}: field 'candidate_pool_ids' holds {int(flat[bad[0]])}: "
                "pool items are global train indices (>= 0)"
            )
        return flat, sizes

    def _columns(self) -> dict[str, np.ndarray]:
        """Per-candidate fields -> arrays; missing scores are errors unless the evaluation failed."""
        rows = list(map(_FIELDS, self.cands))  # one C call per candidate, then transpose
        ptrs, correct, acc, gt, rel, flags, modes, sources, pg = zip(*rows)
        failed = np.array(flags, dtype=bool)  # None -> False
        failed |= np.fromiter(map(FAILED_MODES.__contains__, modes), dtype=bool, count=len(modes))
        scores = {}
        for field, values in (("vqa_correct", correct), ("vqa_acc_score", acc), ("vqa_gt_prob", gt), ("vqa_rel_score", rel)):
            x = self._floats(field, values)  # NaN = missing (JSON has no NaN, msgspec refuses overflow)
            if field in ("vqa_correct", "vqa_acc_score"):
                missing = np.isnan(x)
                self.fail(missing & ~failed, field, lambda k: "is missing", hint=CAND_HINT)
                x[missing] = 0.0  # a failed evaluation without scores
            scores[field] = x
        lens = np.fromiter(map(len, ptrs), dtype=np.int64, count=len(ptrs))
        if self.p.L is None:
            self.p.L, self.p.first_seq = int(lens[0]), (self.keys[0], 0)
        L, (fq, fc) = self.p.L, self.p.first_seq
        self.fail(lens == 0, "pointer", lambda k: "is empty: a sequence has at least one index")
        self.fail(
            lens != L, "pointer",
            lambda k: f"has {lens[k]} indices, but the file's first sequence (query {fq}, candidate {fc}) has {L}",
            hint="all sequences of a file must have the same number of shots",
        )  # fmt: skip
        pointers = _int64(ptrs, len(ptrs) * L, self.where(0) + "..: field 'pointer'").reshape(-1, L)
        has_pg = np.fromiter(map(is_not, pg, repeat(None)), dtype=bool, count=len(pg))
        pg_full = np.full((len(ptrs), L), -1, dtype=np.int64)
        given = [v for v in pg if v is not None]
        if given:
            pg_lens = np.full(len(ptrs), L, dtype=np.int64)
            pg_lens[has_pg] = np.fromiter(map(len, given), dtype=np.int64, count=len(given))
            self.fail(pg_lens != L, "pointer_global", lambda k: f"has {pg_lens[k]} indices, 'pointer' has {L}")
            pg_full[has_pg] = _int64(given, len(given) * L, self.where(0) + "..: field 'pointer_global'").reshape(-1, L)
        code = self.p.source_codes
        for name in set(sources):
            code.setdefault(name, len(code))
        source = np.fromiter(map(code.__getitem__, sources), dtype=np.int64, count=len(sources))
        return {
            "pointers": pointers, "correct": scores["vqa_correct"], "acc": scores["vqa_acc_score"],
            "gt_prob": scores["vqa_gt_prob"], "rel": scores["vqa_rel_score"], "failed": failed,
            "source": source, "has_pg": has_pg, "pointer_global": pg_full,
        }  # fmt: skip

    def _floats(self, field: str, values: tuple) -> np.ndarray:
        try:
            return np.frombuffer(array("d", values), dtype=np.float64).copy()
        except TypeError:  # some are null
            return np.array(values, dtype=np.float64)
        except OverflowError:
            big = np.array([isinstance(v, int) and abs(v) > 2**63 for v in values])
            self.fail(big, field, lambda k: "is a number too large to be a score")
            raise

    def _check(self, cols: dict[str, np.ndarray], pool_flat: np.ndarray, pool_sizes: np.ndarray) -> None:
        """Vectorised checks; each names the first bad candidate and counts the rest."""
        ptr = cols["pointers"]  # [Sc, L]
        size = pool_sizes[self.seq_q]  # [Sc] pool size of each candidate's query
        out = (ptr < 0) | (ptr >= size[:, None])
        self.fail(
            out.any(1), "pointer",
            lambda k: f"holds {int(ptr[k][out[k]][0])}, outside the pool: valid local indices are 0..{size[k] - 1}",
            hint="'pointer' holds positions in 'candidate_pool_ids'; 'pointer_global' holds the global ids",
        )  # fmt: skip
        srt = np.sort(ptr, axis=1)
        rep = (srt[:, 1:] == srt[:, :-1]).any(1)
        self.fail(rep, "pointer", lambda k: f"is {ptr[k].tolist()}: an index repeats; a sequence picks distinct items")
        for field, key in (("vqa_correct", "correct"), ("vqa_acc_score", "acc"), ("vqa_gt_prob", "gt_prob"), ("vqa_rel_score", "rel")):
            x = cols[key]  # NaN in gt_prob / rel means "not in the file"; NaN literals are rejected as JSON
            self.fail(np.isinf(x), field, lambda k, x=x: f"is {x[k]}: scores must be finite numbers")
        corr, acc = cols["correct"], cols["acc"]
        self.fail((corr != 0) & (corr != 1), "vqa_correct", lambda k: f"is {corr[k]:g}: must be 0 or 1")
        self.fail((acc < 0) | (acc > 1), "vqa_acc_score", lambda k: f"is {acc[k]:g}: VQA accuracy lies in [0, 1]")
        self.fail(
            (corr == 1) != (acc > 0), "vqa_correct",
            lambda k: f"is {corr[k]:g} but vqa_acc_score is {acc[k]:g}: vqa_correct must be 1 exactly when vqa_acc_score > 0",
        )  # fmt: skip
        # pointer_global, where given, must name the pool items that pointer points at
        starts = np.cumsum(pool_sizes) - pool_sizes
        expect = pool_flat[starts[self.seq_q][:, None] + ptr]  # [Sc, L]
        pg = cols["pointer_global"]
        bad = cols["has_pg"] & (pg != expect).any(1)
        self.fail(
            bad, "pointer_global",
            lambda k: f"is {pg[k].tolist()}, but the pool items at pointer {ptr[k].tolist()} are {expect[k].tolist()}",
        )  # fmt: skip

    def _dedupe(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        """keep [Sc]: the first sequence of each (query, index set), usable evaluations before failed ones."""
        srt = np.sort(cols["pointers"], axis=1)  # the index set, order ignored
        keys = [np.arange(len(srt)), cols["failed"]] + [srt[:, j] for j in reversed(range(srt.shape[1]))] + [self.seq_q]
        order = np.lexsort(keys)  # by query, index set, usable first, file order
        s, q = srt[order], self.seq_q[order]
        same = np.zeros(len(order), dtype=bool)
        same[1:] = (q[1:] == q[:-1]) & (s[1:] == s[:-1]).all(1)
        keep = np.ones(len(order), dtype=bool)
        keep[order[same]] = False
        return keep


def _int64(lists: Sequence[list[int]], total: int, where: str) -> np.ndarray:
    """Concatenate lists of ints into one int64 array."""
    try:
        return np.fromiter(chain.from_iterable(lists), dtype=np.int64, count=total)
    except OverflowError:
        raise LeverError(f"{where}: an index is too large for a 64-bit integer") from None


def _query_id(key: str, path: Path) -> int:
    try:
        return int(key)
    except ValueError:
        raise LeverError(
            f"{path}: top-level key {key!r} is not a query id",
            hint='query records are keyed by their integer query id ("1234"); keys starting with "_" are not queries',
        ) from None
