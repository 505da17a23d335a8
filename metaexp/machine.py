"""What ran a run: the device, process and thread counts, versions, and the code's git commit (machine.json)."""

import os
import platform
import subprocess
from pathlib import Path

import torch

from metaexp import distributed
from metaexp.version import __version__


def describe_machine(device: torch.device) -> dict:
    """The device (GPU card or CPU cores), process count, versions, and the code's git commit with a flag for
    uncommitted changes (null outside a git checkout, e.g. from a wheel)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
    return {
        "device": name,
        "processes": distributed.world_size(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "metaexp": __version__,
        "python": platform.python_version(),
        **git_state(Path(__file__).resolve().parent),
    }


def git_state(where: Path) -> dict:
    def git(*args):
        return subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=10)

    try:
        commit = git("rev-parse", "HEAD")
        if commit.returncode:
            return {"git_commit": None, "git_dirty": None}
        return {"git_commit": commit.stdout.strip(), "git_dirty": bool(git("status", "--porcelain").stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
