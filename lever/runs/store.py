"""Which runs of a plan a report shows: one spec hash, chosen explicitly, never a silent fallback.

A plan reference is a name (`plan5`), a plan file (`plans/plan5.toml`) or either with a hash
(`plan5@1a2b3c`, any unique prefix), or a sweep's derived plan (`plan5@grpo.lr=1e-5`). Without a hash, the runs of the plan file as it is now
are shown; when those do not exist but other hashes do (a run made with overrides, or an
older version of the file), nothing is picked: the answer says which hashes exist and how
to name one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lever.errors import LeverError
from lever.spec.load import LoadedPlan, load_plan, plan_name

from .layout import RunDir, RunsFolder
from .sweep import sweep_records


def split_ref(ref: str) -> tuple[str, str | None]:
    """`plan5@1a2b` -> ("plan5", "1a2b"); `plans/plan5.toml` -> ("plans/plan5.toml", None)."""
    plan, _, spec_hash = ref.partition("@")
    return plan, spec_hash or None


@dataclass
class Found:
    """The seed runs chosen for a plan, or why none were (`problem`) and what to type instead (`hint`)."""

    name: str
    spec_hash: str | None = None
    runs: list[RunDir] = field(default_factory=list)
    problem: str | None = None
    hint: str | None = None


def _describe(folder: RunsFolder, name: str, spec_hash: str) -> str:
    """`abc123def456 (overrides grpo.epochs=3)`: a hash with how its runs were made."""
    runs = folder.seed_runs(name, spec_hash)
    prov = runs[0].provenance(strict=False) if runs else None
    overrides = (prov or {}).get("overrides") or []
    return f"{spec_hash} (overrides {' '.join(overrides)})" if overrides else spec_hash


def load_run_plan(ref: str, runs_root: Path, plans_dir: Path) -> LoadedPlan:
    """The plan of `ref` as its runs were made: `plan@HASH` (or a sweep's `plan@key=value`) is the plan file its
    provenance records with the overrides it records, checked to hash to HASH (an edited plan file is refused:
    it is another plan); a plain reference is the plan file as it is."""
    plan, wanted = split_ref(ref)
    if wanted is None:
        return load_plan(plan, (), plans_dir)
    found = find_plan_runs(ref, runs_root)
    if found.problem is not None or not found.runs:
        raise LeverError(f"{ref}: {found.problem or 'no seed runs'}", hint=found.hint)
    prov = found.runs[0].provenance() or {}
    source = prov.get("plan_file") if prov.get("plan_file") and Path(prov["plan_file"]).is_file() else plan
    lp = load_plan(source, prov.get("overrides") or [], plans_dir)
    if lp.hash != found.spec_hash:
        raise LeverError(
            f"{ref}: the plan file {lp.path} with the recorded overrides ({' '.join(lp.overrides) or 'none'}) hashes to "
            f"{lp.hash} now, not {found.spec_hash}: it was edited since the run",
            hint="restore the plan file, or name the run of the plan as it is now",
        )
    return lp


def find_plan_runs(ref: str, runs_root: Path, current_hash: str | None = None) -> Found:
    """The seed runs of one spec hash of a plan: the one named after `@`, else the plan file's
    current hash (`current_hash`), else the only hash there is; anything else is a `problem`."""
    plan, wanted = split_ref(ref)
    name = plan_name(plan)
    folder = RunsFolder(Path(runs_root))
    hashes = folder.hashes(name)
    if not hashes:
        return Found(name, problem="not run", hint=f"lever run plans/{name}.toml")
    listing = ", ".join(f"{name}@{_describe(folder, name, h)}" for h in hashes)
    if wanted is not None and "=" in wanted:  # a sweep member: its recorded spec hash
        named = {
            m["spec_hash"]
            for r in sweep_records(folder.root)
            if r["plan"] == name
            for m in r["members"]
            if m["name"] == f"{name}@{wanted}"
        }
        if len(named) != 1:
            known = sorted({m["name"] for r in sweep_records(folder.root) for m in r["members"] if m.get("point")})
            why = "no sweep has a plan named" if not named else "several sweeps (with different shared overrides) have"
            return Found(
                name,
                problem=f"{why} {name}@{wanted}",
                hint=f"sweep plans: {', '.join(known) or '(none)'}; or name a hash: {listing}",
            )
        wanted = named.pop()
    if wanted is not None:
        match = [h for h in hashes if h.startswith(wanted)]
        if len(match) != 1:
            why = "no run has" if not match else "several runs have"
            return Found(name, problem=f"{why} spec hash {wanted}", hint=f"runs exist for {listing}")
        return Found(name, match[0], folder.seed_runs(name, match[0]))
    if current_hash is not None:
        if current_hash in hashes:
            return Found(name, current_hash, folder.seed_runs(name, current_hash))
        return Found(
            name,
            problem=f"no run of the plan file as it is now (hash {current_hash})",
            hint=f"lever run plans/{name}.toml, or name a run that exists: {listing}",
        )
    if len(hashes) == 1:
        return Found(name, hashes[0], folder.seed_runs(name, hashes[0]))
    return Found(name, problem="several spec hashes have runs", hint=f"name one: {listing}")
