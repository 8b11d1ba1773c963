"""The arrows of the house point one way: spec -> data -> train -> runs -> eval -> report -> recipe, and `lever` never
imports `lever_cli`."""

from __future__ import annotations

import ast
from pathlib import Path

LEVER = Path(__file__).resolve().parents[1] / "lever"
# Lower rank = lower layer; a module may import its own layer or lower ones only.
RANK = {"errors": 0, "io": 0, "keys": 0, "records": 0, "device": 0, "threads": 0, "spec": 1, "data": 2, "bench": 2,
        "model": 2, "train": 3, "runs": 4, "eval": 5, "report": 6, "recipe": 7}  # fmt: skip


def layer(module: str) -> str:
    """`lever.runs.layout` -> `runs`."""
    return module.split(".")[1]


def test_no_lower_layer_imports_a_higher_one():
    bad = []
    for path in sorted(LEVER.rglob("*.py")):
        rel = path.relative_to(LEVER)
        if len(rel.parts) == 1 and rel.stem == "__init__":
            continue
        own = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                assert not name.startswith(("cli", "lever_cli")), f"{rel} imports {name}"
                if name.startswith("lever.") and RANK[layer(name)] > RANK[own]:
                    bad.append(f"{rel} imports {name}")
    assert bad == []


def test_the_trainer_never_branches_on_a_stage_kind():
    """Under lever/train/ no code compares a kind to a stage kind's name, nor tests a spec class with isinstance: what a
    stage kind does is its objective's (lever.train.objectives), chosen once by make_objective."""
    kinds = {"sft", "rce", "grpo"}
    bad = []
    for path in sorted((LEVER / "train").glob("*.py")):
        tree = ast.parse(path.read_text())
        spec_names = {
            a.asname or a.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lever.spec")
            for a in node.names
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                if any(isinstance(x, ast.Constant) and x.value in kinds for x in sides):
                    bad.append(f"{path.name}:{node.lineno} compares with a stage kind")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("isinstance", "issubclass"):
                used = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)} if len(node.args) > 1 else set()
                if used & spec_names:
                    bad.append(f"{path.name}:{node.lineno} tests a spec class")
    assert bad == []


def _functions(below: str):
    """(module path, function node) of every function in a layer below `below`."""
    for path in sorted(LEVER.rglob("*.py")):
        rel = path.relative_to(LEVER)
        own = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if own in RANK and RANK[own] < RANK[below]:
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield rel, node


def test_no_function_below_the_recipe_takes_a_dataset_name():
    """The recipe holds its plan's resolved dataset (`lever.data.sources.Dataset`); below it, functions take that
    object and never a name to look up again (`lever.data.sources.resolve_dataset` is the one lookup)."""
    bad = []
    for rel, fn in _functions("recipe"):
        args = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
        for a in args:
            if a.arg == "dataset" and a.annotation is not None and "str" in ast.unparse(a.annotation):
                bad.append(f"{rel}: {fn.name}({a.arg}: {ast.unparse(a.annotation)})")
    assert bad == []


def test_the_default_dataset_is_special_in_one_place():
    """Only `lever.data.sources` decides what the default dataset changes (its keys, its cache folders, the bundled
    benchmark's one dataset); the workspace schema only reserves its name."""
    allowed = {Path("data/sources.py"), Path("spec/workspace.py")}
    found = []
    for path in sorted(LEVER.rglob("*.py")):
        rel = path.relative_to(LEVER)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and "DEFAULT_DATASET" in ast.unparse(node) and rel not in allowed:
                found.append(f"{rel}:{node.lineno}")
    assert found == []
