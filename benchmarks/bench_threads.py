"""Wall time of metaexp runs alone and two at once on this CPU: `auto`, `trainer.threads=auto` (with the
wait policy `python -m metaexp` chooses) against `before`, the behaviour before it (torch's default of one
thread per core, OpenMP's default wait policy). Run it on a quiet machine: it measures contention on purpose.

    python benchmarks/bench_threads.py [--runs default omniglot] [--repeats 2] [--how auto before]

`default` is the embedded sinusoid run, 2,000 steps; `omniglot` MAML Conv-4 5-way 1-shot (needs the real
Omniglot at ../shared/data/omniglot), a short schedule.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RUNS = {
    "default": ["trainer.steps=2000", "trainer.val_every=1000", "trainer.device=cpu"],
    "omniglot": [
        "algorithm=maml",
        "dataset=omniglot",
        f"dataset.root={ROOT.parent / 'shared' / 'data' / 'omniglot'}",
        "dataset.download=false",
        "trainer.steps=60",
        "trainer.log_every=20",
        "trainer.val_every=60",
        "trainer.val_tasks=32",
        "trainer.device=cpu",
    ],
}
# Today's behaviour through `python -m metaexp`; the old one through the CLI module, which leaves OMP_WAIT_POLICY
# to OpenMP's default, with torch's default thread count.
HOW = {
    "auto": lambda args: [sys.executable, "-m", "metaexp", "train", *args],
    "before": lambda args: [  # one thread per core, OpenMP's default wait policy
        sys.executable,
        "-c",
        "import sys; from metaexp.cli import main; sys.argv[0] = 'metaexp'; main()",
        "train",
        *args,
        f"trainer.threads={torch.get_num_threads()}",
    ],
}


def timed(commands: list) -> float:
    """Seconds until every one of `commands` (started together) has finished."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    start = time.perf_counter()
    quiet = dict(cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    procs = [subprocess.Popen(c, **quiet) for c in commands]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"a run failed (exit {proc.returncode}): {' '.join(proc.args)}\n{err.decode()[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--how", nargs="+", default=list(HOW), choices=list(HOW), help="auto: trainer.threads=auto")
    args = parser.parse_args()
    print(f"CPU: {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), torch {torch.__version__}")
    n = iter(range(10_000))  # a fresh run directory for every run
    with tempfile.TemporaryDirectory() as scratch:
        for run in args.runs:
            print(f"\n{run}: metaexp train {' '.join(RUNS[run][:3])} ...")
            print("| how | alone (s) | two at once (s) | one after another (s) | two at once / one after another |")
            print("| --- | --- | --- | --- | --- |")
            for how, command in ((h, HOW[h]) for h in args.how):

                def job():
                    return command([*RUNS[run], f"hydra.run.dir={scratch}/{run}-{next(n)}"])

                alone = [timed([job()]) for _ in range(args.repeats)]
                together = [timed([job(), job()]) for _ in range(args.repeats)]
                alone_s, together_s = statistics.median(alone), statistics.median(together)
                print(
                    f"| {how} | {alone_s:.1f} | {together_s:.1f} (tries: {', '.join(f'{t:.1f}' for t in together)})"
                    f" | {2 * alone_s:.1f} | {together_s / (2 * alone_s):.2f} |"
                )


if __name__ == "__main__":
    main()
