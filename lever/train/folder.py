"""A stage's folder: its epochs' records, checkpoints and resume state, and the checks that read them back.

    metrics.jsonl              one row per finished epoch
    ckpt/epoch-NNN.safetensors weights after epoch N (+ .json with the epoch's metrics and the file's SHA-256)
    resume.pt                  model, optimiser, step and the objective's state after the last finished epoch
    selected.json              the stage's result (`StageSelection`), written last (its presence = stage done)

The epoch loop (`lever.train.stage`) writes an epoch in that order (weights, metrics, resume marker), so a stage
killed at any moment resumes from the last epoch whose resume marker was written. Everything read back is verified:
damage is a DamagedState naming the file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lever.errors import DamagedState, RunFailed
from lever.io import check_rows, read_rows, read_state, rows_record, rows_text, write_json
from lever.records import RowsRecord, StageSelection, parse, to_json
from lever.spec.schema import SelectSpec

from .checkpoint import State, epoch_digest, load_resume, load_verified

METRICS = "metrics.jsonl"
RESUME = "resume.pt"
SELECTED = "selected.json"


def checkpoint_path(stage_dir: Path, epoch: int) -> Path:
    """The weights a stage saved after `epoch`."""
    return stage_dir / "ckpt" / f"epoch-{epoch:03d}.safetensors"


def checkpoint_epochs(stage_dir: Path) -> list[int]:
    """The epochs a stage holds weights of, in order."""
    return sorted(int(p.stem.split("-")[1]) for p in (stage_dir / "ckpt").glob("epoch-*.safetensors"))


def stage_rows(stage_dir: Path) -> list[dict[str, Any]]:
    """A stage's metric rows; a cut line, or a row without its epoch, is a DamagedState."""
    path = stage_dir / METRICS
    rows = read_rows(path, fix="")
    for i, r in enumerate(rows, start=1):
        if not isinstance(r.get("epoch"), int):
            raise DamagedState(f"{path} is damaged: line {i} has no epoch")
    return rows


def pick(rows: list[dict[str, Any]], select: SelectSpec, pin: int | None) -> tuple[dict[str, Any], str]:
    """The selected epoch's row and why. Ties go to the earliest epoch."""
    if pin is not None:
        row = next((r for r in rows if r["epoch"] == pin), None)
        if row is None:
            raise RunFailed(f"select.epoch = {pin} but the stage has only {len(rows)} epochs")
        return row, f"epoch {pin} pinned by select.epoch"
    values = [r.get(select.metric) for r in rows]
    if any(v is None for v in values):
        raise RunFailed(f"select.metric '{select.metric}' is not logged by this stage; logged: {', '.join(sorted(rows[0]))}")
    if select.mode == "min":
        best = min(range(len(rows)), key=lambda i: (values[i], i))
    else:
        best = max(range(len(rows)), key=lambda i: (values[i], -i))
    word = "lowest" if select.mode == "min" else "highest"
    return rows[best], f"{word} {select.metric} ({values[best]:.5f}) of {len(rows)} epochs"


def write_selection(
    stage_dir: Path, stage: str, rows: list[dict[str, Any]], select: SelectSpec, pin: int | None, key: str | None
) -> StageSelection:
    """Select the stage's epoch from its rows and write selected.json (the stage is done; `key`: its content key);
    the resume state goes."""
    best, reason = pick(rows, select, pin)
    sel = StageSelection(
        stage=stage,
        epoch=best["epoch"],
        metric=select.metric,
        mode=select.mode,
        value=best.get(select.metric),
        reason=reason,
        sha256=epoch_digest(checkpoint_path(stage_dir, best["epoch"]), best["epoch"]),
        metrics=RowsRecord(**rows_record(rows_text(rows))),  # what a reuse checks metrics.jsonl against
        key=key,  # what a reuse checks the folder's key against
    )
    write_json(stage_dir / SELECTED, to_json(sel))
    (stage_dir / RESUME).unlink(missing_ok=True)  # optimiser state is no longer needed
    return sel


def read_resume(stage_dir: Path, key: str | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """The resume state of a stopped stage and the rows of the epochs it records as finished (None: nothing to
    resume). A cut, foreign or edited resume.pt, metrics lacking its epochs, or a resume state written for another
    stage key than `key` (a renamed or copied folder) is a DamagedState: never guess where training stood."""
    path = stage_dir / RESUME
    try:
        state = load_resume(path)
        if state is None:
            return None
        done = int(state["epoch"])
    except Exception as err:
        raise DamagedState(f"{path} is damaged ({type(err).__name__}: {err})") from None
    _check_key(stage_dir, path, state.get("key"), key)
    rows = [r for r in stage_rows(stage_dir) if r["epoch"] <= done]
    if [r["epoch"] for r in rows] != list(range(1, done + 1)):
        raise DamagedState(f"{stage_dir / METRICS} is damaged: it lacks rows of epochs 1-{done} that {path} records")
    return state, rows


def read_result(
    stage_dir: Path, select: SelectSpec | None, pin: int | None = None, key: str | None = None
) -> tuple[StageSelection, list[dict[str, Any]]] | None:
    """A finished stage's selection and metric rows (None when it has not finished), verified: the record
    whole, its stage key the folder's (`key`, when given), the metrics its row count and digest, the selection the
    one its rows and `select` (`pin`) give (without `select`: its value that of its epoch's row), and the selected
    checkpoint's recorded digest. Damage is a DamagedState naming the file."""
    if not stage_dir.is_dir():
        return None
    where = stage_dir / SELECTED
    data = read_state(where, fix="")
    if data is None:
        return None
    sel = parse(StageSelection, data, where, "")
    _check_key(stage_dir, where, sel.key, key)
    check_rows(stage_dir / METRICS, to_json(sel.metrics), fix="")
    rows = stage_rows(stage_dir)
    if [r["epoch"] for r in rows] != list(range(1, len(rows) + 1)) or not rows:
        raise DamagedState(f"{stage_dir / METRICS} is damaged: its epochs do not run 1..N")
    row = next((r for r in rows if r["epoch"] == sel.epoch), None)
    if row is None or not _same(row.get(sel.metric), sel.value):
        raise DamagedState(f"{where} names epoch {sel.epoch} with {sel.metric} {sel.value}, which its metrics do not hold")
    if select is not None:
        best, reason = pick(rows, select, pin)
        if (sel.epoch, sel.metric, sel.mode, sel.reason) != (best["epoch"], select.metric, select.mode, reason):
            raise DamagedState(
                f"{where} names epoch {sel.epoch} ({sel.reason}), but the stage's metrics select epoch {best['epoch']} ({reason})"
            )
    if epoch_digest(checkpoint_path(stage_dir, sel.epoch), sel.epoch) != sel.sha256:
        raise DamagedState(f"{where}: its checkpoint digest differs from the one recorded beside the checkpoint")
    return sel, rows


def _check_key(stage_dir: Path, where: Path, recorded: Any, key: str | None) -> None:
    """A stage folder holds the stage its key names: a record of another key means the folder was renamed or copied
    (reusing it would serve another stage's result). A record without a key (an older lever's) cannot tell."""
    if key is not None and recorded is not None and recorded != key:
        raise DamagedState(
            f"stage folder {stage_dir} holds the stage trained under key {recorded} ({where.name} records it), not {key}: "
            "the folder was renamed or copied from another stage"
        )


def _same(a: Any, b: Any) -> bool:
    """Equal values, NaN equal to NaN (a stage without validation queries logs val/loss NaN)."""
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def handoff_checkpoint(stage_dir: Path, selected: StageSelection, rows: list[dict[str, Any]], handoff: str) -> State:
    """The verified weights the next stage starts from: the stage's selected epoch, or its last
    epoch (grpo.handoff = "last", the original)."""
    if handoff == "last":
        last = max(r["epoch"] for r in rows)
        path = checkpoint_path(stage_dir, last)
        return load_verified(path, epoch_digest(path, last))
    return load_verified(checkpoint_path(stage_dir, selected.epoch), selected.sha256)
