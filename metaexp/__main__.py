"""`python -m metaexp` and the `metaexp` command. The Ctrl-C handler comes before the slow imports (hydra,
then torch): a KeyboardInterrupt raised inside an import can be swallowed by Python ("Exception ignored in
...") and the run would go on. The training loop installs its own handler, which saves the step in flight."""

import os
import signal
import sys


def share_cores_politely() -> None:
    """Beside another metaexp run, OpenMP threads that wait for work sleep instead of spinning, so the two do
    not make each other crawl (metaexp.threads); read when torch loads OpenMP, so set before torch loads."""
    from metaexp.threads import running_dir, runs_here

    if "OMP_WAIT_POLICY" not in os.environ and runs_here(running_dir()):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


share_cores_politely()
# torch.compile's caches where they outlive a reboot (torch's default is under /tmp): a machine compiles once.
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR",
    os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "metaexp", "inductor"),
)


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
