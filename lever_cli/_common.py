"""Options and helpers shared by the command modules."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lever.spec import Workspace, load_workspace

OverrideOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a plan key, e.g. -s grpo.lr=5e-5 (TOML values; repeatable)"),
]

_state: dict[str, object] = {"workspace_flag": None, "workspace": None}


def set_workspace_flag(flag: str | None) -> None:
    _state["workspace_flag"] = flag
    _state["workspace"] = None


def workspace_flag() -> str | None:
    """The --workspace file as an absolute path (for the commands a sweep starts), None when not given."""
    flag = _state["workspace_flag"]
    return str(Path(flag).resolve()) if flag else None  # type: ignore[arg-type]


def workspace() -> Workspace:
    """The workspace for this invocation (loaded once)."""
    if _state["workspace"] is None:
        _state["workspace"] = load_workspace(_state["workspace_flag"])  # type: ignore[arg-type]
    return _state["workspace"]  # type: ignore[return-value]


def plan_args(args: list[str], overrides: list[str] | None) -> tuple[list[str], list[str]]:
    """Split positional arguments into plan references and `key.path=value` overrides."""
    plans = [a for a in args if "=" not in a]
    sets = [a for a in args if "=" in a] + list(overrides or [])
    return plans, sets


def runs_dir() -> Path:
    """Where runs live (the workspace's runs folder, or $LEVER_RUNS)."""
    return workspace().runs_dir
