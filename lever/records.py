"""The records lever writes about its own results: one typed, versioned dataclass per file, read through one place.

    Status          <run>/status.json             how the run stands (running, trained, done, failed, interrupted)
    StageSelection  _stages/<stage>/selected.json a finished stage's chosen epoch (its presence = the stage is done)
    StageEntry      <run>/stages.json (a list)    each stage of a run: its folder and its selection
                    <run>/selected.json           the run's selection: the final stage's entry
    SelectorChoice  <run>/selected.json           a run that trains nothing: the baseline selector it evaluates
    EvalPointer     <run>/eval/selected.json      which evaluation is the selected checkpoint's

Every path a record stores is relative to the runs folder (`StageEntry.dir`, `StageEntry.checkpoint`);
a stage's own record stores no path at all (its checkpoint is `ckpt/epoch-NNN.safetensors` of its epoch).
Every record that names a checkpoint carries the file's SHA-256, checked before the weights are used.

`parse(cls, data, where, fix)` is the only way a record is read: a missing field, a wrong type or a
record from a lever that wrote no digests is a DamagedState naming the file and the repair (`fix`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from lever.errors import DamagedState
from lever.keys import content_key

VERSION = 2  # 2: checkpoint digests in every record that names a checkpoint; paths relative to the runs folder
STATES = ("running", "trained", "done", "failed", "interrupted")
EVAL_KEY = re.compile(r"^[0-9a-f]{12}$")  # an evaluation folder's name: a content key, never a path
BASELINE_SELECTORS = ("zero-shot", "random", "similar")  # selector.kind of the plans that train nothing

R = TypeVar("R")


@dataclass(frozen=True)
class RowsRecord:
    """What a writer records of a JSONL file so a reader can verify it: its row count and the digest of its bytes."""

    rows: int
    sha256: str


@dataclass
class Status:
    state: str  # one of STATES
    flags: list[str] = field(default_factory=list)  # warnings a reader of the results should see
    message: str | None = None  # why the run failed or stopped
    metrics: RowsRecord | None = None  # the run's metrics.jsonl, once it has trained
    version: int = VERSION

    def check(self, where: Path, fix: str) -> None:
        if self.state not in STATES:
            raise DamagedState(f"{where} is damaged: state {self.state!r} is not one of {', '.join(STATES)}", hint=fix)


@dataclass
class StageSelection:
    """A finished stage's choice: `epoch` by `metric` (`mode`), the value it had, and its checkpoint's digest."""

    stage: str
    epoch: int
    metric: str
    mode: str  # "min" | "max"
    value: float | None
    reason: str
    sha256: str  # SHA-256 of ckpt/epoch-<epoch>.safetensors
    metrics: RowsRecord  # the stage's metrics.jsonl
    key: str | None = None  # the stage's content key, the one its folder is named by (None: an older lever's record)
    version: int = VERSION


@dataclass
class StageEntry:
    """One stage of a run, as stages.json lists it; the final stage's entry is the run's selected.json."""

    stage: str
    kind: str  # "sft" | "rce" | "grpo"
    key: str  # the stage's content key
    dir: str  # the stage folder, relative to the runs folder
    checkpoint: str  # the selected checkpoint, relative to the runs folder
    sha256: str  # its SHA-256
    epoch: int
    metric: str
    mode: str
    value: float | None
    reason: str
    version: int = VERSION

    @classmethod
    def of(cls, sel: StageSelection, kind: str, key: str, dir: str, checkpoint: str) -> StageEntry:
        """A run's entry for a finished stage: its own selection, with where the stage and its checkpoint are."""
        same = ("stage", "epoch", "metric", "mode", "value", "reason", "sha256")
        return cls(kind=kind, key=key, dir=dir, checkpoint=checkpoint, **{k: getattr(sel, k) for k in same})

    def check(self, where: Path, fix: str) -> None:
        for name in (self.dir, self.checkpoint):
            if not name or Path(name).is_absolute() or ".." in Path(name).parts:
                raise DamagedState(f"{where}: path {name!r} is not relative to the runs folder", hint=fix)
        if not self.checkpoint.startswith(self.dir + "/"):
            raise DamagedState(f"{where}: checkpoint {self.checkpoint} is not in its stage folder {self.dir}", hint=fix)


@dataclass
class SelectorChoice:
    """A run that trains nothing: the baseline selector that picks its demonstrations (the run's selected.json).

    `key` names the selector's settings (`selector_key`); its evaluations record it where a trained run's record
    the checkpoint's SHA-256, and `RunDir.selected` checks it against the run's spec.json. Tables read the same
    attributes as of a StageEntry: `stage` is the selector, `epoch` and `value` are None."""

    selector: str  # one of BASELINE_SELECTORS
    key: str  # selector_key(the spec's `selector` table)
    reason: str  # the selector in words: "similar by image, most similar last"
    version: int = VERSION

    kind = "selector"
    epoch = None
    value = None
    metric = None

    @property
    def stage(self) -> str:
        return self.selector

    @property
    def sha256(self) -> str:
        """What an evaluation of this run records as its selector's identity (a trained run's: the checkpoint's digest)."""
        return self.key

    def check(self, where: Path, fix: str) -> None:
        if self.selector not in BASELINE_SELECTORS:
            raise DamagedState(f"{where}: selector {self.selector!r} is not one of {', '.join(BASELINE_SELECTORS)}", hint=fix)
        if not re.match(r"^[0-9a-f]{16}$", self.key):
            raise DamagedState(f"{where}: {self.key!r} is not a selector key (16 hex digits)", hint=fix)


def selector_key(settings: dict[str, Any]) -> str:
    """The content key of a baseline selector's settings (the `selector` table of a resolved spec)."""
    return content_key({"selector": settings}, length=16)


@dataclass
class EvalPointer:
    key: str  # an evaluation folder of this run: eval/<key>/
    version: int = VERSION

    def check(self, where: Path, fix: str) -> None:
        if not EVAL_KEY.match(self.key):
            raise DamagedState(f"{where}: {self.key!r} is not an evaluation of this run (a 12-digit key)", hint=fix)


def to_json(record: Any) -> dict[str, Any]:
    """A record as the JSON object it is stored as."""
    return dataclasses.asdict(record)


def parse(cls: type[R], data: Any, where: Path, fix: str) -> R:
    """`data` (a JSON object read from `where`) as a `cls` record, every field checked; damage -> DamagedState."""
    if not isinstance(data, dict):
        raise DamagedState(f"{where} is damaged: not a JSON object", hint=fix)
    version = data.get("version", 1)
    if version != VERSION:
        newer = isinstance(version, int) and not isinstance(version, bool) and version > VERSION
        what = "a newer lever" if newer else "a lever that recorded no checkpoint digests"
        raise DamagedState(
            f"{where} was written by {what} (record version {version}, this lever reads {VERSION})",
            hint=f"update lever to read it, or {fix}" if newer else fix,
        )
    hints = get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                continue
            raise DamagedState(f"{where} is damaged: it has no {f.name!r}", hint=fix)
        values[f.name] = _value(hints[f.name], data[f.name], f"{where}: {f.name}", fix)
    record = cls(**values)
    check = getattr(record, "check", None)
    if check is not None:
        check(where, fix)
    return record


def _value(tp: Any, v: Any, what: str, fix: str) -> Any:
    """`v` checked against the field type `tp` (the few types records use)."""
    bad = DamagedState(f"{what} has a wrong value ({v!r})", hint=fix)
    if tp is RowsRecord or tp == RowsRecord | None:
        if v is None and tp != RowsRecord:
            return None
        if not (isinstance(v, dict) and isinstance(v.get("rows"), int) and isinstance(v.get("sha256"), str)):
            raise bad
        return RowsRecord(v["rows"], v["sha256"])
    if tp is int:
        if not isinstance(v, int) or isinstance(v, bool):
            raise bad
    elif tp is str:
        if not isinstance(v, str):
            raise bad
    elif tp == str | None:
        if v is not None and not isinstance(v, str):
            raise bad
    elif tp == float | None:
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
            raise bad
    elif tp == list[str]:
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise bad
    return v
