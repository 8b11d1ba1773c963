"""A sweep: one plan, a grid of overrides, several seeds; one `lever run` job per (grid point, seed).

Every grid point is a derived plan, the base plan with the point's overrides, named
readably (`plan5@grpo.lr=1e-5`) and stored like any run with overrides: under the plan's
folder by its own spec hash. The sweep's record (`<runs>/_sweeps/<key>.json`) lists its
members, so `lever runs` and `lever compare` can call them by those names. Jobs are plain
data (a plan, its overrides, a seed): every executor runs the same `lever run` command.
"""

from __future__ import annotations

import itertools
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lever.errors import DamagedState, LeverError
from lever.io import read_state, write_json
from lever.keys import content_key
from lever.spec import LoadedPlan, Workspace, load_plan
from lever.spec.load import check_key_path, parse_override

from .layout import RunsFolder


@dataclass(frozen=True)
class Member:
    """One derived plan of a sweep: the base plan with a grid point's overrides."""

    name: str  # plan5@grpo.lr=1e-5 (the base plan itself: plan5)
    point: tuple[str, ...]  # the grid's overrides alone
    plan: LoadedPlan

    @property
    def spec_hash(self) -> str:
        return self.plan.hash


@dataclass(frozen=True)
class Job:
    """One seed run of one member: what an executor runs, as a `lever run` command."""

    member: Member
    seed: int
    max_vlm_calls: int | None = None  # `lever sweep --max-vlm-calls`: this job's budget of new VLM calls (in no key)

    @property
    def name(self) -> str:
        return f"{self.member.name} seed {self.seed}"

    def args(self, workspace: str | None = None) -> list[str]:
        """The arguments after `lever`: `run PLAN OVERRIDES... --seed N` (with `--workspace FILE` first when given,
        and `--max-vlm-calls N` last when the job has a budget)."""
        lp = self.member.plan
        ws = ["--workspace", workspace] if workspace else []
        budget = [] if self.max_vlm_calls is None else ["--max-vlm-calls", str(self.max_vlm_calls)]
        return [*ws, "run", str(lp.path), *lp.overrides, "--seed", str(self.seed), *budget]

    def command(self, workspace: str | None = None) -> str:
        """The shell command, quoted, for any other scheduler."""
        return shlex.join(["lever", *self.args(workspace)])


@dataclass
class Sweep:
    """A plan, its shared overrides, the grid and the seeds, expanded into members and jobs."""

    base: Member
    members: list[Member]  # the base first, then every grid point (a point equal to the base is the base)
    seeds: list[int]
    grid: dict[str, list[str]]

    @property
    def key(self) -> str:
        """Names the sweep's record: the same plan, overrides, grid and seeds give the same key."""
        return content_key(self.base.plan.name, self.base.plan.overrides, self.grid, self.seeds, length=12)

    @property
    def distinct(self) -> list[Member]:
        """The members with distinct spec hashes (a grid point equal to the base plan is the base), the base first."""
        first: dict[str, Member] = {}
        for m in self.members:
            first.setdefault(m.spec_hash, m)
        return list(first.values())

    @property
    def jobs(self) -> list[Job]:
        """One job per distinct member and seed, the base plan's first."""
        return [Job(m, s) for m in self.distinct for s in self.seeds]

    def record(self) -> dict[str, Any]:
        """What `<runs>/_sweeps/<key>.json` holds: enough to name every member's runs."""
        return {
            "key": self.key,
            "plan": self.base.plan.name,
            "plan_file": str(self.base.plan.path),
            "overrides": self.base.plan.overrides,
            "grid": self.grid,
            "seeds": self.seeds,
            "members": [{"name": m.name, "point": list(m.point), "spec_hash": m.spec_hash} for m in self.members],
        }


def split_values(text: str) -> list[str]:
    """`1e-5,1e-4` -> ["1e-5", "1e-4"]; commas inside brackets or quotes belong to a value (`[1,2],[3]`)."""
    values, depth, quote, cur = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            values.append(cur.strip())
            cur = ""
            continue
        cur += ch
    values.append(cur.strip())
    return values


def parse_grid(axes: list[str]) -> dict[str, list[str]]:
    """`--grid key=v1,v2` options -> {key: [v1, v2]}; each key a plan key, each value TOML like an override."""
    grid: dict[str, list[str]] = {}
    for axis in axes:
        key, sep, rest = axis.partition("=")
        key = key.strip()
        values = split_values(rest) if sep else []
        if not key or not values or any(v == "" for v in values):
            raise LeverError(f"--grid {axis!r}: expected key.path=v1,v2,...", hint="e.g. --grid grpo.lr=1e-5,5e-5")
        if key in grid:
            raise LeverError(f"--grid {key} is given twice", hint="list all its values in one --grid")
        if len(set(values)) != len(values):
            raise LeverError(f"--grid {axis!r}: a value is listed twice")
        check_key_path(parse_override(f"{key}={values[0]}")[0])  # an unknown key fails with the valid ones
        grid[key] = values
    return grid


def parse_seeds(text: str) -> list[int]:
    """`0,1,2` -> [0, 1, 2]."""
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise LeverError(f"--seeds {text!r}: expected whole numbers separated by commas", hint="e.g. --seeds 0,1,2") from None
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise LeverError(f"--seeds {text!r}: seeds must be distinct and not negative")
    return seeds


def expand(plan: str, overrides: list[str], grid: dict[str, list[str]], seeds: list[int] | None, plans_dir: Path) -> Sweep:
    """Load the base plan and every grid point (all validated before any work); seeds default to the plan's."""
    base_lp = load_plan(plan, overrides, plans_dir)
    base = Member(base_lp.name, (), base_lp)
    members = [base]
    for values in itertools.product(*grid.values()):
        point = tuple(f"{k}={v}" for k, v in zip(grid, values))
        shared = [o for o in overrides if o.split("=", 1)[0].strip() not in grid]  # the grid's value wins
        lp = load_plan(plan, [*shared, *point], plans_dir)
        members.append(Member(f"{base_lp.name}@{','.join(point)}", point, lp))
    return Sweep(base, members, list(seeds if seeds is not None else base_lp.plan.seeds), grid)


def save_record(sweep: Sweep, ws: Workspace) -> Path:
    """Write the sweep's record into the runs folder (before any job starts, so a killed sweep is named too);
    the jobs an earlier call of the same sweep linked are kept."""
    path = RunsFolder(ws.runs_dir).sweep(sweep.key)
    try:
        jobs = (read_state(path, "") or {}).get("jobs") or {}
    except DamagedState:
        jobs = {}
    write_json(path, {**sweep.record(), "jobs": jobs})
    return path


def sweep_records(runs_root: Path) -> list[dict[str, Any]]:
    """Every sweep recorded under the runs folder, newest first; damaged records are skipped (they only name runs)."""
    out = []
    for path in RunsFolder(runs_root).sweep_files():
        try:
            rec = read_state(path, "")
        except DamagedState:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("members"), list):
            out.append(rec)
    return out


def member_names(runs_root: Path) -> dict[tuple[str, str], str]:
    """(plan, spec hash) -> its sweep name (`plan5@grpo.lr=1e-5`), for every derived plan of every sweep."""
    names: dict[tuple[str, str], str] = {}
    for rec in reversed(sweep_records(runs_root)):  # the newest sweep's name wins
        base = next((m["spec_hash"] for m in rec["members"] if not m.get("point")), None)
        for m in rec["members"]:
            if m.get("point") and m["spec_hash"] != base:  # a point equal to the base plan is the base plan
                names[(rec["plan"], m["spec_hash"])] = m["name"]
    return names
