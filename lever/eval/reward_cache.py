"""The reward cache: every prompt the VLM answers, answered once per workspace.

A prompt is (the VLM and prompt identity, split, query, ordered demonstrations). Its answer (the raw
generated text) and, when asked, the VLM's probability of the human answers (`gt_prob`) are stored in
`<workspace cache>/rewards.sqlite`, a SQLite database in WAL mode (Python's standard library), so:

* concurrent writers (sweep jobs, `torchrun` ranks, two runs on one workspace) share it safely: SQLite
  serialises the writes, WAL lets readers go on while one writes, and `INSERT OR IGNORE` makes two
  writers of one prompt agree (a prompt's answer is a function of the prompt: greedy decoding);
* a crash loses at most the batch being answered, never the file: each batch is one transaction;
* every row carries a CRC-32 of its key and value, checked on read; a damaged row or file is a
  `DamagedState` (exit 2) naming the file, never a wrong reward.

What is stored is what the VLM said, not a reward: accuracy (under any metric) and the reward (under any
reward setting) are computed from it on read by the same functions as for a fresh answer, so two plans
with other metrics or rewards share the VLM's calls. The identity (`scoring_identity`) holds everything
the answer depends on: the simulated world's files, or the VLM's weights, the prompt protocol and the
generation settings, and the dataset's files. Failed answers are never stored (they are asked again).

`CachedBackend` puts the cache in front of any `Backend`; it counts the VLM calls, the cache hits and
the seconds spent answering (the metrics `vlm/calls`, `vlm/hits`, `vlm/s_per_call`). `lever evaluate` answers
through it too (`lever.eval.world`): a prompt training or `data generate` answered under the same identity (the
simulated world; or the VLM, the protocol the prompt is built and decoded with, the generation settings) is not
asked again by an evaluation, and the other way round. With a `Budget`
(`lever run --max-vlm-calls`) it asks the VLM no more than the budget's new prompts: the batch that would
pass it is answered up to the budget (those answers are stored), then `BudgetSpent` stops the command.
"""

from __future__ import annotations

import json
import sqlite3
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lever.data.sources import Dataset
from lever.errors import BudgetSpent, DamagedState
from lever.keys import content_key

from .backend import Backend, Request, Response

CACHE_FILE = "rewards.sqlite"
SCHEMA = 1
_FIX = "delete it: the cache is filled again by asking the VLM (nothing else is lost)"


def _crc(ns: str, split: str, query: int, demos: str, kind: str, value: str) -> int:
    return zlib.crc32(f"{ns}|{split}|{query}|{demos}|{kind}|{value}".encode())


def prompt_key(request: Request) -> tuple[str, int, str]:
    """(split, query question id, ordered demonstration question ids) of a request."""
    return request.split, request.query.question_id, ",".join(str(d.question_id) for d in request.demos)


class RewardCache:
    """The workspace's answer store (module docstring). One connection per process and file."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(self.path, timeout=120, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")  # in WAL mode: durable against a crash of the process
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS answers (ns TEXT, split TEXT, query INTEGER, demos TEXT, kind TEXT, "
                "value TEXT NOT NULL, crc INTEGER NOT NULL, PRIMARY KEY (ns, split, query, demos, kind)) WITHOUT ROWID"
            )
            self.conn.execute("CREATE TABLE IF NOT EXISTS identities (ns TEXT PRIMARY KEY, identity TEXT NOT NULL)")
            self.conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA),))
            self.conn.execute("COMMIT")
            (schema,) = self.conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            (check,) = self.conn.execute("PRAGMA quick_check").fetchone()
        except sqlite3.DatabaseError as err:
            raise DamagedState(f"the reward cache {self.path} is damaged: {err}", hint=_FIX) from None
        if check != "ok":
            raise DamagedState(f"the reward cache {self.path} is damaged: {check}", hint=_FIX)
        if schema != str(SCHEMA):
            raise DamagedState(f"the reward cache {self.path} has schema {schema}, this lever reads {SCHEMA}", hint=_FIX)

    def namespace(self, identity: dict[str, Any]) -> str:
        """The key of an identity (what the answers depend on), recorded beside the answers for readers."""
        ns = content_key(identity, length=16)
        self._write("INSERT OR IGNORE INTO identities VALUES (?, ?)", [(ns, json.dumps(identity, sort_keys=True))])
        return ns

    def get(self, ns: str, kind: str, keys: list[tuple[str, int, str]]) -> dict[tuple[str, int, str], Any]:
        """The stored values of `kind` ("answer" or "gt_prob") for the prompt keys that have one, verified."""
        out: dict[tuple[str, int, str], Any] = {}
        try:
            for start in range(0, len(keys), 400):
                chunk = keys[start : start + 400]
                marks = ",".join("(?, ?, ?)" for _ in chunk)
                flat = [x for k in chunk for x in k]
                rows = self.conn.execute(
                    f"SELECT split, query, demos, value, crc FROM answers WHERE ns = ? AND kind = ? "
                    f"AND (split, query, demos) IN (VALUES {marks})",
                    [ns, kind, *flat],
                ).fetchall()
                for split, query, demos, value, crc in rows:
                    if crc != _crc(ns, split, query, demos, kind, value):
                        raise DamagedState(
                            f"the reward cache {self.path} is damaged: the {kind} of query {query} ({split}) with "
                            f"demonstrations [{demos}] fails its checksum",
                            hint=_FIX,
                        )
                    out[(split, query, demos)] = json.loads(value)
        except (sqlite3.DatabaseError, ValueError) as err:
            raise DamagedState(f"the reward cache {self.path} is damaged: {err}", hint=_FIX) from None
        return out

    def put(self, ns: str, kind: str, values: dict[tuple[str, int, str], Any]) -> None:
        """Store values (one transaction); a prompt already stored keeps its first value."""
        rows = []
        for (split, query, demos), v in values.items():
            value = json.dumps(v)
            rows.append((ns, split, query, demos, kind, value, _crc(ns, split, query, demos, kind, value)))
        self._write("INSERT OR IGNORE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def count(self) -> int:
        """How many values the cache holds."""
        return self.conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def _write(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        try:
            self.conn.execute("BEGIN IMMEDIATE")  # take the write lock first: no deadlock between two upgraders
            self.conn.executemany(sql, rows)
            self.conn.execute("COMMIT")
        except sqlite3.DatabaseError as err:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise DamagedState(f"cannot write the reward cache {self.path}: {err}", hint=_FIX) from None

    def close(self) -> None:
        self.conn.close()


_OPEN: dict[Path, RewardCache] = {}


def open_cache(cache_dir: Path) -> RewardCache:
    """The workspace's reward cache, opened once per process."""
    path = (Path(cache_dir) / CACHE_FILE).resolve()
    if path not in _OPEN or not path.exists():
        _OPEN[path] = RewardCache(path)
    return _OPEN[path]


@dataclass
class Counts:
    """What the VLM was asked: prompts answered (calls), prompts served from the cache (hits), seconds answering."""

    calls: int = 0
    hits: int = 0
    seconds: float = 0.0

    def since(self, before: Counts) -> Counts:
        return Counts(self.calls - before.calls, self.hits - before.hits, self.seconds - before.seconds)

    def copy(self) -> Counts:
        return Counts(self.calls, self.hits, self.seconds)

    def metrics(self, prefix: str = "vlm") -> dict[str, float]:
        """`vlm/calls`, `vlm/hits` and `vlm/s_per_call` (0 without calls)."""
        return {
            f"{prefix}/calls": float(self.calls),
            f"{prefix}/hits": float(self.hits),
            f"{prefix}/s_per_call": self.seconds / self.calls if self.calls else 0.0,
        }


@dataclass
class Budget:
    """At most `limit` new VLM calls (cache hits are free) for one command, over every backend it is given to."""

    limit: int
    spent: int = 0

    def take(self, n: int) -> int:
        """How many of `n` new prompts the budget still pays for (they are counted as spent)."""
        paid = max(0, min(n, self.limit - self.spent))
        self.spent += paid
        return paid


@dataclass
class CachedBackend:
    """A backend behind the reward cache: answers (and gt probs) of prompts seen before come from the cache."""

    inner: Backend
    cache: RewardCache
    ns: str
    counts: Counts = field(default_factory=Counts)
    budget: Budget | None = None  # lever run --max-vlm-calls: the new prompts this command may ask
    # split -> its own namespace, for a split whose answers depend on more than `ns`'s identity (the simulated
    # world's held-out test split reads its own files)
    split_ns: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.inner.name

    def answer(self, requests: list[Request]) -> list[Response]:
        keys = [prompt_key(r) for r in requests]
        have = self._get("answer", list(dict.fromkeys(keys)))
        todo = [i for i, k in enumerate(keys) if k not in have]
        self.counts.hits += len(requests) - len(todo)
        paid = self._paid(todo)
        fresh = self._ask(lambda reqs: self.inner.answer(reqs), [requests[i] for i in paid])
        out: dict[int, Response] = {i: Response(have[k]) for i, k in enumerate(keys) if k in have}
        out.update(zip(paid, fresh))
        self._put("answer", {keys[i]: r.raw for i, r in zip(paid, fresh) if not r.failed})
        self._stop_unless_all(paid, todo)
        return [out[i] for i in range(len(requests))]

    def gt_probs(self, requests: list[Request]) -> list[float | None]:
        fn = getattr(self.inner, "gt_probs", None)
        if fn is None:
            return [None] * len(requests)
        keys = [prompt_key(r) for r in requests]
        have = self._get("gt_prob", list(dict.fromkeys(keys)))
        todo = [i for i, k in enumerate(keys) if k not in have]
        fresh = fn([requests[i] for i in todo]) if todo else []
        out: dict[int, float | None] = {i: have[k] for i, k in enumerate(keys) if k in have}
        out.update(zip(todo, fresh))
        self._put("gt_prob", {keys[i]: p for i, p in zip(todo, fresh) if p is not None})
        return [out[i] for i in range(len(requests))]

    def answer_with_gt_probs(self, requests: list[Request]) -> tuple[list[Response], list[float | None]]:
        """`answer` and `gt_probs` together: the prompts missing either are asked in one call of the inner
        backend's `answer_with_gt_probs` (on `hf`, one prefill gives both)."""
        both = getattr(self.inner, "answer_with_gt_probs", None)
        if both is None:
            return self.answer(requests), self.gt_probs(requests)
        keys = [prompt_key(r) for r in requests]
        unique = list(dict.fromkeys(keys))
        answers, probs = self._get("answer", unique), self._get("gt_prob", unique)
        todo = [i for i, k in enumerate(keys) if k not in answers or k not in probs]
        self.counts.hits += len(requests) - len(todo)
        paid = self._paid(todo)
        fresh_a, fresh_p = self._ask(both, [requests[i] for i in paid]) if paid else ([], [])
        out_a: dict[int, Response] = {i: Response(answers[k]) for i, k in enumerate(keys) if k in answers}
        out_p: dict[int, float | None] = {i: probs[k] for i, k in enumerate(keys) if k in probs}
        out_a.update(zip(paid, fresh_a))
        out_p.update(zip(paid, fresh_p))
        self._put("answer", {keys[i]: r.raw for i, r in zip(paid, fresh_a) if not r.failed})
        self._put("gt_prob", {keys[i]: p for i, p in zip(paid, fresh_p) if p is not None})
        self._stop_unless_all(paid, todo)
        n = len(requests)
        return [out_a[i] for i in range(n)], [out_p[i] for i in range(n)]

    def _by_ns(self, keys: list[tuple[str, int, str]]) -> dict[str, list[tuple[str, int, str]]]:
        """Prompt keys by the namespace their split is stored under."""
        out: dict[str, list[tuple[str, int, str]]] = {}
        for k in keys:
            out.setdefault(self.split_ns.get(k[0], self.ns), []).append(k)
        return out

    def _get(self, kind: str, keys: list[tuple[str, int, str]]) -> dict[tuple[str, int, str], Any]:
        return {k: v for ns, part in self._by_ns(keys).items() for k, v in self.cache.get(ns, kind, part).items()}

    def _put(self, kind: str, values: dict[tuple[str, int, str], Any]) -> None:
        for ns, part in self._by_ns(list(values)).items():
            self.cache.put(ns, kind, {k: values[k] for k in part})

    def _paid(self, todo: list[int]) -> list[int]:
        """The prompts of `todo` (to be asked) that the budget pays for: a prefix (all of them without a budget)."""
        return todo if self.budget is None else todo[: self.budget.take(len(todo))]

    def _stop_unless_all(self, paid: list[int], todo: list[int]) -> None:
        """Stop the command (after storing what was paid for) when the budget left prompts unasked."""
        if len(paid) < len(todo):
            assert self.budget is not None
            raise BudgetSpent(self.budget.spent, self.budget.limit)

    def _ask(self, fn: Any, requests: list[Request]) -> Any:
        if not requests:
            return []
        t0 = time.perf_counter()
        out = fn(requests)
        self.counts.seconds += time.perf_counter() - t0
        self.counts.calls += len(requests)
        return out


def cached_backend(
    inner: Backend, cache_dir: Path, identity: dict[str, Any], splits: dict[str, dict[str, Any]] | None = None
) -> CachedBackend:
    """`inner` behind the workspace's reward cache, under the answers' `identity` (`scoring_identity`); `splits`:
    what the answers of a split depend on besides it (that split's answers get a namespace of their own)."""
    cache = open_cache(cache_dir)
    own = {name: cache.namespace({**identity, "split": {name: extra}}) for name, extra in (splits or {}).items()}
    return CachedBackend(inner, cache, cache.namespace(identity), split_ns=own)


def scoring_identity(ds: Dataset, spec: Any, log: Any = print, protocol: Any = None) -> dict[str, Any]:
    """What a candidate's answer depends on besides its prompt key: on the bundled benchmark the simulated world's
    files and behaviour (it reads no prompt text); on the real path the VLM's weights, the prompt protocol the
    answers are generated with (`protocol`; by default as `lever data generate` answers: `for_candidates()`),
    without its metric, the generation settings and the dataset's files (question ids are the dataset's).
    Evaluation passes the plan's own protocol: it equals training's when `candidate_sampling` equals `sampling`."""
    from lever.keys import file_digest, model_fingerprint, path_fingerprint

    from .protocol import resolve_protocol

    ws = ds.ws
    if ws.is_bundled:
        from lever.bench.vlm import BEHAVIOUR

        paths = ds.bench(log)
        files = (paths.items_train, paths.items_val, paths.world)
        return {
            "backend": "sim",
            "vlm": BEHAVIOUR,
            "files": {Path(f).name: file_digest(Path(f), ws.digest_memo)[:16] for f in files},
        }
    asked = resolve_protocol(spec).for_candidates() if protocol is None else protocol
    prompt = {k: v for k, v in asked.identity().items() if k != "metric"}
    files = ds.inputs()
    return {
        "backend": "hf",
        "vlm": model_fingerprint(ws.path(ws.models.vlm), ws.digest_memo),
        "protocol": prompt,
        "generation": {k: getattr(spec, k) for k in ("max_new_tokens", "num_beams", "dtype", "attn_implementation")},
        "dataset": {k: path_fingerprint(ws.path(v), ws.digest_memo) for k, v in sorted(files.items())},
    }
