"""Thread count: `LEVER_THREADS`, else `OMP_NUM_THREADS`, else the available cores; provenance says which decided."""

from __future__ import annotations

import json

import pytest
import torch
from test_run import FAST, PLANS, run_cli, seed_dirs
from test_run import ws as ws  # noqa: F401  (a fixture)

import lever.threads as threads
from lever.errors import LeverError


@pytest.fixture
def env(monkeypatch):
    """No thread settings in the environment, 6 available cores, and torch's thread count restored afterwards."""
    for name in (threads.THREADS_ENV, threads.OMP_THREADS_ENV, threads.SET_BY_LEVER_ENV, "LOCAL_WORLD_SIZE"):
        monkeypatch.setenv(name, "")  # recorded, so that what configure_threads writes is undone afterwards
        monkeypatch.delenv(name)
    monkeypatch.setattr(threads, "available_cores", lambda: 6)
    before = torch.get_num_threads()
    yield monkeypatch
    torch.set_num_threads(before)


def test_lever_threads_then_omp_num_threads_then_the_cores(env):
    env.setenv("LEVER_THREADS", "3")
    env.setenv("OMP_NUM_THREADS", "2")
    assert threads.wanted_threads() == (3, "LEVER_THREADS")
    env.delenv("LEVER_THREADS")
    assert threads.wanted_threads() == (2, "OMP_NUM_THREADS")
    env.delenv("OMP_NUM_THREADS")
    assert threads.wanted_threads() == (6, "available cores")
    env.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun with 4 processes on this machine, no OMP_NUM_THREADS
    assert threads.wanted_threads() == (1, "available cores / 4 torchrun processes")
    env.setenv("OMP_NUM_THREADS", "2")  # as a job script (or torchrun) set it
    assert threads.wanted_threads() == (2, "OMP_NUM_THREADS")


def test_levers_own_omp_num_threads_is_not_taken_for_the_users(env):
    threads.configure_threads()  # nothing set: the 6 cores, passed on to torch through OMP_NUM_THREADS
    assert threads.os.environ["OMP_NUM_THREADS"] == "6" and torch.get_num_threads() == 6
    assert threads.wanted_threads() == (6, "available cores")
    assert threads.thread_settings()["source"] == "available cores"
    env.setenv("LEVER_THREADS", "1")
    threads.configure_threads()
    assert threads.os.environ["OMP_NUM_THREADS"] == "1" and torch.get_num_threads() == 1
    env.delenv("LEVER_THREADS")  # the next command in this process: back to the cores, not lever's 1
    threads.configure_threads()
    assert torch.get_num_threads() == 6 and threads.thread_settings()["source"] == "available cores"
    env.setenv("OMP_NUM_THREADS", "2")  # the user's, from now on
    threads.configure_threads()
    assert torch.get_num_threads() == 2
    assert threads.thread_settings() == {
        "torch_threads": 2,
        "source": "OMP_NUM_THREADS",
        "available_cores": 6,
        "omp_wait_policy": threads.os.environ["OMP_WAIT_POLICY"],
    }
    threads.configure_threads()  # and it stays the user's
    assert threads.wanted_threads() == (2, "OMP_NUM_THREADS")


def test_a_bad_omp_num_threads_is_a_one_line_error(env, lever):
    env.setenv("OMP_NUM_THREADS", "lots")
    with pytest.raises(LeverError, match="OMP_NUM_THREADS='lots' is not a thread count"):
        threads.wanted_threads()
    res = lever("--version")
    assert res.code == 2 and "OMP_NUM_THREADS='lots' is not a thread count" in res.err and "LEVER_THREADS" in res.err
    assert "Traceback" not in res.text
    env.setenv("LEVER_THREADS", "2")  # LEVER_THREADS comes first: the bad value is never read
    assert threads.wanted_threads() == (2, "LEVER_THREADS")


def test_provenance_records_omp_num_threads_when_it_decided(env, lever, ws):
    env.setenv("OMP_NUM_THREADS", "1")
    res = run_cli(lever, "run", PLANS / "baseline.toml", *FAST, "--no-eval")
    assert res.code == 0, res.text
    (run_dir,) = seed_dirs(ws, "baseline")
    recorded = json.loads((run_dir / "provenance.json").read_text())["threads"]
    assert (recorded["torch_threads"], recorded["source"]) == (1, "OMP_NUM_THREADS")
