"""Every user mistake ends in a short message and exit 2 (130 for Ctrl-C), never a traceback; through the real entry point."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # plan names resolve in ./plans


def refused(res, *needles: str) -> None:
    """Exit 2, every needle in the message, no traceback, one screen."""
    assert res.code == 2, res.text
    assert "Traceback" not in res.text
    for needle in needles:
        assert needle in res.text, res.text
    assert len(res.text.splitlines()) < 25


# --------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    "args, needles",
    [
        (["run", "plan5", "--bogus"], ["Usage: lever run", "No such option: --bogus"]),
        (["run"], ["Usage: lever run", "Missing argument"]),
        (["run", "plan5", "--seed", "abc"], ["Usage: lever run", "--seed", "valid integer"]),
        (["evaluate", "plan5", "--epoch", "0"], ["Usage: lever evaluate", "--epoch", "greater than or equal to 1"]),
        (["bogus"], ["Usage: lever", "No such command 'bogus'"]),
        (["data", "stats"], ["Usage: lever data stats", "Missing argument"]),
    ],
)
def test_usage_errors_print_the_usage_line(lever, args, needles):
    refused(lever(*args), *needles)


def test_ctrl_c_exits_130_with_one_line(lever, monkeypatch):
    import lever_cli.spec

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(lever_cli.spec, "load_plan", interrupt)
    res = lever("validate", "plan5")
    assert res.code == 130 and res.err.strip() == "interrupted" and "Traceback" not in res.text


def test_ctrl_c_before_the_command_exits_130(lever, monkeypatch):
    import lever_cli.app

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(lever_cli.app, "set_workspace_flag", interrupt)  # the root callback, before any command
    res = lever("plans")
    assert res.code == 130 and res.err.strip() == "interrupted"


# --------------------------------------------------------------------------- files


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """A binary file and a non-UTF-8 file, each with the reason the message must give."""
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00")
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('description = "café"\n'.encode("latin-1"))
    return {"binary": (binary, "is a binary file"), "latin1": (latin1, "is not UTF-8 text (byte 0xe9")}


@pytest.mark.parametrize("kind", ["binary", "latin1"])
def test_bad_plan_file_is_named_with_the_reason(lever, tmp_path, kind):
    path, reason = _bad_files(tmp_path)[kind]
    refused(lever("validate", path), f"plan file {path} {reason}")


@pytest.mark.parametrize("kind", ["binary", "latin1"])
def test_bad_workspace_file_is_named_with_the_reason(lever, tmp_path, kind):
    path, reason = _bad_files(tmp_path)[kind]
    refused(lever("--workspace", path, "plans"), f"workspace file {path} {reason}")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_plan_file_is_named(lever, tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('description = "x"\n')
    path.chmod(0)
    refused(lever("validate", path), f"plan file {path} cannot be read: permission denied")


def test_unreadable_file_reason(tmp_path, monkeypatch):
    """The same reason when the process may not read the file (simulated: the tests may run as root)."""
    from lever.errors import LeverError
    from lever.io import check_readable, read_text

    path = tmp_path / "p.toml"
    path.write_text("x")

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(LeverError, match="plan file .* cannot be read: permission denied"):
        read_text(path, "plan file")
    monkeypatch.setattr("builtins.open", denied)
    with pytest.raises(LeverError, match="candidate-data file .* cannot be read: permission denied"):
        check_readable(path, "candidate-data file")


def test_data_stats_on_a_binary_file(lever, tmp_path):
    path = tmp_path / "data.json"
    path.write_bytes(b"\x00\x01\x02binary")
    refused(lever("data", "stats", path, "--no-cache"), str(path))


# --------------------------------------------------------------------------- overrides and plan values


@pytest.mark.parametrize(
    "override, needles",
    [
        ("phases.0=1", ["phases is not set in the plan file", "phases=[...]"]),
        ("seeds.3=1", ["seeds has 1 item(s), so there is no item 3", "seeds=[...]"]),
        ("seeds.x=1", ["'seeds' is a list; address an item by number"]),
        ("rce.epochs.x=1", ["'rce.epochs' is a value, not a table"]),
        ("rce.bogus=1", ["unknown key 'rce.bogus'", "Valid keys here"]),
        ("extends=plan1.toml", ["extends cannot be overridden"]),
        ("rce.temp_start=inf", ["rce.temp_start: Input should be a finite number (got inf)"]),
        ("grpo.kl.beta=inf", ["grpo.kl.beta: Input should be a finite number (got inf)"]),
        ("reward.clip=[-inf,5]", ["reward.clip.0: Input should be a finite number"]),
        ("select.epoch=99", ["select.epoch = 99", "final stage 'rce'", "trains 5 epochs", "choose 1..5"]),
        ("rce=5", ["rce: Input should be a valid dictionary"]),
    ],
)
def test_bad_overrides_are_refused(lever, override, needles):
    refused(lever("show", "baseline", override), *needles)


def test_list_items_can_be_overridden(lever):
    res = lever("show", "baseline", "seeds.0=7", "eval.shots.1=5", "--json")
    assert res.code == 0, res.text
    spec = json.loads(res.out)["spec"]
    assert spec["seeds"] == [7] and spec["eval"]["shots"] == [1, 5, 3, 4]


def test_non_finite_values_in_a_plan_file(lever, tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('description = "x"\n[grpo]\nepochs = 2\n[grpo.kl]\nbeta = nan\n')
    refused(lever("validate", path), "grpo.kl.beta: Input should be a finite number (got nan)")


# --------------------------------------------------------------------------- report commands


def test_compare_unknown_plan(lever, tmp_path, monkeypatch):
    monkeypatch.setenv("LEVER_RUNS", str(tmp_path / "runs"))
    (tmp_path / "runs" / "oldplan" / "abc" / "seed-0").mkdir(parents=True)
    refused(
        lever("compare", "plan55"), "plan 'plan55'", "did you mean 'plan5'", "known plans: baseline", "plans with runs: oldplan"
    )
    refused(lever("compare", "plan5", "--baseline", "nosuch"), "plan 'nosuch'")


def test_compare_of_known_plans_without_runs_exits_2_naming_each(lever, tmp_path, monkeypatch):
    monkeypatch.setenv("LEVER_RUNS", str(tmp_path / "runs"))
    res = lever("compare", "plan5")  # a known plan, but nothing to compare: not an empty table with exit 0
    refused(res, "no plan named has an evaluated run", "baseline: not run; plan5: not run", "lever run plans/baseline.toml")


def test_report_unknown_plan(lever, tmp_path, monkeypatch):
    monkeypatch.setenv("LEVER_RUNS", str(tmp_path / "runs"))
    refused(lever("report", "nosuchplan"), "plan 'nosuchplan'", "known plans:")


def test_show_and_diff_unknown_plan(lever):
    refused(lever("show", "nosuchplan"), "plan 'nosuchplan'", "known plans:")
    refused(lever("diff", "plan5", "nosuchplan"), "plan 'nosuchplan'", "known plans:")


def test_evaluate_a_plan_never_run(lever, tmp_path):
    ws = tmp_path / "lever.toml"
    ws.write_text('runs = "runs"\ncache = "cache"\n')
    refused(lever("--workspace", ws, "evaluate", ROOT / "plans" / "plan5.toml"), "has no selected checkpoint", "lever run")
    assert not (tmp_path / "cache").exists()  # refused before the benchmark is generated


def test_workspace_flag_on_a_folder(lever, tmp_path):
    refused(lever("--workspace", tmp_path, "show", ROOT / "plans" / "plan5.toml"), "is a folder without a lever.toml")
    (tmp_path / "lever.toml").write_text('runs = "elsewhere"\n')
    res = lever("--workspace", tmp_path, "show", ROOT / "plans" / "plan5.toml", "--json")
    assert res.code == 0 and "elsewhere" in res.out  # a folder holding lever.toml names it


def test_a_start_checkpoint_of_random_bytes_is_not_called_a_pickle(lever, tmp_path):
    bad = tmp_path / "random.ckpt"
    bad.write_bytes(bytes(range(256)) * 8)
    res = lever("run", ROOT / "plans" / "original" / "plan5.toml", "start.kind=checkpoint", f"start.checkpoint={bad}")
    refused(res, "is not a PyTorch checkpoint", str(bad))
    assert "trust_pickle" not in res.err
