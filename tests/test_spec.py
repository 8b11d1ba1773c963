"""Plan schema, extends, overrides, hashing and diff, through the real CLI where a user would see them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lever.errors import LeverError
from lever.spec import diff_specs, load_plan, plan_files, plan_name, spec_hash
from lever.spec.load import deep_merge, parse_override
from lever.spec.schema import Plan

PLANS_DIR = Path(__file__).resolve().parents[1] / "plans"
PLAN_NAMES = [plan_name(p, PLANS_DIR) for p in plan_files(PLANS_DIR)]  # families nest: "original/plan7"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- the shipped plans


def test_every_log_plan_exists_in_both_families():
    expected = {
        "baseline",
        "plan1",
        "plan2_kl012",
        "plan2_kl005",
        "plan3",
        "plan4",
        "plan5",
        "plan6",
        "plan7",
        "plan7_1",
        "plan7_2",
        "plan5_8",
        "plan9",
        "plan10",
    }
    assert expected <= set(PLAN_NAMES)
    assert {f"original/{name}" for name in expected} <= set(PLAN_NAMES)


def test_every_plan_says_its_family():
    for name in PLAN_NAMES:
        folder = name.split("/")[0] if "/" in name else ""
        family = {"original": "original", "vqav2": "original", "baselines": "baselines"}.get(
            folder, "lever"
        )  # vqav2: the original's trainer; rl/: lever's
        assert load_plan(PLANS_DIR / f"{name}.toml").plan.description.startswith(f"Family: {family}."), name


def test_original_family_differs_only_in_the_faithful_settings(plans_dir):
    """original/plan7 against plan7: the original's trainer choices, nothing of the log's recipe."""
    a, b = load_plan(plans_dir / "plan7.toml", (), plans_dir), load_plan(plans_dir / "original/plan7.toml", (), plans_dir)
    assert (a.name, b.name) == ("plan7", "original/plan7")
    changed = {k for k, _, _ in diff_specs(a.spec_dict(), b.spec_dict())}
    assert changed == {
        "model.arch", "model.dropout", "model.attn_dropout", "model.dropout_mask", "rce.batch_size", "rce.schedule",
        "rce.rewards", "grpo.batch_size", "grpo.reference", "grpo.policy_mode", "grpo.handoff", "grpo.top_k_ties",
        "grpo.advantage.normalization", "grpo.advantage.rank_ties", "grpo.kl.adaptive.cadence",
        "data.duplicates", "data.split_rounding",
    }  # fmt: skip


def test_validate_all_plans(lever, plans_dir):
    res = lever("validate", *plan_files(plans_dir))
    assert res.code == 0, res.text
    assert sum(line.startswith("ok ") for line in res.out.splitlines()) == len(PLAN_NAMES)  # "ok" is in "token" too


@pytest.mark.parametrize("name", PLAN_NAMES)
def test_show_json_round_trips(lever, plans_dir, name):
    res = lever("show", plans_dir / f"{name}.toml", "--json")
    assert res.code == 0, res.text
    shown = json.loads(res.out)
    again = Plan.model_validate(shown["spec"])
    assert spec_hash(again) == shown["hash"]
    assert shown["workspace"]["source"].startswith("bundled benchmark")


@pytest.mark.parametrize(
    "a,b,expected",
    [
        ("plan5", "plan6", [("grpo.lr", 5e-6, 5e-5)]),
        ("plan7", "plan7_1", [("grpo.kl.beta", 0.0, 0.01)]),
        ("plan7", "plan7_2", [("grpo.kl.beta", 0.0, 0.05)]),
        ("plan1", "plan3", [("grpo.freeze_backbone", True, False)]),
        ("plan1", "plan4", [("reward.mode", "hard_plus_soft", "separated")]),
    ],
)
def test_diff_shows_exactly_the_logs_change(plans_dir, a, b, expected):
    pa, pb = load_plan(plans_dir / f"{a}.toml"), load_plan(plans_dir / f"{b}.toml")
    assert diff_specs(pa.spec_dict(), pb.spec_dict()) == expected


def test_diff_cli_table(lever):
    res = lever("diff", "plan5", "plan6")
    assert res.code == 0, res.text
    assert "grpo.lr" in res.out and "5e-06" in res.out and "5e-05" in res.out
    assert "grpo.kl.beta" not in res.out


def test_plans_lists_descriptions(lever):
    res = lever("plans")
    assert res.code == 0
    assert "plan7_1" in res.out and "beta 0.01" in res.out
    assert "original/plan7" in res.out


def test_schema_is_json_schema(lever):
    res = lever("schema")
    assert res.code == 0
    schema = json.loads(res.out)
    assert schema["additionalProperties"] is False
    assert "grpo" in schema["properties"] and "description" in schema["properties"]


# --------------------------------------------------------------------------- extends, overrides, hash


def test_extends_deep_merges_relative_to_file(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    write(tmp_path, "base.toml", 'description = "base"\n[grpo]\nepochs = 3\nlr = 1e-5\n[grpo.kl]\nbeta = 0.2\n')
    child = write(sub, "child.toml", 'description = "child"\nextends = "../base.toml"\n[grpo.kl]\nbeta = 0.05\n')
    lp = load_plan(child)
    assert lp.plan.grpo.epochs == 3 and lp.plan.grpo.lr == 1e-5  # inherited
    assert lp.plan.grpo.kl.beta == 0.05  # overridden
    assert lp.plan.description == "child"
    assert [p.name for p in lp.chain] == ["child.toml", "base.toml"]


def test_deep_merge_replaces_lists():
    assert deep_merge({"a": {"x": [1, 2], "y": 1}}, {"a": {"x": [3]}}) == {"a": {"x": [3], "y": 1}}


def test_overrides_are_toml_typed(plans_dir):
    lp = load_plan(
        plans_dir / "plan5.toml", ["grpo.lr=1e-5", "eval.shots=[1,2]", "data.candidates=balanced", "grpo.ppo_clip=false"]
    )
    assert lp.plan.grpo.lr == 1e-5
    assert lp.plan.eval.shots == [1, 2]
    assert lp.plan.data.candidates == "balanced"
    assert lp.plan.grpo.ppo_clip is False


def test_override_into_phase_list(plans_dir):
    lp = load_plan(plans_dir / "plan9.toml", ["phases.0.epochs=2"])
    assert lp.plan.phases[0].epochs == 2 and lp.plan.phases[1].epochs == 20


def test_parse_override_bare_word():
    assert parse_override("data.candidates=balanced") == (["data", "candidates"], "balanced")
    assert parse_override("rce.epochs=3") == (["rce", "epochs"], 3)


def test_hash_is_stable_and_ignores_layout(tmp_path):
    a = write(tmp_path, "a.toml", 'description = "one"\n[grpo]\nepochs = 2\nlr = 1e-5\n')
    b = write(tmp_path, "b.toml", 'description = "two"\n[grpo]\nlr = 1e-5\nepochs = 2\n')
    assert load_plan(a).hash == load_plan(b).hash  # key order and description do not matter
    c = write(tmp_path, "c.toml", 'description = "one"\n[grpo]\nepochs = 2\nlr = 2e-5\n')
    assert load_plan(c).hash != load_plan(a).hash
    assert len(load_plan(a).hash) == 12


def test_hash_equal_through_extends(plans_dir, tmp_path):
    flat = json.loads(json.dumps(load_plan(plans_dir / "plan6.toml").spec_dict()))
    assert spec_hash(Plan.model_validate(flat)) == load_plan(plans_dir / "plan6.toml").hash


# --------------------------------------------------------------------------- bad input, through the CLI


BAD = [
    ("unknown key", 'description = "x"\n[grpo]\nflux = 1\n', ["grpo.flux", "unknown key"]),
    ("misspelt key", 'description = "x"\n[grpo.kl]\nbeat = 0.1\n', ["grpo.kl.beat", "did you mean 'beta'"]),
    ("misspelt table", 'description = "x"\n[rewrad]\nmode = "separated"\n', ["rewrad", "did you mean 'reward'"]),
    ("wrong type", 'description = "x"\n[rce]\nepochs = "five"\n', ["rce.epochs", "integer"]),
    ("negative lr", 'description = "x"\n[grpo]\nlr = -1e-5\n', ["grpo.lr", "greater than 0"]),
    ("epsilon outside (0,1)", 'description = "x"\n[grpo]\neps_high = 1.5\n', ["grpo.eps_high", "less than 1"]),
    ("shots outside 0-8", 'description = "x"\n[eval]\nshots = [1, 9]\n', ["eval", "0..8", "[9]"]),
    ("bad reward mode", 'description = "x"\n[reward]\nmode = "hard_plus"\n', ["reward.mode", "hard_plus_soft"]),
    (
        "phases with grpo.epochs",
        'description = "x"\n[grpo]\nepochs = 3\n[[phases]]\nname = "a"\nepochs = 2\n',
        ["grpo.epochs = 3 conflicts with phases"],
    ),
    (
        "adaptive beta from 0",
        'description = "x"\n[grpo]\nepochs = 1\n[grpo.kl]\nbeta = 0\n[grpo.kl.adaptive]\nenabled = true\n',
        ["adaptive", "beta > 0"],
    ),
    ("start plan without name", 'description = "x"\n[start]\nkind = "plan"\n', ["start", "needs plan"]),
    ("nothing to train", 'description = "x"\n[rce]\nepochs = 0\n', ["nothing to train"]),
    ("invalid TOML", 'description = "x"\n[grpo\nlr = 1\n', ["invalid TOML", "line 2"]),
    ("empty file", "   \n", ["empty"]),
]


@pytest.mark.parametrize("label,text,needles", BAD, ids=[b[0] for b in BAD])
def test_bad_spec_exits_2_with_precise_message(lever, tmp_path, label, text, needles):
    path = write(tmp_path, "bad.toml", text)
    res = lever("validate", path)
    assert res.code == 2, res.text
    assert str(path) in res.err
    for needle in needles:
        assert needle in res.err, (needle, res.err)
    assert "Traceback" not in res.text


def test_missing_extends(lever, tmp_path):
    path = write(tmp_path, "c.toml", 'description = "x"\nextends = "nope.toml"\n')
    res = lever("validate", path)
    assert res.code == 2 and "nope.toml" in res.err and "no such file" in res.err


def test_circular_extends(lever, tmp_path):
    write(tmp_path, "a.toml", 'extends = "b.toml"\n')
    write(tmp_path, "b.toml", 'extends = "a.toml"\n')
    res = lever("validate", tmp_path / "a.toml")
    assert res.code == 2 and "circular extends" in res.err and "a.toml -> b.toml -> a.toml" in res.err


def test_override_on_missing_key(lever):
    res = lever("show", "plan5", "grpo.kl.bta=0.1")
    assert res.code == 2
    assert "unknown key 'grpo.kl.bta'" in res.err and "did you mean 'beta'" in res.err


def test_override_with_bad_value(lever):
    res = lever("show", "plan5", "-s", "grpo.eps_low=0")
    assert res.code == 2 and "grpo.eps_low" in res.err and "greater than 0" in res.err


OUT_OF_BOUNDS = [
    ("rce.epochs=99999999999999999999999", "rce.epochs", "100000"),
    ("eval.questions=1e10", "eval.questions", "10000000"),
    ("grpo.epochs=100001", "grpo.epochs", "100000"),
    ("sft.epochs=1e6", "sft.epochs", "100000"),
    ("phases=[{name='a', epochs=200000}]", "phases.0.epochs", "100000"),
    ("rce.batch_size=1e9", "rce.batch_size", "65536"),
    ("eval.pool_size=1e9", "eval.pool_size", "100000"),
    ("eval.shots=[1, 64]", "shots must each be in 0..8", "[64]"),
    ("seeds=[0, 1e10]", "seeds.1", "4294967295"),
    (f"seeds={list(range(1001))}", "seeds", "at most 1000 items"),
    ("seeds=[0, 1, 0]", "seeds", "seed 0 is listed twice"),  # the same run twice
]


@pytest.mark.parametrize("override,key,bound", OUT_OF_BOUNDS, ids=[o[1] for o in OUT_OF_BOUNDS])
def test_counts_that_cannot_be_meant_are_refused(lever, override, key, bound):
    with pytest.raises(LeverError) as err:
        load_plan(PLANS_DIR / "plan5.toml", [override])
    assert key in str(err.value) and bound in str(err.value), str(err.value)
    if override.startswith("rce.epochs"):  # through the CLI: exit 2, one line naming the key and the bound
        res = lever("validate", "plan5", override)
        assert res.code == 2 and "rce.epochs: Input should be less than or equal to 100000" in res.err, res.text
        assert "Traceback" not in res.text


def test_unknown_plan_name_suggests(lever):
    res = lever("show", "plan77")
    assert res.code == 2 and "plan77" in res.err and "did you mean" in res.err


def test_library_error_type(tmp_path):
    with pytest.raises(LeverError):
        load_plan(write(tmp_path, "x.toml", 'description = "x"\n[model]\nhidden = 10\nheads = 3\n'))


# --------------------------------------------------------------------------- workspace


def test_workspace_file_is_shown_and_resolves_relative_paths(lever, tmp_path):
    ws = write(tmp_path, "lever.toml", 'runs = "out/runs"\nbackend = "hf"\n[candidates]\nmain = "data/rl.json"\n')
    res = lever("--workspace", ws, "show", Path(__file__).resolve().parents[1] / "plans" / "plan5.toml", "--json")
    assert res.code == 0, res.text
    shown = json.loads(res.out)["workspace"]
    assert shown["candidates"] == {"main": "data/rl.json"} and shown["backend"] == "hf"
    from lever.spec import load_workspace

    loaded = load_workspace(ws)
    assert loaded.runs_dir == tmp_path / "out" / "runs" and not loaded.is_bundled


def test_workspace_from_environment_and_bad_key(lever, tmp_path, monkeypatch):
    ws = write(tmp_path, "w.toml", 'runz = "x"\n')
    res = lever("--workspace", ws, "show", "plan5")
    assert res.code == 2 and "runz" in res.err and "did you mean 'runs'" in res.err
    assert "Valid keys here: runs, cache, plans" in res.err  # root and source are lever's, not the file's
    res = lever("--workspace", tmp_path / "missing.toml", "show", "plan5")
    assert res.code == 2 and "missing.toml" in res.err and "does not exist" in res.err


def test_schema_to_file_never_overwrites_silently(lever, tmp_path):
    out = tmp_path / "plan.schema.json"
    assert lever("schema", "-o", out).code == 0 and json.loads(out.read_text())["title"] == "Plan"
    out.write_text("mine")
    res = lever("schema", "-o", out)
    assert res.code == 2 and "--force" in res.err and out.read_text() == "mine"
    assert lever("schema", "-o", out, "--force").code == 0 and out.read_text() != "mine"


def test_data_stats_takes_plan_overrides(lever, tmp_path):
    from lever.data.synthetic import synthetic_records, write_records

    data = write_records(tmp_path / "rl.json", synthetic_records(queries=20, group=6, pool=10))
    plan = Path(__file__).resolve().parents[1] / "plans" / "plan5.toml"
    res = lever("data", "stats", data, "--plan", plan, "-s", "grpo.advantage.kind=rank", "--json")
    assert res.code == 0, res.text
    assert json.loads(res.out)["plan"]["advantage"]["kind"] == "rank"
    res = lever("data", "stats", data, "-s", "grpo.lr=1")
    assert res.code == 2 and "--plan" in res.err


def test_every_schema_field_has_a_description():
    from pydantic import BaseModel

    from lever.spec.load import _submodel

    missing, seen = [], set()

    def walk(model: type[BaseModel], prefix: str) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, field in model.model_fields.items():
            if not field.description:
                missing.append(prefix + name)
            sub = _submodel(field.annotation)
            if sub is not None:
                walk(sub, f"{prefix}{name}.")

    walk(Plan, "")
    assert missing == []


def test_a_stage_has_one_learning_rate(plans_dir):
    # a phase's own lr is its optimiser's (the loop's peak lr and the stage key read stage.opt.lr); the others keep grpo.lr
    lp = load_plan(plans_dir / "plan9.toml", ["phases.1.lr=1e-5", "phases.1.handoff='last'"])
    easy, full = lp.plan.stages()[-2:]
    assert (easy.opt.lr, full.opt.lr) == (5e-6, 1e-5) and (easy.opt.handoff, full.opt.handoff) == ("selected", "last")
    assert easy.opt is lp.plan.grpo  # a phase that changes nothing shares the plan's settings (and its stage key)
    assert not hasattr(full, "lr")
