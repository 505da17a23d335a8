"""`trainer.threads=auto`: the choice for a given set of cores, quota, sibling runs and model size (pure
functions, no timing), the registration that lets two runs see each other, and a fixed count taken as given."""

import fcntl
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import wait_until
from metaexp.threads import SMALL_MODEL, Threads, cgroup_quota, choose, runs_here


@pytest.mark.parametrize(
    "cores, runs, parameters, threads",
    [
        (2, 1, 1_761, 1),  # the sinusoid MLP: a step of milliseconds
        (2, 1, 112_000, 2),  # Conv-4 alone on two cores
        (2, 2, 112_000, 1),  # two runs share two cores
        (16, 3, 12_000_000, 5),  # three runs on 16 cores
        (1.5, 1, 112_000, 1),  # a quota of 1.5 cores
        (2, 5, 112_000, 1),  # more runs than cores: never 0
    ],
)
def test_the_thread_choice(cores, runs, parameters, threads):
    assert choose(cores, runs, parameters) == threads


def test_small_models_are_below_the_threshold_and_conv4_is_above():
    assert choose(64, 1, SMALL_MODEL - 1) == 1 and choose(64, 1, SMALL_MODEL) == 64


@pytest.mark.parametrize(
    "files, quota",
    [
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3.0),
        ({}, None),
    ],
    ids=["v2 unlimited", "v2 1.5 cores", "v1 unlimited", "v1 3 cores", "none"],
)
def test_the_cgroup_quota_is_read_in_cores(tmp_path, files, quota):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_quota(tmp_path) == quota


def test_registered_runs_are_counted_and_stale_registrations_removed(tmp_path):
    (tmp_path / "999999.lock").write_text("")  # a run that died without removing its file
    other = open(tmp_path / "1.lock", "a")
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a live run
    try:
        with Threads("auto", 112_000, torch.device("cpu"), folder=tmp_path):
            assert runs_here(tmp_path) == 2
        assert not (tmp_path / "999999.lock").exists()
        assert runs_here(tmp_path) == 1, "this run's registration is gone once it ends"
    finally:
        other.close()


def test_a_stopped_run_is_not_counted_until_it_goes_on(tmp_path):
    holder = "import fcntl, os, sys, time\n" + (
        "f = open(os.path.join(sys.argv[1], f'{os.getpid()}-run.lock'), 'a')\n"
        "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\nprint('ready', flush=True)\ntime.sleep(120)\n"
    )
    run = subprocess.Popen([sys.executable, "-c", holder, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert run.stdout.readline().strip() == "ready" and runs_here(tmp_path) == 1
        run.send_signal(signal.SIGSTOP)
        assert wait_until(lambda: runs_here(tmp_path) == 0, 10), "a stopped run takes no core"
        run.send_signal(signal.SIGCONT)
        assert wait_until(lambda: runs_here(tmp_path) == 1, 10), "counted again once it goes on"
    finally:
        run.kill()
        run.wait()


def test_a_second_run_makes_the_first_step_down_at_its_next_rebalance(tmp_path, monkeypatch):
    monkeypatch.setattr("metaexp.threads.usable_cores", lambda: 2.0)
    before = torch.get_num_threads()
    try:
        with Threads("auto", 112_000, torch.device("cpu"), folder=tmp_path) as first:
            assert torch.get_num_threads() == 2
            with Threads("auto", 112_000, torch.device("cpu"), folder=tmp_path):
                assert first.rebalance() == 1 and "shared by 2 metaexp run(s)" in first.describe()
            assert first.rebalance() == 2
    finally:
        torch.set_num_threads(before)


def test_a_fixed_count_is_taken_as_given(tmp_path):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with Threads(3, 1_000, torch.device("cpu"), folder=tmp_path) as threads:
            assert torch.get_num_threads() == 3 and threads.describe() == "3 (trainer.threads=3)"
        assert not list(tmp_path.glob("*.lock")), "a fixed count registers nothing"
        assert torch.get_num_threads() == 2, "the caller's threads are given back when the run ends"
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_the_command_keeps_freed_memory_for_reuse():
    """What `metaexp` sets at start (metaexp.__main__): a tensor allocated and freed twenty times maps fresh
    pages once or twice, not twenty times (page faults counted by the kernel), where plain Python maps them each
    time."""
    script = (
        "import resource, sys, torch\n"
        "if sys.argv[1] == 'metaexp':\n"
        "    import metaexp.__main__\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(20):\n"
        "    torch.ones(16_000_000).sum()\n"  # 64 MB, freed at once (above glibc's largest mmap threshold)
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    faults = {
        side: int(
            subprocess.run(
                [sys.executable, "-c", script, side], env=env, capture_output=True, text=True, check=True
            ).stdout
        )  # fmt: skip
        for side in ("metaexp", "plain")
    }
    assert faults["metaexp"] * 4 < faults["plain"], faults
