"""`metaexp train | eval | summarize`: each subcommand is a Hydra app over the configs in conf/."""
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from metaexp.errors import MetaexpError
from metaexp.logs import console

CONFIG_PATH = str(Path(__file__).resolve().parent.parent / "conf")
USAGE = """usage: metaexp <command> [hydra overrides ...]

commands:
  train      meta-train (e.g. `metaexp train algorithm=protonet dataset=omniglot`; `-m` sweeps)
  eval       evaluate a checkpoint on held-out tasks (`metaexp eval checkpoint=PATH [eval.episodes=600]`)
  summarize  tabulate and plot run directories (`metaexp summarize DIR... [--csv|--markdown] [--plot F]`)

`metaexp <command> --help` lists its config groups and options; `--cfg job` prints the composed config."""


def exit_with(error: MetaexpError, code: int = 2):
    """Print a user-facing error as one paragraph and exit with `code`."""
    console.print(f"[bold red]error:[/bold red] {error}", highlight=False, soft_wrap=True)
    raise SystemExit(code)


def guarded(task, cfg: DictConfig):
    """Run `task`; a MetaexpError ends a single run with its message and a non-zero exit. In a sweep the job
    records the error in <run>/error.txt and returns NaN, so the other jobs go on (SweepReport lists it)."""
    from metaexp.train import Interrupted
    try:
        return task(cfg)
    except MetaexpError as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            run_dir = Path(HydraConfig.get().runtime.output_dir)
            (run_dir / "error.txt").write_text(f"{error}\n")
            logging.getLogger("metaexp").error("run %s failed: %s", run_dir, error)
            return float("nan")
        exit_with(error, 130 if isinstance(error, Interrupted) else 2)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def train_app(cfg: DictConfig):
    from metaexp.train import train
    return guarded(train, cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
def eval_app(cfg: DictConfig):
    from metaexp.evaluate import evaluate_checkpoint
    return guarded(evaluate_checkpoint, cfg)


def summarize_app(argv: list) -> None:
    from metaexp.summarize import main as summarize_main
    try:
        summarize_main(argv)
    except MetaexpError as error:
        exit_with(error)


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        raise SystemExit(0 if args else 2)
    command, rest = args[0], args[1:]
    apps = {"train": train_app, "eval": eval_app}
    if command == "summarize":
        return summarize_app(rest)
    if command not in apps:
        print(f"metaexp: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)
    sys.argv = [f"metaexp-{command}", *rest]
    apps[command]()
