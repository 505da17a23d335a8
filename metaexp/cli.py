"""`metaexp train | eval | summarize | reproduce`: train and eval are Hydra apps over the configs in conf/."""

import contextlib
import logging
import os
import shlex
import sys
from pathlib import Path


import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from rich.markup import escape

from metaexp.configs import config_dir
from metaexp.errors import MetaexpError
from metaexp.logs import console

CONFIG_PATH = config_dir()
USAGE = """usage: metaexp <command> [hydra overrides ...]

commands:
  train      meta-train (e.g. `metaexp train algorithm=protonet dataset=omniglot`; `-m` sweeps)
  eval       evaluate a checkpoint on held-out tasks (`metaexp eval checkpoint=PATH [eval.episodes=600]`)
  summarize  tabulate and plot run directories (`metaexp summarize DIR... [--csv|--markdown] [--plot F]`)
  reproduce  run presets at full schedule within a time budget, evaluate them, regenerate the results table

`metaexp <command> --help` lists its config groups and options; `--cfg job` prints the composed config.
`metaexp --version` prints the version."""


def exit_with(error: MetaexpError, code: int = 2):
    """Print a user-facing error as one paragraph and exit with `code`."""
    console.print(f"[bold red]error:[/bold red] {escape(str(error))}", highlight=False, soft_wrap=True)
    raise SystemExit(code)


def guarded(task, cfg: DictConfig):
    """Run `task`; a MetaexpError ends a single run with its message and a non-zero exit.

    In a sweep, a job's own failure (a diverged loss, a bad value) is recorded in <run>/error.txt and the job
    returns NaN, so the other jobs go on (SweepReport lists it); a job that finishes clears an old record.
    A signal or a run-directory refusal stops the whole sweep: the next job would meet the same."""
    from metaexp.rundir import RunDirError
    from metaexp.loop import Interrupted

    hydra = HydraConfig.get()
    sweep = hydra.mode == RunMode.MULTIRUN
    run_dir = Path(hydra.runtime.output_dir)
    try:
        result = task(cfg)
    except Interrupted as error:
        if sweep:
            error = MetaexpError(
                f"{error} The sweep stopped at job {hydra.job.num} ({run_dir}); jobs before it "
                f"finished, later ones did not start. Continue the whole sweep with: "
                f"{resume_sweep_command(hydra)}"
            )
        exit_with(error, 130)
    except MetaexpError as error:
        remove_if_empty(run_dir)
        if not sweep or isinstance(error, RunDirError):
            exit_with(error)
        (run_dir / "error.txt").write_text(f"{error}\n")
        logging.getLogger("metaexp").error("run %s failed: %s", run_dir, error)
        return float("nan")
    (run_dir / "error.txt").unlink(missing_ok=True)
    remove_if_empty(run_dir)
    return result


def resume_sweep_command(hydra) -> str:
    """The command line that continues this sweep: the same arguments, its directory, trainer.resume=auto."""
    args = [a for a in sys.argv[1:] if not a.startswith(("trainer.resume=", "hydra.sweep.dir="))]
    sweep_dir = Path(hydra.sweep.dir).resolve()
    return shlex.join(["metaexp", hydra.job.name, *args, "trainer.resume=auto", f"hydra.sweep.dir={sweep_dir}"])


def remove_if_empty(run_dir: Path) -> None:
    """Leave no empty directory behind for a run that wrote nothing (refused at once, or an eval)."""
    with contextlib.suppress(OSError):
        run_dir.rmdir()


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def train_app(cfg: DictConfig):
    from metaexp.loop import train

    return guarded(train, cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
def eval_app(cfg: DictConfig):
    from metaexp.evaluate import evaluate_checkpoint

    return guarded(evaluate_checkpoint, cfg)


def plain_app(module: str, argv: list) -> None:
    """A subcommand with its own argparse (summarize, reproduce); its MetaexpError ends it in one paragraph."""
    import importlib

    try:
        importlib.import_module(f"metaexp.{module}").main(argv)
    except MetaexpError as error:
        exit_with(error)


def main() -> None:
    try:
        dispatch(sys.argv[1:])
    except KeyboardInterrupt:
        # A Ctrl-C outside the training loop's own handling: during start-up, or the third one in a row.
        console.print(
            "[bold red]stopped:[/bold red] interrupted by Ctrl-C. Checkpoints already written are "
            "intact; continue a run with trainer.resume=auto.",
            highlight=False,
            soft_wrap=True,
        )
        raise SystemExit(130)


def dispatch(args: list) -> None:
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        raise SystemExit(0 if args else 2)
    if args[0] in ("-V", "--version"):
        from metaexp.version import __version__

        print(f"metaexp {__version__}")
        return
    command, rest = args[0], args[1:]
    apps = {"train": train_app, "eval": eval_app}
    if command in ("summarize", "reproduce"):
        return plain_app(command, rest)
    if command not in apps:
        print(f"metaexp: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)
    # Hydra reads its overrides from sys.argv and names the app after argv[0].
    sys.argv = [f"metaexp-{command}", *rest]
    run_app(apps[command], command)


def run_app(app, command: str) -> None:
    """Run a Hydra app; its refusals of the command line (an unknown key, a missing option, a syntax error), which
    Hydra prints over several lines, end in one paragraph with exit 2 instead. HYDRA_FULL_ERROR=1 set by the user
    keeps Hydra's own report with its stack trace."""
    from hydra.errors import CompactHydraException

    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return app()
    before = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors instead of printing them
    try:
        app()
    except CompactHydraException as error:
        exit_with(refusal(error, command))
    finally:
        if before is None:
            os.environ.pop("HYDRA_FULL_ERROR")
        else:
            os.environ["HYDRA_FULL_ERROR"] = before


def refusal(error, command: str) -> MetaexpError:
    """Hydra's refusal of a command line as one paragraph that names the setting and what to do."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    cause, settings = error.__cause__, f"`metaexp {command} --cfg job` prints every setting"
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:
        return MetaexpError(f"{cause.full_key} is not a setting of metaexp {command}; check its spelling ({settings}).")
    if isinstance(error, MissingConfigException) and error.options and error.missing_cfg_file:
        group, _, name = error.missing_cfg_file.rpartition("/")
        return MetaexpError(
            f"{group}={name}: {group} has no option {name!r}; its options are {', '.join(error.options)}."
        )
    if isinstance(error, OverrideParseException):
        reason = error.message.splitlines()[0]
        return MetaexpError(
            f"{error.override} cannot be read as an override ({reason}); write key=value, quoting a value with "
            f"spaces or brackets (https://hydra.cc/docs/advanced/override_grammar/basic/)."
        )
    text = " ".join(
        line.strip() for part in (str(error), str(cause or "")) for line in part.splitlines() if line.strip()
    )
    return MetaexpError(f"The command line was refused: {text} ({settings}).")
