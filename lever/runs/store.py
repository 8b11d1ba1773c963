"""Where runs live: ``<runs_root>/<plan>/<spec_hash>/seed-<seed>/``."""

from __future__ import annotations

from pathlib import Path


def find_plan_runs(plan: str, runs_root: Path) -> list[Path]:
    """The seed run dirs of a plan's newest spec hash ([] when it was never run).

    ``plan`` is a name (``plan5``) or a plan file (``plans/plan5.toml`` -> ``plan5``).
    """
    p = Path(plan)
    name = p.stem if p.suffix == ".toml" or len(p.parts) > 1 else plan
    plan_dir = Path(runs_root) / name
    if not plan_dir.is_dir():
        return []
    hashes = [h for h in plan_dir.iterdir() if h.is_dir()]
    if not hashes:
        return []
    newest = max(hashes, key=lambda h: h.stat().st_mtime)
    return sorted(d for d in newest.glob("seed-*") if d.is_dir())
