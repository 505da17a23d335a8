"""`python -m metaexp` and the `metaexp` command. The Ctrl-C handler comes before the slow imports (hydra,
then torch): a KeyboardInterrupt raised inside an import can be swallowed by Python ("Exception ignored in
...") and the run would go on. The training loop installs its own handler, which saves the step in flight."""

import os
import signal
import sys

from metaexp.files import user_cache


def share_cores_politely() -> None:
    """Beside another metaexp run, OpenMP threads that wait for work sleep instead of spinning, so the two do
    not make each other crawl (metaexp.threads); read when torch loads OpenMP, so set before torch loads."""
    from metaexp.threads import running_dir, runs_here

    if "OMP_WAIT_POLICY" not in os.environ and runs_here(running_dir()):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def keep_freed_memory() -> None:
    """glibc returns large freed blocks to the kernel at once, so each step, which allocates the same tensors
    again, has the kernel map and zero fresh pages: in a MetaNet test on a 2-core CPU, 9 million page faults and
    a third of the time in the kernel. Told to keep freed memory for reuse (what tcmalloc and jemalloc do), the
    process stays at its peak footprint instead. glibc's own MALLOC_* variables, where any is set, decide."""
    if not sys.platform.startswith("linux") or any(name.startswith("MALLOC_") for name in os.environ):
        return
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, say): its defaults stay
        return
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h
    mallopt(m_mmap_max, 0)  # large blocks from the heap, which is reused, not from fresh mappings
    mallopt(m_trim_threshold, 2**31 - 1)  # and the heap's free top is not handed back


share_cores_politely()
keep_freed_memory()
# torch.compile's caches where they outlive a reboot (torch's default is under /tmp): a machine compiles once.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(user_cache() / "inductor"))


def interrupted_outside_training(signum, frame):
    """Ctrl-C while starting (or evaluating): nothing is half-written, so exit at once."""
    sys.stderr.write(
        "stopped: interrupted by Ctrl-C outside the training loop. Files already written are "
        "intact; continue a run with trainer.resume=auto.\n"
    )
    os._exit(130)


def main() -> None:
    from metaexp.cli import main as cli_main

    cli_main()


signal.signal(signal.SIGINT, interrupted_outside_training)
if __name__ == "__main__":
    main()
