"""Read and validate a candidate-data JSON file (docs/data.md) into `CandidateData`.

Why it is fast on a 1 GB file: msgspec splits the memory-mapped file into raw query
records and decodes them, a chunk of queries at a time, into typed structs
(`rawjson`); every chunk's candidates become flat numpy arrays checked all at once.
The stdlib `json` decoder is 4-5x slower and builds millions of dicts. Parsed files
are cached, keyed by the file's SHA-256 (`cache`).

Read-time rules:
- structural problems (bad JSON, missing fields, bad pointers, NaN, inconsistent
  scores, ...) raise LeverError naming the file, query id, candidate index and field;
- duplicate sequences (the same ordered sequence twice in one query) are dropped,
  keeping the first (a usable evaluation wins over a failed one), and counted. Order
  is the prompt's order: [38, 5] and [5, 38] were scored separately and are two
  sequences, both kept. `duplicates="keep"` keeps every copy (the original trainer's
  reading; `CandidateData.duplicate` flags the repeats, and the parse cache holds them
  all, so one cached parse serves both readings);
- failed evaluations (eval_failed, or vqa_eval_mode fallback/error) are kept and
  flagged; their vqa_correct / vqa_acc_score may be missing (read as 0). The plan's
  `skip_failed` drops them;
- vqa_gt_prob / vqa_rel_score are optional (NaN where missing, counted) and lie in
  [0, 1]; the reward mode that needs them refuses data without them;
- a query key given twice is an error (a JSON object would keep the last record);
- behaviour log-probabilities (`behaviour_logp`, `behaviour_step_logps`) are optional: finite, <= 0, the
  per-pick list as long as the sequence and summing to the total; null only for a deterministic source
  (retrieval) once any sequence of the file has one. A file without them reads as before (None).
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import threading
import time
import traceback
from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from itertools import chain, repeat
from operator import attrgetter, is_not
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lever.errors import LeverError
from lever.io import check_readable, is_input_file

from .cache import cache_path, file_sha256, read_cache, write_cache
from .candidates import DETERMINISTIC_SOURCES, CandidateData
from .rawjson import CAND_HINT, RECORD_HINT, RawFile, Record, decode_json, decode_record
from .segments import one_thread

CHUNK = 256  # queries decoded into Python objects at a time (small: stays in the CPU caches)
PARALLEL_MIN_BYTES = 64 << 20  # files at least this big are parsed by two processes
FAILED_MODES = frozenset({"fallback", "error"})

Log = Callable[[str], Any]

_FIELDS = attrgetter("pointer", "vqa_correct", "vqa_acc_score", "vqa_gt_prob", "vqa_rel_score", "eval_failed",
                     "vqa_eval_mode", "gen_method", "pointer_global", "behaviour_logp", "behaviour_step_logps")  # fmt: skip
BEHAVIOUR_HINT = (
    "a sequence's behaviour_logp is its log-probability (<= 0) under the policy that proposed it, null only for a "
    "deterministic source (retrieval); `lever data generate` writes them"
)
STEP_SUM_TOL = 1e-3  # |sum(behaviour_step_logps) - behaviour_logp| allowed (values are written rounded)


@one_thread()
def load_candidates(
    path: Path | str, cache_dir: Path | str | None = None, log: Log = print, workers: int = 2, duplicates: str = "drop"
) -> CandidateData:
    """Read, validate and (with cache_dir) cache a candidate-data JSON file.

    workers = 2 parses a large file (>= 64 MB) in two processes (fork); 1 = this process only.
    duplicates: "drop" (an ordered sequence listed again in its query is read once) or "keep" (every copy,
    the repeats flagged in `duplicate`; `CandidateData.without_duplicates` drops them later, as a plan's
    `data.duplicates = "drop"` does).
    """
    if duplicates not in ("drop", "keep"):
        raise ValueError(f"duplicates must be 'drop' or 'keep', got {duplicates!r}")
    data = _load(Path(path), cache_dir, log, workers)
    return data if duplicates == "keep" else data.without_duplicates()


def _load(path: Path, cache_dir: Path | str | None, log: Log, workers: int) -> CandidateData:
    """Every listed sequence, repeats flagged (from the cache when it has the file)."""
    path = Path(path)
    if not is_input_file(path, "candidate-data file"):
        raise LeverError(f"{path}: no such candidate-data file")
    check_readable(path, "candidate-data file")
    t0 = time.perf_counter()
    st = path.stat()
    digest = file_sha256(path)
    cache = cache_path(cache_dir, digest) if cache_dir else None
    if cache is not None and cache.is_file():
        data = read_cache(cache, digest, log)
        if data is not None:
            data.meta.update(path=str(path), mtime_ns=st.st_mtime_ns)
            log(f"{path}: {data.describe()} (from cache, {time.perf_counter() - t0:.1f} s)")
            return data
    data = parse_candidates(path, workers)
    data.meta.update(path=str(path), sha256=digest, size=st.st_size, mtime_ns=st.st_mtime_ns)
    read = data.meta["read"]
    log(
        f"{path}: {data.describe()}, read in {time.perf_counter() - t0:.1f} s "
        f"({read['duplicates_dropped']} repeated ordered sequences, {read['failed']} failed evaluations flagged)"
    )
    if cache is not None:
        write_cache(cache, data, log)
    return data


# --------------------------------------------------------------------------- parser


def parse_candidates(path: Path, workers: int = 2) -> CandidateData:
    """Parse and validate the whole file (no cache)."""
    with no_gc(), one_thread():
        return _Parser(Path(path)).run(workers)


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

    def run(self, workers: int = 2) -> CandidateData:
        with RawFile(self.path) as raw:
            file_meta = decode_json(raw.members["_meta"]) if "_meta" in raw.members else None
            ignored = [k for k in raw.members if k.startswith("_") and k != "_meta"]
            items = list(raw.queries())
            if not items:
                raise LeverError(f"{self.path}: no queries in the file", hint=RECORD_HINT)
            first = decode_record(self.path, *items[0]).pointer_candidates
            if first:  # the file's first sequence sets the number of shots for all
                self.L, self.first_seq = len(first[0].pointer), (items[0][0], 0)
            parallel = workers > 1 and len(items) >= 4 * CHUNK and len(raw.buf) >= PARALLEL_MIN_BYTES
            # fork copies only this thread: with others running (a progress display) stay in one process
            if parallel and "fork" in mp.get_all_start_methods() and threading.active_count() == 1:
                self._parse_forked(items, raw)
            else:
                self._parse(items, raw)
            del items, first  # they point into the file's map
        meta = {"file_meta": file_meta, "read": dict(self.counts), "ignored_keys": ignored}
        return self._finish(meta)

    def _parse(self, items: list[tuple[str, Any]], raw: RawFile) -> None:
        """Decode and check `items` (key, raw record) chunk by chunk into self.parts."""
        for start in range(0, len(items), CHUNK):
            if start % (32 * CHUNK) == 0:
                raw.release()  # records already parsed need not stay resident
            keys = [k for k, _ in items[start : start + CHUNK]]
            recs = [decode_record(self.path, k, v) for k, v in items[start : start + CHUNK]]
            self.parts.append(_Chunk(self, keys, recs).build())

    def _parse_forked(self, items: list[tuple[str, Any]], raw: RawFile) -> None:
        """Use both cores: a forked child parses the second half (sharing the map), this
        process the first; the child sends back its arrays, counts and source names."""
        half = len(items) // 2 // CHUNK * CHUNK
        ctx = mp.get_context("fork")
        recv, send = ctx.Pipe(duplex=False)
        child = ctx.Process(target=self._child, args=(items[half:], raw, send), daemon=True)
        child.start()
        try:
            self._parse(items[:half], raw)  # an error here is the first in file order
            kind, *payload = recv.recv()
        except BaseException:
            child.kill()
            child.join()
            raise
        child.join()
        if kind == "error":
            raise LeverError(payload[0], hint=payload[1])
        if kind == "crash":
            raise RuntimeError(f"parsing {self.path} in a child process failed:\n{payload[0]}")
        parts, counts, names = payload
        codes = np.array([self.source_codes.setdefault(n, len(self.source_codes)) for n in names], dtype=np.int64)
        for part in parts:  # the child's source codes -> this process's
            part["source"] = codes[part["source"]]
        self.parts += parts
        for k, v in counts.items():
            self.counts[k] += v

    def _child(self, items: list[tuple[str, Any]], raw: RawFile, send: Any) -> None:
        """In the forked child: parse, then send ("ok", parts, counts, source names) or the error."""
        try:
            self.parts, self.source_codes = [], {}
            self.counts = {k: 0 for k in self.counts}
            self._parse(items, raw)
            send.send(("ok", self.parts, self.counts, list(self.source_codes)))
        except LeverError as err:
            send.send(("error", err.args[0], err.hint))
        except BaseException:
            send.send(("crash", traceback.format_exc()))

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
        self._check_behaviour(cat, qids, offsets)
        t = torch.from_numpy
        beh = {k: t(cat[k]) if np.isfinite(cat[k]).any() else None for k in ("behaviour_logp", "behaviour_steps")}
        data = CandidateData(
            query_ids=t(qids), pools=t(pools), pool_sizes=t(sizes), offsets=t(offsets),
            pointers=t(cat["pointers"]), correct=t(cat["correct"]), acc=t(cat["acc"]),
            gt_prob=t(cat["gt_prob"]), rel=t(cat["rel"]), failed=t(cat["failed"]), source=t(cat["source"]),
            source_names=["unknown" if s is None else s for s in self.source_codes],
            meta=meta, cand_index=t(cat["cand_index"]), cand_count=t(cat["cand_count"]),
            duplicate=t(cat["duplicate"]), **beh,
        )  # fmt: skip
        if np.any(np.diff(qids) < 0):
            data = data.subset(torch.from_numpy(order))  # queries sorted by id as integers
        return data

    def _check_behaviour(self, cat: dict[str, np.ndarray], qids: np.ndarray, offsets: np.ndarray) -> None:
        """Once any sequence of the file has a behaviour log-prob (or per-pick list), every sequence of a
        non-deterministic source needs one: a file half with them would weight half its sequences."""
        names = np.array([s in DETERMINISTIC_SOURCES for s in self.source_codes], dtype=bool)
        random = ~names[cat["source"]]  # [S] proposed by a policy or a draw
        for key, field in (("behaviour_logp", "behaviour_logp"), ("behaviour_steps", "behaviour_step_logps")):
            x = cat[key] if cat[key].ndim == 1 else cat[key][:, 0]
            given = np.isfinite(x)
            missing = np.flatnonzero(random & ~given)
            if given.any() and len(missing):
                r = int(missing[0])
                q = int(np.searchsorted(offsets, r, side="right")) - 1
                raise LeverError(
                    f"{self.path}: query {int(qids[q])}, candidate {int(cat['cand_index'][r])}: field '{field}' is missing, "
                    f"but other sequences of the file have one ({len(missing)} sequences of non-deterministic sources lack it)",
                    hint=BEHAVIOUR_HINT + " for every sequence",
                )


class _Chunk:
    """A chunk of queries as flat numpy arrays, checked all at once."""

    def __init__(self, parser: _Parser, keys: list[str], recs: list[Record]):
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
        return {  # every listed sequence, in file order; the repeats flagged (load_candidates drops them by default)
            "query_ids": np.array(self.qids, dtype=np.int64),
            "pool_flat": pool_flat,
            "pool_sizes": pool_sizes,
            "group_sizes": self.ncand,
            "cand_count": self.ncand,
            "pointers": cols["pointers"],
            "correct": cols["correct"].astype(f32),
            "acc": cols["acc"].astype(f32),
            "gt_prob": cols["gt_prob"].astype(f32),
            "rel": cols["rel"].astype(f32),
            "failed": cols["failed"],
            "source": cols["source"],
            "cand_index": self.cand_idx,
            "duplicate": ~keep,
            "behaviour_logp": cols["behaviour_logp"].astype(f32),
            "behaviour_steps": cols["behaviour_steps"].astype(f32),
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
        ptrs, correct, acc, gt, rel, flags, modes, sources, pg, beh, beh_steps = zip(*rows)
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
        beh_total, beh_full = self._behaviour(beh, beh_steps, L)
        code = self.p.source_codes
        for name in set(sources):
            code.setdefault(name, len(code))
        source = np.fromiter(map(code.__getitem__, sources), dtype=np.int64, count=len(sources))
        return {
            "pointers": pointers, "correct": scores["vqa_correct"], "acc": scores["vqa_acc_score"],
            "gt_prob": scores["vqa_gt_prob"], "rel": scores["vqa_rel_score"], "failed": failed,
            "source": source, "has_pg": has_pg, "pointer_global": pg_full,
            "behaviour_logp": beh_total, "behaviour_steps": beh_full,
        }  # fmt: skip

    def _behaviour(self, beh: tuple, steps: tuple, L: int) -> tuple[np.ndarray, np.ndarray]:
        """behaviour_logp [Sc] and behaviour_step_logps [Sc, L] (NaN where null), checked: finite (JSON holds no
        NaN or Infinity), <= 0, L picks summing to the total."""
        total = self._floats("behaviour_logp", beh)
        full = np.full((len(steps), L), np.nan)
        has = np.fromiter(map(is_not, steps, repeat(None)), dtype=bool, count=len(steps))
        if has.any():
            given = [v for v in steps if v is not None]
            lens = np.zeros(len(steps), dtype=np.int64)
            lens[has] = np.fromiter(map(len, given), dtype=np.int64, count=len(given))
            self.fail(has & (lens != L), "behaviour_step_logps", lambda k: f"has {lens[k]} values, 'pointer' has {L}")
            full[has] = np.array(given, dtype=np.float64).reshape(-1, L)
            self.fail(
                has & np.isnan(total), "behaviour_step_logps", lambda k: "is given without 'behaviour_logp'", BEHAVIOUR_HINT
            )
        for field, x in (("behaviour_logp", total), ("behaviour_step_logps", full)):
            bad = x > 0 if x.ndim == 1 else (x > 0).any(1)
            self.fail(bad, field, lambda k, x=x: f"is {x[k].tolist()}: a log-probability is <= 0", BEHAVIOUR_HINT)
        off = np.abs(full.sum(1) - total) > STEP_SUM_TOL * np.maximum(1.0, np.abs(total))
        self.fail(
            has & off, "behaviour_step_logps",
            lambda k: f"sums to {full[k].sum():g}, but 'behaviour_logp' is {total[k]:g}: the total is the sum of the picks",
        )  # fmt: skip
        return total, full

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
        for field, key in (
            ("vqa_correct", "correct"),
            ("vqa_acc_score", "acc"),
            ("vqa_gt_prob", "gt_prob"),
            ("vqa_rel_score", "rel"),
        ):
            x = cols[key]  # NaN in gt_prob / rel means "not in the file"; NaN literals are rejected as JSON
            self.fail(np.isinf(x), field, lambda k, x=x: f"is {x[k]}: scores must be finite numbers")
        for field, key in (("vqa_gt_prob", "gt_prob"), ("vqa_rel_score", "rel")):
            x = cols[key]  # NaN (missing) compares False: not refused
            self.fail((x < 0) | (x > 1), field, lambda k, x=x: f"is {x[k]:g}: it lies in [0, 1]", hint=CAND_HINT)
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
        """keep [Sc]: the first of each (query, ordered sequence), usable evaluations before failed ones.

        Only the same indices in the same order are a duplicate: the order is the prompt's order.
        """
        ptr = cols["pointers"]  # [Sc, L], order kept
        keys = [np.arange(len(ptr)), cols["failed"]] + [ptr[:, j] for j in reversed(range(ptr.shape[1]))] + [self.seq_q]
        order = np.lexsort(keys)  # by query, ordered sequence, usable first, file order
        s, q = ptr[order], self.seq_q[order]
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
