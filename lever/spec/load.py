"""Plan loading: TOML files, `extends` chains, `key.path=value` overrides, hashing and diffs.

Every failure is a `LeverError` that names the file, the key path and what is valid.
"""

from __future__ import annotations

import copy
import difflib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from lever.errors import LeverError
from lever.io import read_text
from lever.keys import content_key

from .schema import Plan

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class LoadedPlan:
    """A validated plan with where it came from."""

    name: str
    path: Path
    plan: Plan
    chain: list[Path] = field(default_factory=list)  # the file and the files it extends, child first
    overrides: list[str] = field(default_factory=list)

    @property
    def hash(self) -> str:
        return spec_hash(self.plan)

    def spec_dict(self) -> dict[str, Any]:
        """The resolved spec as plain JSON-able data (what the hash covers)."""
        return spec_dict(self.plan)


# --------------------------------------------------------------------------- TOML


def read_toml(path: Path) -> dict[str, Any]:
    """Parse one TOML file; errors carry the file name, line and column."""
    if not path.is_file():
        raise LeverError(f"{path}: no such plan file")
    text = read_text(path, "plan file")
    if not text.strip():
        raise LeverError(f"{path}: the file is empty", hint='a plan needs at least description = "..." and the keys it sets')
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise LeverError(f"{path}: invalid TOML: {err}") from None


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; any other value (lists included) in `over` replaces the one in `base`."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_extends(path: Path, _stack: tuple[Path, ...] = ()) -> tuple[dict[str, Any], list[Path]]:
    """Read `path` and merge it over the file it `extends` (relative to it), recursively."""
    path = path.resolve()
    if path in _stack:
        cycle = " -> ".join(p.name for p in (*_stack, path))
        raise LeverError(f"{_stack[0]}: circular extends: {cycle}")
    raw = read_toml(path)
    parent = raw.get("extends")
    if parent is None:
        return raw, [path]
    if not isinstance(parent, str):
        raise LeverError(f"{path}: extends must be a file name string, got {parent!r}")
    parent_path = (path.parent / parent).resolve()
    if not parent_path.is_file():
        raise LeverError(f"{path}: extends = {parent!r}: no such file {parent_path.name} next to it")
    base, chain = resolve_extends(parent_path, (*_stack, path))
    base.pop("description", None)  # a description belongs to its own file
    return deep_merge(base, raw), [path, *chain]


# --------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """`grpo.kl.beta=0.01` -> (["grpo", "kl", "beta"], 0.01). Values are TOML; bare words are strings."""
    if "=" not in text:
        raise LeverError(f"override {text!r}: expected key.path=value, e.g. grpo.lr=5e-5")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise LeverError(f"override {text!r}: the key is empty")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()  # `data.candidates=balanced`
    return key.split("."), parsed


def _field_names(model: type[BaseModel]) -> list[str]:
    """The keys a user may write in the model's table (not those lever sets, SET_BY_LEVER)."""
    return [k for k in model.model_fields if k not in getattr(model, "SET_BY_LEVER", ())]


def suggest(name: str, options: list[str]) -> str:
    """The hint "did you mean 'x'? " for the option closest to `name`, or "" when none is close."""
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'? " if close else ""


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation like `Model`, `Optional[Model]` or `list[Model]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _submodel(arg)
        if found:
            return found
    return None


def _is_list(annotation: Any) -> bool:
    """Whether an annotation is a list or tuple (possibly optional): its items are addressed by index."""
    if get_origin(annotation) in (list, tuple):
        return True
    return get_origin(annotation) in (Union, UnionType) and any(_is_list(a) for a in get_args(annotation))


def check_key_path(keys: list[str], model: type[BaseModel] = Plan) -> None:
    """Raise when `keys` does not name a field of the schema; a number indexes a list (phases.0.epochs, seeds.1)."""
    path = ".".join(keys)
    if keys[0] == "extends":
        raise LeverError(
            f"override '{path}': extends cannot be overridden (the plan's files are merged before overrides apply)",
            hint="write a plan file with extends = '...' and the keys it changes",
        )
    here: type[BaseModel] | None = model
    listy = False
    for depth, key in enumerate(keys):
        dotted = ".".join(keys[: depth + 1])
        parent = ".".join(keys[:depth])
        if listy:
            if not key.isdigit():
                raise LeverError(f"override '{path}': '{parent}' is a list; address an item by number, e.g. {parent}.0")
            listy = False
            continue
        if here is None:
            raise LeverError(f"override '{path}': '{parent}' is a value, not a table")
        if key not in here.model_fields:
            options = _field_names(here)
            raise LeverError(
                f"override '{path}': unknown key '{dotted}'. {suggest(key, options)}Valid keys here: {', '.join(options)}"
            )
        annotation = here.model_fields[key].annotation
        here, listy = _submodel(annotation), _is_list(annotation)


def apply_override(data: dict[str, Any], keys: list[str], value: Any) -> None:
    """Set `value` at `keys` in the raw plan data (missing tables are created); list indices must exist."""
    path = ".".join(keys)
    node: Any = data
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        parent = ".".join(keys[:depth])
        if isinstance(node, list):
            idx = int(key) if key.isdigit() else -1
            if not 0 <= idx < len(node):
                raise LeverError(
                    f"override '{path}': {parent} has {len(node)} item(s), so there is no item {key}",
                    hint=f"set the whole list instead, e.g. {parent}=[...]",
                )
        elif not isinstance(node, dict):
            raise LeverError(f"override '{path}': {parent} is {node!r}, not a table or a list")
        else:
            idx = key
            if not last and node.get(key) is None:
                if keys[depth + 1].isdigit():
                    raise LeverError(
                        f"override '{path}': {'.'.join(keys[: depth + 1])} is not set in the plan file, so it has no item {keys[depth + 1]}",
                        hint=f"set the whole list instead, e.g. {'.'.join(keys[: depth + 1])}=[...]",
                    )
                node[key] = {}
        if last:
            node[idx] = value
        else:
            node = node[idx]


# --------------------------------------------------------------------------- validation


def _loc_model(loc: tuple[Any, ...], root: type[BaseModel] = Plan) -> type[BaseModel] | None:
    """The model of the table at `loc` inside `root` (None when the path leaves the models)."""
    here: type[BaseModel] | None = root
    for key in loc:
        if here is None:
            return None
        if isinstance(key, int):
            continue
        if key not in here.model_fields:
            return None
        here = _submodel(here.model_fields[key].annotation)
    return here


def format_validation_error(
    err: ValidationError, where: str, model: type[BaseModel] = Plan, key_prefix: str = "", hint: str | None = None
) -> LeverError:
    """The user's message for any pydantic ValidationError, one line per problem:
    `where: key.path: what is wrong (got value)`. An unknown key names the closest valid one and lists
    the valid keys of its table (`model` is the validated root). `key_prefix` goes before every key
    (e.g. "bench."); an empty `where` leaves that part out."""
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        dotted = key_prefix + ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            parent = _loc_model(loc[:-1], model)
            options = _field_names(parent) if parent else []
            lines.append(f"{dotted}: unknown key. {suggest(str(loc[-1]), options)}Valid keys here: {', '.join(options)}")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        shown = "" if isinstance(got, dict) or e["type"] == "value_error" else f" (got {got!r})"
        lines.append(f"{dotted}: {msg}{shown}" if dotted else f"{msg}{shown}")  # plan-wide checks name their keys
    head = f"{where}: " if where else ""
    if len(lines) == 1:
        return LeverError(head + lines[0], hint=hint)
    return LeverError(f"{head}{len(lines)} problems:\n  " + "\n  ".join(lines), hint=hint)


def validate_plan(data: dict[str, Any], where: str) -> Plan:
    try:
        return Plan.model_validate(data)
    except ValidationError as err:
        raise format_validation_error(err, where) from None


# --------------------------------------------------------------------------- entry points


def plan_files(plans_dir: Path) -> list[Path]:
    """Every plan file in the plans folder and its sub-folders (a family such as `original/`), by name."""
    if not plans_dir.is_dir():
        return []
    return sorted(plans_dir.rglob("*.toml"), key=lambda p: plan_name(p, plans_dir))


def plan_name(ref: str | Path, plans_dir: Path | None = None) -> str:
    """A plan's name: its file's path inside the plans folder, without `.toml`, `/`-separated
    (`plan5`, `original/plan5`). The plans folder is `plans_dir`, else the nearest folder
    called `plans` above the file; a file in neither is named by its stem. A name (no
    `.toml`) is kept as it is."""
    path = Path(ref)
    if path.suffix != ".toml":
        return path.as_posix()
    full = path.resolve()
    roots = [Path(plans_dir).resolve()] if plans_dir is not None else []
    roots += [p for p in full.parents if p.name == "plans"][:1]
    names = [full.relative_to(r).with_suffix("").as_posix() for r in roots if full.is_relative_to(r)]
    return max(names, key=len) if names else path.stem  # the widest folder: a family's file keeps its family


def find_plan_file(ref: str | Path, plans_dir: Path = Path("plans")) -> Path:
    """A plan is a file path, or a name looked up as `<plans_dir>/<name>.toml` (`original/plan5`)."""
    path = Path(ref)
    if path.suffix == ".toml" or path.is_file():
        return path
    candidate = plans_dir / f"{ref}.toml"
    if candidate.is_file():
        return candidate
    known = [plan_name(p, plans_dir) for p in plan_files(plans_dir)]
    hint = f"{suggest(str(ref), known)}known plans: {', '.join(known)}" if known else f"no plans found in {plans_dir}/"
    raise LeverError(f"plan '{ref}': no file {candidate}", hint=hint)


def load_plan(ref: str | Path, overrides: list[str] | tuple[str, ...] = (), plans_dir: Path = Path("plans")) -> LoadedPlan:
    """Read, merge `extends`, apply overrides and validate a plan."""
    path = find_plan_file(ref, plans_dir)
    data, chain = resolve_extends(path)
    for text in overrides:
        keys, value = parse_override(text)
        check_key_path(keys)
        apply_override(data, keys, value)
    where = str(path) + (f" (with overrides {' '.join(overrides)})" if overrides else "")
    plan = validate_plan(data, where)
    return LoadedPlan(name=plan_name(path, plans_dir), path=path, plan=plan, chain=chain, overrides=list(overrides))


def spec_dict(plan: Plan) -> dict[str, Any]:
    """What defines a run: everything but the description, the extends link and start.trust_pickle (the start's
    weights are keyed by their digest), `sft`, `refresh` and `rollout` while off, `select.reward` while false and `selector`
    while it is the trained one (plans older than them keep their hash)."""
    out = plan.model_dump(mode="json", exclude={"description", "extends"})
    out["start"].pop("trust_pickle")
    if plan.sft.epochs == 0:
        out.pop("sft")
    if plan.refresh.rounds == 0:  # refresh rounds, online rollouts and select.reward while off: older plans keep their hash
        out.pop("refresh")
    if plan.rollout.mode == "offline":
        out.pop("rollout")
    if not plan.select.reward:
        out["select"].pop("reward")
    if plan.selector.trains:  # the default (features and order apply to `similar` only): older plans keep their hash
        out.pop("selector")
    return out


def spec_hash(plan: Plan | dict[str, Any], length: int = 12) -> str:
    """A stable hash of the resolved spec (`spec_dict`): sorted-key JSON, so key order and extends layout do not matter."""
    return content_key(spec_dict(plan) if isinstance(plan, Plan) else plan, length=length)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested tables -> {"grpo.kl.beta": 0.1}; lists of tables are indexed (phases.0.epochs)."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        out = {}
        for i, value in enumerate(data):
            out.update(flatten(value, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: data}


def diff_specs(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Only the keys whose values differ: (dotted key, value in a, value in b); a missing key is None."""
    fa, fb = flatten(a), flatten(b)
    keys = sorted(set(fa) | set(fb))

    def expanded(key: str, other: dict[str, Any]) -> bool:  # `phases = []` on one side, `phases.0.*` on the other
        return any(k.startswith(key + ".") for k in other)

    return [
        (k, fa.get(k), fb.get(k))
        for k in keys
        if fa.get(k) != fb.get(k) and not (fa.get(k) == [] and expanded(k, fb)) and not (fb.get(k) == [] and expanded(k, fa))
    ]
