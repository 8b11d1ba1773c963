"""Candidate data: read and validate the compatibility JSON, rewards, filters, stats, balance.

Import from the submodules (`lever.data.reader`, ...) or from here.
"""

from .balance import BalanceOptions, balance_data, balance_file, write_balanced
from .cache import file_sha256
from .candidates import CandidateData
from .filters import TIERS, apply_filter, quality_tiers, reward_gap, split_train_val, stage_filter
from .reader import load_candidates, parse_candidates
from .rewards import compute_rewards, group_zscore, raw_rewards
from .stats import data_stats

__all__ = [
    "TIERS",
    "BalanceOptions",
    "CandidateData",
    "apply_filter",
    "balance_data",
    "balance_file",
    "compute_rewards",
    "data_stats",
    "file_sha256",
    "group_zscore",
    "load_candidates",
    "parse_candidates",
    "quality_tiers",
    "raw_rewards",
    "reward_gap",
    "split_train_val",
    "stage_filter",
    "write_balanced",
]
