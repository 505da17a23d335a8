"""The meta-training loop: sample tasks -> meta-step -> log -> validate -> checkpoint."""

import contextlib
import json
import logging
import math
import os
import platform
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from metaexp import __version__, checkpoint, distributed, rundir, trpo
from metaexp.components import build, build_algorithm, build_sampler, component_class, resolve_device
from metaexp.engine import MetaStep, compile_choice
from metaexp.errors import MetaexpError
from metaexp.evaluate import evaluate_batches, sampled_batches, statistics_generator, test_statistics
from metaexp.logs import MetricsFile, RunLog, Stopwatch, TrainingProgress, console, read_metrics, summary_table
from metaexp.resume import find_resume, restore
from metaexp.settings import check_train
from metaexp.threads import Threads
from metaexp.samplers import task_generator

log = logging.getLogger("metaexp.loop")


class Interrupted(MetaexpError):
    """Training stopped on a signal after saving last.pt."""


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps, so the step in flight finishes and is
    saved. A second signal only says so; a third aborts at once, without saving."""

    def __init__(self):
        self.signal, self.repeats = None, 0

    def __enter__(self):
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def handle(self, signum, frame):
        if self.signal is None:
            self.signal = signum
            return
        self.repeats += 1
        if self.repeats > 1:
            raise KeyboardInterrupt
        console.print(
            "[yellow]Stopping: finishing this step and saving checkpoints/last.pt. Press Ctrl-C "
            "once more to abort without saving.[/yellow]"
        )


@dataclass
class Progress:
    """Where the run stands; what a checkpoint records besides the weights."""

    step: int = 0
    best: float | None = None
    elapsed: float = 0.0
    saved_at: int | None = None


@dataclass
class Run:
    """The built components of one run."""

    algorithm: object
    params: dict
    optimizer: object
    scheduler: object
    train_sampler: object
    val_sampler: object
    generator: torch.Generator


def train(cfg: DictConfig, run_dir: Path | None = None) -> float:
    """Meta-train as `cfg` says in `run_dir` (the Hydra run directory by default); returns the best validation
    value."""
    check_train(cfg)
    run_dir = Path(run_dir or HydraConfig.get().runtime.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as cleanup:
        device = distributed.setup(resolve_device(cfg.trainer.device))
        cleanup.push(distributed.teardown)
        stop = cleanup.enter_context(StopRequest())
        run_log = RunLog()
        cleanup.callback(run_log.close)
        torch.manual_seed(cfg.seed)
        run = build_run(cfg, device)  # first, so that a bad value is named before any resume question
        parameters = sum(v.numel() for v in run.params.values())
        threads = cleanup.enter_context(Threads(cfg.trainer.threads, parameters, device))
        if distributed.is_main():
            cleanup.enter_context(rundir.exclusive(run_dir))
        source, saved = find_resume(cfg, run_dir, outputs_root=None if in_sweep() else Path(cfg.paths.output_dir))
        if distributed.is_main():
            rundir.record_config(run_dir, cfg)
            rundir.remove_stale_temporaries(run_dir)
            run_log.open(run_dir / "train.log")
        progress = Progress()
        if saved is not None:
            progress.step, progress.best, progress.elapsed = restore(
                saved, cfg, run.params, run.optimizer, run.scheduler, run.generator
            )
            progress.saved_at = progress.step if rundir.run_dir_of(source) == run_dir.resolve() else None
            log.info("resumed from %s at step %d", source, progress.step)
        metric = run.train_sampler.objective.metric
        sinks = open_sinks(
            cfg, run_dir, carry_from=rundir.run_dir_of(source) if source else run_dir, upto=progress.step
        )
        cleanup.callback(close_all, sinks)
        log.info(
            "run directory %s; %s on %s, %d parameters; threads %s",
            run_dir,
            type(run.algorithm).__name__,
            device,
            parameters,
            threads.describe(),
        )
        log.info("training %s", describe_setting(cfg))
        compiled, why = compile_choice(
            cfg.trainer.compile, steps_left=cfg.trainer.steps - progress.step, parameters=parameters, device=device,
            algorithm=run.algorithm, optimizer=run.optimizer,
        )  # fmt: skip
        log.info("torch.compile %s (%s)", "on" if compiled else "off", why)
        if distributed.is_main():
            machine = {**describe_machine(device), "threads_chosen": threads.describe()}
            (run_dir / "machine.json").write_text(json.dumps(machine) + "\n")
        bar = cleanup.enter_context(
            TrainingProgress(cfg.trainer.steps, progress.step, metric, enabled=distributed.is_main())
        )
        clock = Stopwatch(progress.elapsed)
        last = loop(
            cfg, run, progress, stop=stop, sinks=sinks, bar=bar, clock=clock, run_dir=run_dir, device=device,
            threads=threads, compiled=compiled,
        )  # fmt: skip
    if distributed.is_main():
        console.print(
            summary_table(
                "metaexp train",
                {
                    "algorithm": type(run.algorithm).__name__,
                    "steps": progress.step,
                    f"train {metric}": last["train"][metric] if last["train"] else "-",
                    f"val {metric} (last)": last["val"][metric] if last["val"] else "-",
                    f"val {metric} (best)": progress.best if progress.best is not None else "-",
                    "tasks/s (median of the logged laps)": statistics.median(last["rates"]) if last["rates"] else "-",
                    "wall time (s)": clock.elapsed(),
                    "run directory": str(run_dir),
                },
            )
        )
    return progress.best


def build_run(cfg: DictConfig, device: torch.device) -> Run:
    dataset = build(cfg.dataset, "dataset")
    train_sampler = build_sampler(cfg, dataset, "train", device)
    algorithm = build_algorithm(cfg, train_sampler)
    params = {k: v.to(device).requires_grad_() for k, v in algorithm.init_params().items()}
    val_sampler = build_sampler(cfg, dataset, "val", device)
    act(train_sampler, val_sampler, algorithm=algorithm, params=params)
    if getattr(component_class(cfg.optim), "needs_divergence", False):  # before `capturable`, which TRPO lacks
        trpo.check_fits(algorithm, cuda_graph=cfg.trainer.cuda_graph)
    capturable = {"capturable": True} if cfg.trainer.cuda_graph else {}
    optimizer = build(cfg.optim, "optimizer", params=list(params.values()), **capturable)
    scheduler = build(cfg.scheduler, "scheduler", optimizer=optimizer) if cfg.get("scheduler") else None
    if scheduler is not None and cfg.trainer.cuda_graph:
        raise MetaexpError(
            "trainer.cuda_graph=true replays a fixed step and cannot follow a learning-rate "
            "schedule; drop the scheduler or set trainer.cuda_graph=false."
        )
    return Run(
        algorithm=algorithm,
        params=params,
        optimizer=optimizer,
        scheduler=scheduler,
        train_sampler=train_sampler,
        val_sampler=val_sampler,
        generator=task_generator(cfg.seed, "train", device, distributed.rank()),
    )


def act(train_sampler, val_sampler, *, algorithm, params: dict) -> None:
    """Samplers that act (rollouts of a policy) run the live parameters, adapted as in training or validation."""
    if hasattr(train_sampler, "act_with"):
        train_sampler.act_with(algorithm, params, algorithm.inner_steps)
        val_sampler.act_with(algorithm, params, algorithm.eval_inner_steps)


def loop(
    cfg: DictConfig, run: Run, progress: Progress, *, stop, sinks, bar, clock, run_dir: Path, device, threads, compiled
) -> dict:
    """Meta-train from `progress.step` to `cfg.trainer.steps`; returns the last train and val rows and the
    throughput of each logged lap."""
    trainer = cfg.trainer
    metric, higher_is_better = run.train_sampler.objective.metric, run.train_sampler.objective.higher_is_better
    tasks_per_rank = shard(trainer.meta_batch, "trainer.meta_batch")
    meta_step = MetaStep(
        run.algorithm,
        run.params,
        run.optimizer,
        device=device,
        precision=trainer.precision,
        compile=compiled,
        cuda_graph=trainer.cuda_graph,
        grad_clip=trainer.grad_clip,
        task_chunk=trainer.task_chunk,
    )
    loss_sum, score_sum = torch.zeros((), device=device), torch.zeros((), device=device)
    done_tasks, logged_at = 0, progress.step
    deadline = time.monotonic() + 60 * trainer.minutes if trainer.minutes else math.inf
    last = {"train": None, "val": None, "rates": []}

    def save(name: str) -> None:
        check_weights(run.params, progress.step, run_dir, progress.saved_at)
        states = gather_generator_states(run.generator)
        if distributed.is_main():
            checkpoint.save(
                run_dir / "checkpoints" / name,
                {
                    "params": {k: v.detach().cpu() for k, v in run.params.items()},
                    "optimizer": run.optimizer.state_dict(),
                    "step": progress.step,
                    "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
                    "best": progress.best,
                    "elapsed_s": clock.elapsed(),
                    "generator": states,
                    "metric": metric,
                    "config": OmegaConf.to_container(cfg, resolve=False),
                },
            )
        if name == "last.pt":
            progress.saved_at = progress.step

    while progress.step < trainer.steps and not stop.signal:
        batch = run.train_sampler.sample(tasks_per_rank, run.generator)
        losses, scores = meta_step(batch, progress.step)
        threads.rebalance(every=1.0)  # a run started or ended beside this one
        if run.scheduler is not None:
            run.scheduler.step()
        loss_sum += losses.sum()
        score_sum += scores.sum()
        progress.step += 1
        done_tasks += trainer.meta_batch
        # Every rank stops at the same step: the first to run out of time decides (one all-reduce, only with a limit).
        out_of_time = bool(trainer.minutes) and distributed.total(torch.tensor(time.monotonic() >= deadline)).item()
        final = progress.step == trainer.steps or out_of_time
        if progress.step % trainer.log_every == 0 or final or stop.signal:
            tasks = (progress.step - logged_at) * trainer.meta_batch
            loss, score = (distributed.total(s).item() / tasks for s in (loss_sum, score_sum))
            check_value("training loss", loss, progress.step, run_dir, progress.saved_at)
            last["train"] = {
                "step": progress.step,
                "split": "train",
                "loss": loss,
                metric: score,
                "tasks_per_sec": clock.lap(done_tasks),
                "elapsed_s": clock.elapsed(),
                **drain(run.train_sampler),
            }
            write(sinks, last["train"])
            last["rates"].append(last["train"]["tasks_per_sec"])
            bar.update(progress.step, last["train"])
            loss_sum.zero_()
            score_sum.zero_()
            logged_at = progress.step
        if progress.step % trainer.val_every == 0 or final:
            with clock.aside():
                last["val"] = validate(cfg, run, progress.step, tasks_per_rank, device, clock)
                write(sinks, last["val"])
                for name in ("loss", metric):
                    check_value(f"validation {name}", last["val"][name], progress.step, run_dir, progress.saved_at)
                log.info(
                    "step %d: val loss %.4f, val %s %.4f",
                    progress.step,
                    last["val"]["loss"],
                    metric,
                    last["val"][metric],
                )
                value = last["val"][metric]
                if progress.best is None or (value > progress.best if higher_is_better else value < progress.best):
                    progress.best = value
                    save("best.pt")
                save("last.pt")
        if out_of_time and progress.step < trainer.steps:
            log.info(
                "trainer.minutes=%s reached at step %d of %d; checkpoints/last.pt holds it. Continue with the same "
                "command plus trainer.resume=auto.",
                trainer.minutes,
                progress.step,
                trainer.steps,
            )
            break
    if stop.signal:
        if progress.saved_at != progress.step:
            save("last.pt")
        name = signal.Signals(stop.signal).name
        if progress.step == 0:
            raise Interrupted(
                f"Stopped by {name} before the first step; nothing was trained. Run the command again to start."
            )
        raise Interrupted(
            f"Stopped by {name} at step {progress.step}; {run_dir}/checkpoints/last.pt holds this step. Continue "
            f"with the same command plus trainer.resume=auto (or trainer.resume={run_dir})."
        )
    return last


def validate(cfg: DictConfig, run: Run, step: int, tasks_per_rank: int, device, clock: Stopwatch) -> dict:
    """The val row: mean query loss and score over the run's fixed validation tasks (the same every time)."""
    generator = task_generator(cfg.seed, "val", device, distributed.rank())
    batches = sampled_batches(
        run.val_sampler, shard(cfg.trainer.val_tasks, "trainer.val_tasks"), tasks_per_rank, generator
    )
    norm = cfg.test.get("norm") or "episode"
    with test_statistics(norm, run.algorithm, run.params, run.train_sampler, statistics_generator(cfg.seed, device)):
        losses, scores = evaluate_batches(run.algorithm, run.params, batches)
    metric = run.val_sampler.objective.metric
    return {
        "step": step,
        "split": "val",
        "loss": distributed.mean(losses),
        metric: distributed.mean(scores),
        "tasks_per_sec": None,
        "elapsed_s": clock.elapsed(),
    }


def drain(sampler) -> dict:
    """A sampler's own fields for the train row (rollouts: the return before adaptation, environment steps per
    second); none for the others."""
    return sampler.drain() if hasattr(sampler, "drain") else {}


def check_value(name: str, value: float, step: int, run_dir: Path, saved_at: int | None) -> None:
    if not math.isfinite(value):
        raise diverged(f"The {name} became {value} at step {step}", run_dir, saved_at)


def check_weights(params: dict, step: int, run_dir: Path, saved_at: int | None) -> None:
    """Refuse to save weights with NaN or infinite entries (they would overwrite the last good state)."""
    broken = [k for k, v in params.items() if not torch.isfinite(v).all()]
    if broken:
        raise diverged(f"The weights ({', '.join(broken[:3])}) are no longer finite at step {step}", run_dir, saved_at)


def diverged(what: str, run_dir: Path, saved_at: int | None) -> MetaexpError:
    """The divergence error, saying truthfully what the checkpoints hold."""
    if saved_at is None:
        kept = (
            f"No checkpoint was written before it, so there is nothing to resume: lower optim.lr or the inner "
            f"learning rate, or set trainer.grad_clip, and train again (trainer.resume=auto in {run_dir} starts "
            f"it over)."
        )
    else:
        kept = (
            f"Nothing non-finite was saved: {run_dir / 'checkpoints'} keeps step {saved_at}. Lower optim.lr "
            f"or set trainer.grad_clip and continue with trainer.resume=auto, or start a new run with a lower "
            f"inner learning rate."
        )
    return MetaexpError(f"{what}: training diverged. {kept}")


def open_sinks(cfg: DictConfig, run_dir: Path, carry_from: Path, upto: int) -> list:
    """metrics.jsonl (holding the rows of `carry_from` up to step `upto`, later ones are redone) and the
    configured logger; none off the main rank."""
    if not distributed.is_main():
        return []
    source = carry_from / "metrics.jsonl"
    rows = (
        [r for r in read_metrics(source) if isinstance(r.get("step"), int) and r["step"] <= upto]
        if source.is_file()
        else []
    )
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [MetricsFile(run_dir), *([build(cfg.logger, "logger")] if cfg.get("logger") else [])]


def close_all(sinks: list) -> None:
    for sink in sinks:
        sink.close()


def write(sinks: list, row: dict) -> None:
    for sink in sinks:
        sink.write(row)


def describe_setting(cfg: DictConfig) -> str:
    """One line of what this run trains: tasks, inner loop, meta-batch and steps."""
    sampler, algorithm = cfg.sampler, cfg.algorithm
    if "ways" in sampler:
        tasks = f"{sampler.ways}-way {sampler.shots}-shot, {sampler.queries} queries per class"
    elif "trajectories" in sampler:
        tasks = f"{sampler.trajectories} trajectories per task before and after adaptation"
    else:
        tasks = f"{sampler.shots}-shot regression, {sampler.queries} query points"
    inner = f", inner rate {algorithm.inner_lr} x {algorithm.inner_steps} steps" if "inner_lr" in algorithm else ""
    name = algorithm._target_.rsplit(".", 1)[-1]
    return (
        f"{name} on {cfg.dataset._target_.rsplit('.', 1)[-1]}: {tasks}{inner}, meta-batch "
        f"{cfg.trainer.meta_batch}, {cfg.trainer.steps} steps"
    )


def describe_machine(device: torch.device) -> dict:
    """What ran this: the device (GPU card or CPU cores), process count, versions, and the code's git commit
    with a flag for uncommitted changes (null outside a git checkout, e.g. from a wheel)."""
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


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def shard(count: int, setting: str) -> int:
    """This rank's share of `count` tasks: the first `count % world` ranks take one more."""
    world, rank = distributed.world_size(), distributed.rank()
    if count < world:
        raise MetaexpError(
            f"{setting}={count} gives fewer tasks than the {world} processes; set it to at least {world}."
        )
    return count // world + (rank < count % world)


def gather_generator_states(generator: torch.Generator) -> list:
    """Every rank's sampling-generator state (index = rank), so a resume continues each rank's tasks."""
    state = generator.get_state()
    if distributed.world_size() == 1:
        return [state]
    states = [torch.empty_like(state) for _ in range(distributed.world_size())]
    on = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
    states = [s.to(on) for s in states]
    torch.distributed.all_gather(states, state.to(on))
    return [s.cpu() for s in states]
