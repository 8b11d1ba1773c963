"""The layout of a runs folder: the one module that knows where a run keeps what.

    <runs>/<plan>/<spec hash>/seed-<seed>/        a plan's run (RunDir)
        spec.json  provenance.json  status.json  stages.json  metrics.jsonl  selected.json
        eval/selected.json                        which evaluation is the selected checkpoint's
        eval/status.json                          how an unfinished evaluation ended (absent once one finishes)
        eval/<key>/                               one evaluation (EvalDir): results.jsonl summary.json partial-<rank>.jsonl
    <runs>/<plan>/<spec hash>/report/             PNG training curves (`lever report`)
    <runs>/<plan>/<spec hash>/.seed-<seed>.lock   held while the run trains
    <runs>/_stages/<stage>-<key>/                 a stage's epochs (its files are lever.train.folder's)
    <runs>/_sweeps/<key>.json                     a sweep's record: its plan, grid, seeds and members (lever.runs.sweep)
    <runs>/_sweeps/<key>/                         its jobs' logs (and submitit's folder)

Every path stored inside the runs folder is relative to it, so a moved or copied runs
folder (or `LEVER_RUNS` pointed at a copy) works and reads only itself. Everything written
can be verified: summaries and finished runs record the row count and digest of their rows,
and a reader that finds damage raises a DamagedState naming the file and the command that
repairs it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lever.errors import DamagedState
from lever.io import check_rows, read_rows, read_state, write_json, write_rows
from lever.keys import content_key
from lever.records import EvalPointer, RowsRecord, SelectorChoice, StageEntry, Status, parse, selector_key, to_json
from lever.train.folder import checkpoint_path, read_result

STAGES = "_stages"
SWEEPS = "_sweeps"


@dataclass(frozen=True)
class RunsFolder:
    """The runs folder: plans' runs and the shared stage folders."""

    root: Path

    def run(self, plan: str, spec_hash: str, seed: int) -> RunDir:
        return RunDir(self.root / plan / spec_hash / f"seed-{seed}", plan)

    def stage(self, name: str, key: str) -> Path:
        return self.root / STAGES / f"{name}-{key}"

    def stage_lock(self, name: str, key: str) -> Path:
        return self.root / STAGES / f".{name}-{key}.lock"

    def sweep(self, key: str) -> Path:
        """A sweep's record file."""
        return self.root / SWEEPS / f"{key}.json"

    def sweep_files(self) -> list[Path]:
        """Every sweep record, newest first."""
        found = (self.root / SWEEPS).glob("*.json")
        return sorted(found, key=lambda p: -p.stat().st_mtime)

    def job_dir(self, key: str) -> Path:
        """Where a sweep's job logs (and submitit's files) go."""
        return self.root / SWEEPS / key

    def store_rel(self, path: Path) -> str:
        """A path built under the runs folder, as stored in a record (no symlink is followed: see RunDir.path_of)."""
        return Path(path).relative_to(self.root).as_posix()

    def store(self, path: Path) -> str:
        """`path` as stored in a state file: relative to the runs folder."""
        return Path(path).resolve().relative_to(self.root.resolve()).as_posix()

    def hashes(self, plan: str) -> list[str]:
        """The spec hashes a plan has runs under, newest first."""
        plan_dir = self.root / plan
        if not plan_dir.is_dir():
            return []
        found = [h for h in plan_dir.iterdir() if h.is_dir() and any(d.is_dir() for d in h.glob("seed-*"))]
        return [h.name for h in sorted(found, key=lambda h: -h.stat().st_mtime)]

    def seed_runs(self, plan: str, spec_hash: str) -> list[RunDir]:
        """The seed runs of one spec hash, by seed."""
        dirs = [d for d in (self.root / plan / spec_hash).glob("seed-*") if d.is_dir()]
        return sorted((RunDir(d, plan) for d in dirs), key=lambda r: (r.seed is None, r.seed or 0, r.path.name))

    def plans(self) -> list[str]:
        """Every plan with runs, by name; a family's plans are `family/plan` (`original/plan7`). A symlinked folder
        is not a plan's (a link to another plan's runs would rank them twice, under another name)."""
        if not self.root.is_dir():
            return []
        found: list[str] = []

        def visit(folder: Path, prefix: str) -> None:
            for d in sorted(
                p
                for p in folder.iterdir()
                if p.is_dir() and not p.is_symlink() and p.name not in (STAGES, SWEEPS) and not p.name.startswith(".")
            ):
                if self.hashes(prefix + d.name):  # a plan folder; else a family of plans (original/)
                    found.append(prefix + d.name)
                else:
                    visit(d, f"{prefix}{d.name}/")

        visit(self.root, "")
        return found

    def scan(self) -> list[RunDir]:
        """Every run, by plan, then newest hash first, then seed."""
        return [run for plan in self.plans() for h in self.hashes(plan) for run in self.seed_runs(plan, h)]


class EvalDir:
    """One evaluation of a run: `eval/<key>/`."""

    def __init__(self, path: Path, fix: str):
        self.path, self.fix = Path(path), fix

    @property
    def key(self) -> str:
        return self.path.name

    @property
    def results(self) -> Path:
        return self.path / "results.jsonl"

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.json"

    def partial(self, rank: int) -> Path:
        return self.path / f"partial-{rank}.jsonl"

    def partials(self) -> list[Path]:
        return sorted(self.path.glob("partial-*.jsonl"))

    @property
    def complete(self) -> bool:
        return self.summary_file.is_file()

    def write(self, rows: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
        """results.jsonl, then summary.json with its splits, row count and digest (written last: it marks completion)."""
        record = write_rows(self.results, rows)
        summary = {**summary, "splits": summarise(rows), "results": record}
        write_json(self.summary_file, summary)
        for part in self.partials():
            part.unlink()
        return summary

    def summary(self) -> dict[str, Any] | None:
        """summary.json (None when the evaluation has not finished); damage is a DamagedState."""
        s = read_state(self.summary_file, self.fix)
        if s is not None and not (isinstance(s, dict) and isinstance(s.get("splits"), dict)):
            raise DamagedState(f"{self.summary_file} is damaged: it has no splits table", hint=self.fix)
        return s

    def read(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The summary and its rows, verified: row count, digest, value ranges, and the summary's own numbers."""
        summary = self.summary()
        if summary is None:
            raise DamagedState(f"{self.summary_file} is missing: the evaluation did not finish", hint=self.fix)
        if "results" in summary or not self.results.is_file():
            check_rows(self.results, summary.get("results"), self.fix)
        # A summary from before digests were recorded is still checked below: every count and accuracy must match.
        rows = read_rows(self.results, self.fix)
        for i, r in enumerate(rows, start=1):
            acc, shots = r.get("accuracy"), r.get("shots")
            ok = (
                isinstance(r.get("split"), str)
                and isinstance(shots, int)
                and shots >= 0
                and isinstance(r.get("question_id"), int)
                and isinstance(acc, (int, float))
                and 0.0 <= acc <= 1.0
                and isinstance(r.get("failed"), bool)
            )
            if not ok:
                raise DamagedState(f"{self.results} is damaged: row {i} has a missing or out-of-range value", hint=self.fix)
        if summarise(rows) != summary["splits"]:
            raise DamagedState(f"{self.summary_file} does not match the rows of {self.results}", hint=self.fix)
        return summary, rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Accuracy (percent, 2 decimals), questions and failures per split and shot count; with rows of a selector that
    can stop early (`shots_used`), also the mean demonstrations used and the share of selections that stopped early."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        cell = out.setdefault(r["split"], {}).setdefault(str(r["shots"]), {"accuracy": 0.0, "n": 0, "failed": 0})
        cell["accuracy"] += r["accuracy"]
        cell["n"] += 1
        cell["failed"] += int(r["failed"])
        if "shots_used" in r:
            cell["shots_used"] = cell.get("shots_used", 0) + r["shots_used"]
            cell["stopped_early"] = cell.get("stopped_early", 0) + int(r["shots_used"] < r["shots"])
    for split in out.values():
        for cell in split.values():
            cell["accuracy"] = round(100.0 * cell["accuracy"] / max(cell["n"], 1), 2)
            if "shots_used" in cell:
                cell["shots_used"] = round(cell["shots_used"] / max(cell["n"], 1), 3)
                cell["stopped_early"] = round(100.0 * cell["stopped_early"] / max(cell["n"], 1), 2)
    return out


class RunDir:
    """One seed run of a plan: typed paths, verified reads, atomic writes and status transitions."""

    def __init__(self, path: Path, plan: str | None = None):
        """`path` is `<runs>/<plan>/<hash>/seed-<n>`; `plan` names a plan of a family (`original/plan7`),
        which nests one folder deeper (default: the folder's own name)."""
        self.path = Path(path)
        self.plan = plan or self.path.parent.parent.name

    def __repr__(self) -> str:
        return f"RunDir({self.path})"

    @property
    def folder(self) -> RunsFolder:
        return RunsFolder(self.path.parents[2 + self.plan.count("/")])

    @property
    def spec_hash(self) -> str:
        return self.path.parent.name

    @property
    def seed(self) -> int | None:
        name = self.path.name
        return int(name[5:]) if name.startswith("seed-") and name[5:].isdigit() else None

    # ------------------------------------------------------------------ paths

    spec_file = property(lambda self: self.path / "spec.json")
    provenance_file = property(lambda self: self.path / "provenance.json")
    status_file = property(lambda self: self.path / "status.json")
    stages_file = property(lambda self: self.path / "stages.json")
    metrics_file = property(lambda self: self.path / "metrics.jsonl")
    selected_file = property(lambda self: self.path / "selected.json")
    eval_root = property(lambda self: self.path / "eval")
    eval_status_file = property(lambda self: self.path / "eval" / "status.json")

    @property
    def report_dir(self) -> Path:
        """Where `lever report` draws the PNG curves of the plan's seeds (beside them, shared)."""
        return self.path.parent / "report"

    @property
    def lock(self) -> Path:
        return self.path.parent / f".{self.path.name}.lock"

    # ------------------------------------------------------------------ repair hints

    def command(self, verb: str, *flags: str) -> str:
        """The command that acts on this run (its plan file and overrides as recorded), e.g. `lever run P --redo`."""
        try:
            prov = read_state(self.provenance_file, "") or {}
        except DamagedState:
            prov = {}
        parts = ["lever", verb, self._plan_ref(prov.get("plan_file")), *map(str, prov.get("overrides") or [])]
        if self.seed is not None and prov.get("seeds") not in (None, [self.seed]):
            parts += ["--seed", str(self.seed)]
        return shlex.join([*parts, *flags])  # quoted, so it can be pasted into a shell

    def _plan_ref(self, stored: str | None) -> str:
        """How a command names this run's plan: the plan file as recorded, unless it was recorded by absolute path
        in another workspace (a copied or moved one) or is gone: then the plan's name, which resolves in this
        workspace's plans folder."""
        if not stored:
            return f"plans/{self.plan}.toml"
        path = Path(stored)
        if not path.is_absolute():
            return stored
        here = self.folder.root.resolve().parent  # the workspace folder this runs folder belongs to
        if not path.is_file() or (not path.resolve().is_relative_to(here) and (here / "plans" / f"{self.plan}.toml").is_file()):
            return self.plan
        return stored

    @property
    def fix(self) -> str:
        return f"repair it with `{self.command('run', '--redo')}`"

    @property
    def eval_fix(self) -> str:
        return f"evaluate again with `{self.command('evaluate', '--redo')}`"

    # ------------------------------------------------------------------ reads

    def exists(self) -> bool:
        return self.path.is_dir()

    def _read(self, path: Path, default: Any = None) -> Any:
        """A JSON state file of this run; damage names the file and the repair command."""
        try:
            return read_state(path, "", default)
        except DamagedState as err:
            err.hint = self.fix
            raise

    def spec(self) -> dict[str, Any] | None:
        """spec.json, verified like every other record: it must hash to the spec hash that names its folder (a spec
        edited by hand is not the spec the run was made with)."""
        spec = self._read(self.spec_file)
        if spec is not None and content_key(spec, length=len(self.spec_hash)) != self.spec_hash:
            raise DamagedState(
                f"{self.spec_file} is damaged: it does not hash to its folder's spec hash {self.spec_hash} (edited?)",
                hint=self.fix,
            )
        return spec

    def provenance(self, strict: bool = True) -> dict[str, Any] | None:
        try:
            return self._read(self.provenance_file)
        except DamagedState:
            if strict:
                raise
            return None

    def status(self) -> Status | None:
        """status.json (None when the run never started); damage is a DamagedState."""
        data = self._read(self.status_file)
        return None if data is None else parse(Status, data, self.status_file, self.fix)

    @property
    def state(self) -> str | None:
        s = self.status()
        return None if s is None else s.state

    def stages(self) -> list[StageEntry]:
        """stages.json: every stage of the run, in order."""
        entries = self._read(self.stages_file, [])
        if not isinstance(entries, list):
            raise DamagedState(f"{self.stages_file} is damaged: not a list", hint=self.fix)
        return [parse(StageEntry, e, self.stages_file, self.fix) for e in entries]

    def path_of(self, stored: str) -> Path:
        """A path a record stores (relative to the runs folder) as a path here; one that leaves the runs folder
        (a symlinked stage folder pointing elsewhere, say) is a DamagedState."""
        path = self.folder.root / stored
        root = self.folder.root.resolve()
        if not path.resolve().is_relative_to(root):
            parts = Path(stored).parts
            # a stage's path: retraining the stage replaces the link (a --redo would only find it again)
            fix = self.retrain_fix(parts[1].rsplit("-", 1)[0]) if len(parts) > 1 and parts[0] == STAGES else self.fix
            raise DamagedState(f"{path} leads outside the runs folder {self.folder.root} (to {path.resolve()})", hint=fix)
        return path

    def selected(self) -> StageEntry | SelectorChoice | None:
        """selected.json (None when the run has not finished training), cross-checked: it must be the final entry of
        stages.json and agree with the stage's own record (epoch, value, checkpoint digest). A run that trains nothing
        holds its baseline selector (SelectorChoice), whose key must be that of the selector in spec.json."""
        data = self._read(self.selected_file)
        if data is None:
            return None
        if isinstance(data, dict) and "selector" in data:
            choice = parse(SelectorChoice, data, self.selected_file, self.fix)
            settings = (self.spec() or {}).get("selector")
            if not isinstance(settings, dict) or selector_key(settings) != choice.key:
                raise DamagedState(f"{self.selected_file} does not name the selector of {self.spec_file}", hint=self.fix)
            return choice
        sel = parse(StageEntry, data, self.selected_file, self.fix)
        stages = self.stages()
        if not stages or stages[-1] != sel:
            raise DamagedState(
                f"{self.selected_file} does not match the final stage recorded in {self.stages_file}", hint=self.fix
            )
        stage_dir = self.path_of(sel.dir)
        try:
            found = read_result(stage_dir, None, key=sel.key)
        except DamagedState as err:
            raise DamagedState(err.args[0], hint=self.retrain_fix(sel.stage)) from None
        if found is None:
            raise DamagedState(f"stage folder {stage_dir} of this run is missing or unfinished", hint=self.fix)
        own, _ = found
        if (own.epoch, own.sha256, own.value) != (sel.epoch, sel.sha256, sel.value):
            raise DamagedState(
                f"{self.selected_file} names epoch {sel.epoch} of stage '{sel.stage}', but the stage's record "
                f"{stage_dir / 'selected.json'} selected epoch {own.epoch}",
                hint=self.fix,
            )
        if self.path_of(sel.checkpoint) != checkpoint_path(stage_dir, sel.epoch):
            raise DamagedState(f"{self.selected_file}: checkpoint {sel.checkpoint} is not epoch {sel.epoch}'s", hint=self.fix)
        return sel

    def retrain_fix(self, stage: str) -> str:
        return f"retrain the stage with `{self.command('run', '--retrain-stage', stage)}`"

    def metrics(self) -> list[dict[str, Any]] | None:
        """metrics.jsonl rows (None when absent), checked against the count and digest a finished run records."""
        if not self.metrics_file.is_file():
            return None
        status = self.status()
        if status is not None and status.metrics is not None:
            check_rows(self.metrics_file, to_json(status.metrics), self.fix)
        rows = read_rows(self.metrics_file, self.fix)
        for i, r in enumerate(rows, start=1):
            if not isinstance(r.get("epoch"), int) or not isinstance(r.get("stage"), str):
                raise DamagedState(f"{self.metrics_file} is damaged: line {i} has no stage or epoch", hint=self.fix)
        return rows

    def eval_dir(self, key: str) -> EvalDir:
        return EvalDir(self.eval_root / key, self.eval_fix)

    def selected_eval(self, selected: StageEntry | SelectorChoice | None = None) -> EvalDir | None:
        """The finished evaluation of the selected checkpoint, named by eval/selected.json (None when there is none).

        Verified: the key names a folder of this run, and its summary names the run's selected checkpoint
        (its SHA-256): an evaluation of another run or epoch is never shown as this run's."""
        where = self.eval_root / "selected.json"
        data = read_state(where, self.eval_fix)
        if data is None:
            return None
        ev = self.eval_dir(parse(EvalPointer, data, where, self.eval_fix).key)
        if not ev.complete:
            return None
        sel = selected or self.selected()  # a selection the caller already verified is not read again
        ck = (ev.summary() or {}).get("checkpoint")
        field = "key" if isinstance(sel, SelectorChoice) else "sha256"  # a baseline selector's evaluation names its key
        if sel is None or not isinstance(ck, dict) or ck.get(field) != sel.sha256:
            raise DamagedState(
                f"{where} names the evaluation {ev.path}, which is not of this run's selected checkpoint", hint=self.eval_fix
            )
        return ev

    # ------------------------------------------------------------------ writes

    def set_status(
        self, state: str, flags: list[str] | None = None, message: str | None = None, metrics: RowsRecord | None = None
    ) -> None:
        """Record how the run stands: running, trained, done, failed or interrupted."""
        write_json(self.status_file, to_json(Status(state, list(flags or []), message, metrics)))

    def set_state(self, state: str, message: str | None = None) -> None:
        """Move the run to `state`, keeping its flags and its metrics record."""
        s = self.status()
        self.set_status(state, s.flags if s else [], message, s.metrics if s else None)

    def write_start(self, spec: dict[str, Any], provenance: dict[str, Any]) -> None:
        """A (re)start: the spec, status `running`, provenance; an earlier selection is forgotten until training ends."""
        self.clear()
        write_json(self.spec_file, spec)
        self.set_status("running")
        write_json(self.provenance_file, provenance)

    def write_stages(self, entries: list[StageEntry], rows: list[dict[str, Any]]) -> RowsRecord:
        """stages.json and metrics.jsonl; returns the metrics' row record."""
        write_json(self.stages_file, [to_json(e) for e in entries])
        return RowsRecord(**write_rows(self.metrics_file, rows))

    def write_selected(self, selected: StageEntry | SelectorChoice) -> None:
        write_json(self.selected_file, to_json(selected))

    def eval_status(self) -> dict[str, Any] | None:
        """How the run's last evaluation ended when it did not finish (eval/status.json: state, message), else None.
        An evaluation has its own state: a failed or interrupted one never changes the run's training status."""
        try:
            data = read_state(self.eval_status_file, "")
        except DamagedState:
            return None  # only a message to show: a damaged one is overwritten by the next evaluation's end
        return data if isinstance(data, dict) and isinstance(data.get("state"), str) else None

    def set_eval_status(self, state: str | None, message: str = "") -> None:
        """Record how an evaluation ended (`interrupted`, `failed`), or forget it (None: it finished)."""
        if state is None:
            self.eval_status_file.unlink(missing_ok=True)
        else:
            write_json(self.eval_status_file, {"state": state, "message": message})

    def mark_selected_eval(self, ev: EvalDir) -> None:
        """Record which evaluation is the selected checkpoint's (the one tables compare)."""
        write_json(self.eval_root / "selected.json", to_json(EvalPointer(ev.key)))

    def clear(self) -> None:
        """Forget what the run recorded (status, stages, selection, metrics, which evaluation is the selection's)
        before it is redone; evaluations stay (the next evaluation of an unchanged checkpoint finds its own)."""
        for f in (self.status_file, self.stages_file, self.selected_file, self.metrics_file, self.eval_root / "selected.json"):
            f.unlink(missing_ok=True)
