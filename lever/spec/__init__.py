"""Plan and workspace specs: schema, TOML loading, extends, overrides, hash and diff."""

from .load import LoadedPlan, diff_specs, find_plan_file, flatten, load_plan, plan_files, plan_name, spec_dict, spec_hash
from .schema import DataFilter, DataSpec, EvalSpec, GRPOSpec, ModelSpec, Phase, Plan, RCESpec, RewardSpec, TierRules
from .workspace import Workspace, load_workspace

__all__ = [
    "DataFilter",
    "DataSpec",
    "EvalSpec",
    "GRPOSpec",
    "LoadedPlan",
    "ModelSpec",
    "Phase",
    "Plan",
    "RCESpec",
    "RewardSpec",
    "TierRules",
    "Workspace",
    "diff_specs",
    "find_plan_file",
    "flatten",
    "load_plan",
    "load_workspace",
    "plan_files",
    "plan_name",
    "spec_dict",
    "spec_hash",
]
