"""Shared fixtures: drive the real `lever` entry point in-process and capture what it prints."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


@pytest.fixture(autouse=True)
def _fresh_workspace():
    """No workspace carried over from an earlier test: the CLI loads one per invocation, but some tests call commands
    on a local Typer app, without the root callback that resets it."""
    from lever_cli._common import set_workspace_flag

    set_workspace_flag(None)


@pytest.fixture(autouse=True)
def _own_reward_cache(monkeypatch, tmp_path):
    """Each test its own reward cache (the workspaces share one test cache folder): a test that makes the VLM fail
    or counts its calls sees its own answers only."""
    monkeypatch.setattr("lever.eval.reward_cache.CACHE_FILE", str(tmp_path / "rewards.sqlite"))


@pytest.fixture
def lever(monkeypatch, capsys):
    """Call `lever ARGS...` through the console-script entry point; returns exit code and output."""
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("LEVER_WORKSPACE", raising=False)
    monkeypatch.delenv("LEVER_RUNS", raising=False)

    def run(*args: str) -> CliResult:
        from lever_cli.app import main

        monkeypatch.setattr(sys, "argv", ["lever", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as ex:
            code = ex.code if isinstance(ex.code, int) else (0 if ex.code is None else 1)
        cap = capsys.readouterr()
        return CliResult(code, cap.out, cap.err)

    return run


@pytest.fixture
def plans_dir() -> Path:
    return ROOT / "plans"
