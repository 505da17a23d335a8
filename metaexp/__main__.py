"""`python -m metaexp` and the `metaexp` command. The Ctrl-C handler comes before the slow imports (hydra,
then torch): a KeyboardInterrupt raised inside an import can be swallowed by Python ("Exception ignored in
...") and the run would go on. The training loop installs its own handler, which saves the step in flight."""

import os
import signal
import sys


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
