"""How many intra-op threads a CPU run uses (`trainer.threads`).

Two runs on one machine that each start as many OpenMP threads as it has cores spin against each other (3 to
8x slower than one thread each, measured on 2 cores), and a model whose step takes milliseconds is faster on
one thread than on two. So `auto` gives a small model one thread and a larger one its share of the cores this
process may use (affinity and cgroup quota) among the metaexp runs on the machine; each run registers itself
under `<cache>/running/` while it trains, and takes its share again every second, so a run started beside an
earlier one makes both step down; a stopped run (Ctrl-Z) does not count while it is stopped. A run that starts
while another is registered also gets OMP_WAIT_POLICY=PASSIVE from `python -m metaexp` (unless set): its threads
sleep instead of spinning. A run alone keeps OpenMP's default policy, which is faster (51 against 42 tasks/s for
MAML Conv-4 on 2 cores).
The count can change during a run, and with it the rounding of a reduction: `trainer.threads=N` makes a run's
numbers independent of what else runs.
"""

import contextlib
import fcntl
import math
import os
import tempfile
import time
from pathlib import Path

from metaexp.files import user_cache

# Torch is imported where it is used: `python -m metaexp` asks `runs_here` before torch loads its OpenMP library.
# Below this many meta-parameters a step is a few milliseconds on a CPU: a second thread costs more than it gives.
SMALL_MODEL = 50_000


def usable_cores() -> float:
    """The cores this process may run on: its affinity mask, capped by a cgroup CPU quota where one is set."""
    try:
        cores = float(len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        cores = float(os.cpu_count() or 1)
    return min(cores, cgroup_quota() or math.inf)


def cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota in cores (cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us / cpu.cfs_period_us`); None when
    unlimited or unreadable."""
    with contextlib.suppress(OSError, ValueError):
        quota, period = (root / "cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    with contextlib.suppress(OSError, ValueError):
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    return None


def choose(cores: float, runs: int, parameters: int) -> int:
    """Threads for one of `runs` metaexp runs sharing `cores`, for a model of `parameters` meta-parameters."""
    if parameters < SMALL_MODEL:
        return 1
    return max(1, math.floor(cores / max(runs, 1)))


def running_dir() -> Path:
    return user_cache() / "running"


def runs_here(folder: Path) -> int:
    """How many processes hold a registration lock in `folder` and are not stopped (stale files of dead processes
    are removed)."""
    live = 0
    for path in folder.glob("*.lock"):
        with contextlib.suppress(OSError), open(path, "a") as file:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                live += not stopped(path)
                continue
            path.unlink(missing_ok=True)  # nobody holds it: its process is gone
    return live


def stopped(lock: Path) -> bool:
    """Whether the run that holds `lock` (named `<pid>-...`) is stopped, by Ctrl-Z or SIGSTOP: it takes no core
    while it waits, so a run started meanwhile need not share with it (and shares again at its next rebalance
    once the run goes on)."""
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{lock.stem.split('-')[0]}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] in ("T", "t")  # after the command name, which may hold spaces
    return False


class Threads:
    """The thread count of one run: registered while it trains, chosen again on `rebalance()`. `setting` is
    trainer.threads (`auto` or a whole number, which is taken as given)."""

    def __init__(self, setting, parameters: int, device, folder: Path | None = None):
        self.setting, self.parameters, self.device = setting, parameters, device
        self.folder, self.file = folder or running_dir(), None
        self.checked_at = -math.inf

    def __enter__(self):
        import torch

        self.before = torch.get_num_threads()  # given back on exit: a notebook's later work keeps its threads
        if self.setting == "auto" and self.device.type == "cpu":
            with contextlib.suppress(OSError):  # no writable cache: this run counts only itself
                self.folder.mkdir(parents=True, exist_ok=True)
                fd, name = tempfile.mkstemp(dir=self.folder, prefix=f"{os.getpid()}-", suffix=".lock")
                self.file, self.path = os.fdopen(fd, "a"), Path(name)
                fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else holds it
        self.rebalance()
        return self

    def __exit__(self, *exc):
        import torch

        if self.file is not None:
            self.path.unlink(missing_ok=True)
            self.file.close()
        torch.set_num_threads(self.before)

    def rebalance(self, every: float = 0.0) -> int:
        """Set torch's intra-op threads for the runs on the machine now (at most once per `every` seconds);
        returns the count."""
        import torch

        if time.monotonic() - self.checked_at < every:
            return torch.get_num_threads()
        self.checked_at = time.monotonic()
        if self.setting != "auto":
            count = int(self.setting)
        else:
            ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # torchrun's processes on this machine
            count = choose(usable_cores(), max(runs_here(self.folder), ranks, 1), self.parameters)
        if count != torch.get_num_threads():
            torch.set_num_threads(count)
        return count

    def describe(self) -> str:
        """Why this many threads, for the first log line and machine.json."""
        import torch

        if self.setting != "auto":
            return f"{torch.get_num_threads()} (trainer.threads={self.setting})"
        if self.parameters < SMALL_MODEL:
            return f"1 (auto: a model of {self.parameters:,} parameters steps fastest on one thread)"
        runs = max(runs_here(self.folder), 1)
        return f"{torch.get_num_threads()} (auto: {usable_cores():g} usable cores shared by {runs} metaexp run(s))"
