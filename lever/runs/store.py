"""Where runs live: ``<runs_root>/<plan>/<spec_hash>/seed-<seed>/``."""

from __future__ import annotations

from pathlib import Path

from lever.spec.load import plan_name


def find_plan_runs(plan: str, runs_root: Path, spec_hash: str | None = None) -> list[Path]:
    """The seed run dirs of a plan: those of `spec_hash` when it has runs (the plan file as it
    is now), else those of the most recently written hash; [] when the plan was never run.

    ``plan`` is a name (``plan5``, ``original/plan5``) or a plan file (``plans/original/plan5.toml``
    -> ``original/plan5``).
    """
    plan_dir = Path(runs_root) / plan_name(plan)
    if not plan_dir.is_dir():
        return []
    if spec_hash and (plan_dir / spec_hash).is_dir():
        return sorted(d for d in (plan_dir / spec_hash).glob("seed-*") if d.is_dir())
    hashes = [h for h in plan_dir.iterdir() if h.is_dir() and any(h.glob("seed-*"))]
    if not hashes:
        return []
    newest = max(hashes, key=lambda h: h.stat().st_mtime)
    return sorted(d for d in newest.glob("seed-*") if d.is_dir())
