"""The meta-training loop: sample tasks -> meta-step -> log -> validate -> checkpoint."""

import contextlib
import json
import logging
import math
import signal
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from metaexp import checkpoint, distributed, rundir
from metaexp.components import build, build_algorithm, build_sampler, component_class, resolve_device
from metaexp.engine import MetaStep, check_combination, compile_choice
from metaexp.errors import MetaexpError
from metaexp.evaluate import evaluate_batches, statistics_generator, test_statistics
from metaexp.logs import MetricsFile, RunLog, Stopwatch, TrainingProgress, console, read_metrics, summary_table
from metaexp.machine import describe_machine
from metaexp.resume import find_resume, restore, saved_state
from metaexp.samplers import sampled_batches, task_generator
from metaexp.schema import check_train
from metaexp.threads import Threads

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

    @property
    def metric(self) -> str:
        return self.train_sampler.objective.metric

    def parameters(self) -> int:
        return sum(v.numel() for v in self.params.values())

    def better(self, value: float, best: float | None) -> bool:
        return best is None or (value > best if self.train_sampler.objective.higher_is_better else value < best)


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
        threads = cleanup.enter_context(Threads(cfg.trainer.threads, run.parameters(), device))
        if distributed.is_main():
            cleanup.enter_context(rundir.exclusive(run_dir))
        progress, source = resume(cfg, run, run_dir, run_log)
        carry_from = rundir.run_dir_of(source) if source else run_dir
        sinks = open_sinks(cfg, run_dir, carry_from=carry_from, upto=progress.step)
        cleanup.callback(close_all, sinks)
        meta_step = announce(cfg, run, run_dir, progress, device=device, threads=threads)
        steps, enabled = cfg.trainer.steps, distributed.is_main()
        bar = cleanup.enter_context(TrainingProgress(steps, progress.step, run.metric, enabled=enabled))
        clock = Stopwatch(progress.elapsed)
        last = loop(
            cfg, run, progress, meta_step, stop=stop, sinks=sinks, bar=bar, clock=clock, run_dir=run_dir,
            threads=threads,
        )  # fmt: skip
    if distributed.is_main():
        console.print(summary(run, progress, last, clock.elapsed(), run_dir))
    return progress.best


def build_run(cfg: DictConfig, device: torch.device) -> Run:
    dataset = build(cfg.dataset, "dataset")
    train_sampler = build_sampler(cfg, dataset, "train", device)
    algorithm = build_algorithm(cfg, train_sampler)
    params = {k: v.to(device).requires_grad_() for k, v in algorithm.init_params().items()}
    val_sampler = build_sampler(cfg, dataset, "val", device)
    # Samplers that act (rollouts of a policy) run the live parameters, adapted as in training or validation.
    train_sampler.bind(algorithm, params, algorithm.inner_steps)
    val_sampler.bind(algorithm, params, algorithm.eval_inner_steps)
    trainer = cfg.trainer
    check_combination(
        algorithm, component_class(cfg.optim), device=device, cuda_graph=trainer.cuda_graph,
        scheduled=bool(cfg.get("scheduler")), precision=trainer.precision,
    )  # fmt: skip
    capturable = {"capturable": True} if trainer.cuda_graph else {}
    optimizer = build(cfg.optim, "optimizer", params=list(params.values()), **capturable)
    scheduler = build(cfg.scheduler, "scheduler", optimizer=optimizer) if cfg.get("scheduler") else None
    return Run(
        algorithm=algorithm,
        params=params,
        optimizer=optimizer,
        scheduler=scheduler,
        train_sampler=train_sampler,
        val_sampler=val_sampler,
        generator=task_generator(cfg.seed, "train", device, distributed.rank()),
    )


def resume(cfg: DictConfig, run: Run, run_dir: Path, run_log: RunLog) -> tuple:
    """(progress, the checkpoint continued or None): the run's state after restoring the checkpoint that
    trainer.resume finds; the run directory's config and log are opened here, after the resume is checked."""
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
    return progress, source


def announce(cfg: DictConfig, run: Run, run_dir: Path, progress: Progress, *, device, threads) -> MetaStep:
    """Log what this run trains and on what, write machine.json and task.json, and build the meta-step
    (compiled or not, as trainer.compile decides)."""
    sampler, trainer = run.train_sampler, cfg.trainer
    name, parameters = type(run.algorithm).__name__, run.parameters()
    log.info(
        "run directory %s; %s on %s, %d parameters; threads %s", run_dir, name, device, parameters, threads.describe()
    )
    algorithm, family = run.algorithm, cfg.dataset._target_.rsplit(".", 1)[-1]
    inner = f", inner rate {algorithm.inner_lr} x {algorithm.inner_steps} steps" if algorithm.inner_steps else ""
    log.info(
        "training %s on %s: %s%s, meta-batch %d, %d steps",
        name, family, sampler.describe(), inner, trainer.meta_batch, trainer.steps,
    )  # fmt: skip
    compiled, why = compile_choice(
        trainer.compile, steps_left=trainer.steps - progress.step, parameters=parameters, device=device,
        algorithm=run.algorithm, optimizer=run.optimizer, minutes=trainer.minutes,
    )  # fmt: skip
    log.info("torch.compile %s (%s)", "on" if compiled else "off", why)
    if distributed.is_main():
        machine = {**describe_machine(device), "threads_chosen": threads.describe()}
        (run_dir / "machine.json").write_text(json.dumps(machine) + "\n")
        task = {
            "setting": type(sampler).label(cfg.sampler),
            "metric": run.metric,
            "higher_is_better": sampler.objective.higher_is_better,
            "tasks": sampler.describe(),
        }
        (run_dir / "task.json").write_text(json.dumps(task) + "\n")
    return MetaStep(
        run.algorithm, run.params, run.optimizer, device=device, precision=trainer.precision, compile=compiled,
        cuda_graph=trainer.cuda_graph, grad_clip=trainer.grad_clip, task_chunk=trainer.task_chunk,
    )  # fmt: skip


class Tally:
    """The summed query losses and scores since the last train row, on the device (no host sync per step)."""

    def __init__(self, device, step: int):
        self.loss, self.score = torch.zeros((), device=device), torch.zeros((), device=device)
        self.since, self.tasks = step, 0

    def add(self, losses: torch.Tensor, scores: torch.Tensor, tasks: int) -> None:
        self.loss += losses.sum()
        self.score += scores.sum()
        self.tasks += tasks

    def means(self, step: int, meta_batch: int) -> tuple:
        """(loss, score) per task over every rank since the last call; then counts afresh from `step`."""
        tasks = (step - self.since) * meta_batch
        loss, score = (distributed.total(s).item() / tasks for s in (self.loss, self.score))
        self.loss.zero_()
        self.score.zero_()
        self.since = step
        return loss, score


def loop(
    cfg: DictConfig, run: Run, progress: Progress, meta_step, *, stop, sinks, bar, clock, run_dir, threads
) -> dict:
    """Meta-train from `progress.step` to `cfg.trainer.steps`; returns the last train and val rows and the
    throughput of each logged lap."""
    trainer = cfg.trainer
    tasks_per_rank = distributed.shard(trainer.meta_batch, "trainer.meta_batch")
    tally = Tally(meta_step.device, progress.step)
    deadline = time.monotonic() + 60 * trainer.minutes if trainer.minutes else math.inf
    last = {"train": None, "val": None, "rates": []}
    while progress.step < trainer.steps and not stop.signal:
        batch = run.train_sampler.sample(tasks_per_rank, run.generator)
        losses, scores = meta_step(batch, progress.step)
        threads.rebalance(every=1.0)  # a run started or ended beside this one
        if run.scheduler is not None:
            run.scheduler.step()
        tally.add(losses, scores, trainer.meta_batch)
        progress.step += 1
        # Every rank stops at the same step: the first to run out of time decides (one all-reduce, only with a limit).
        out_of_time = bool(trainer.minutes) and distributed.total(torch.tensor(time.monotonic() >= deadline)).item()
        final = progress.step == trainer.steps or out_of_time
        if progress.step % trainer.log_every == 0 or final or stop.signal:
            loss, score = tally.means(progress.step, trainer.meta_batch)
            check_value("training loss", loss, progress.step, run_dir, progress.saved_at)
            last["train"] = {
                "step": progress.step, "split": "train", "loss": loss, run.metric: score,
                "tasks_per_sec": clock.lap(tally.tasks), "elapsed_s": clock.elapsed(), **run.train_sampler.drain(),
            }  # fmt: skip
            write(sinks, last["train"])
            last["rates"].append(last["train"]["tasks_per_sec"])
            bar.update(progress.step, last["train"])
        if progress.step % trainer.val_every == 0 or final:
            with clock.aside():
                last["val"] = validate(cfg, run, progress.step, tasks_per_rank, meta_step.device, clock)
                write(sinks, last["val"])
                keep(cfg, run, progress, last["val"], clock=clock, run_dir=run_dir)
        if out_of_time and progress.step < trainer.steps:
            log.info(
                "trainer.minutes=%s reached at step %d of %d; checkpoints/last.pt holds it. Continue with the same "
                "command plus trainer.resume=auto.", trainer.minutes, progress.step, trainer.steps,
            )  # fmt: skip
            break
    if stop.signal:
        stopped(stop.signal, cfg, run, progress, clock=clock, run_dir=run_dir)
    return last


def keep(cfg: DictConfig, run: Run, progress: Progress, row: dict, *, clock, run_dir: Path) -> None:
    """After a validation: refuse a non-finite one, save best.pt when it is the best so far, and last.pt."""
    for name in ("loss", run.metric):
        check_value(f"validation {name}", row[name], progress.step, run_dir, progress.saved_at)
    log.info("step %d: val loss %.4f, val %s %.4f", progress.step, row["loss"], run.metric, row[run.metric])
    if run.better(row[run.metric], progress.best):
        progress.best = row[run.metric]
        save("best.pt", cfg, run, progress, clock=clock, run_dir=run_dir)
    save("last.pt", cfg, run, progress, clock=clock, run_dir=run_dir)


def save(name: str, cfg: DictConfig, run: Run, progress: Progress, *, clock, run_dir: Path) -> None:
    """Write checkpoints/<name> (on the main rank; every rank's generator state is gathered into it)."""
    check_weights(run.params, progress.step, run_dir, progress.saved_at)
    generators = distributed.gather_generator_states(run.generator)
    if distributed.is_main():
        state = saved_state(
            cfg, params=run.params, optimizer=run.optimizer, scheduler=run.scheduler, step=progress.step,
            best=progress.best, elapsed=clock.elapsed(), generators=generators, metric=run.metric,
        )  # fmt: skip
        checkpoint.save(run_dir / "checkpoints" / name, state)
    if name == "last.pt":
        progress.saved_at = progress.step


def stopped(signum: int, cfg: DictConfig, run: Run, progress: Progress, *, clock, run_dir: Path) -> None:
    """Save the step a signal stopped at (unless saved already) and say how to continue."""
    if progress.saved_at != progress.step:
        save("last.pt", cfg, run, progress, clock=clock, run_dir=run_dir)
    name = signal.Signals(signum).name
    if progress.step == 0:
        raise Interrupted(
            f"Stopped by {name} before the first step; nothing was trained. Run the command again to start."
        )
    raise Interrupted(
        f"Stopped by {name} at step {progress.step}; {run_dir}/checkpoints/last.pt holds this step. Continue "
        f"with the same command plus trainer.resume=auto (or trainer.resume={run_dir})."
    )


def validate(cfg: DictConfig, run: Run, step: int, tasks_per_rank: int, device, clock: Stopwatch) -> dict:
    """The val row: mean query loss and score over the run's fixed validation tasks (the same every time)."""
    generator = task_generator(cfg.seed, "val", device, distributed.rank())
    tasks = distributed.shard(cfg.trainer.val_tasks, "trainer.val_tasks")
    batches = sampled_batches(run.val_sampler, tasks, tasks_per_rank, generator)
    norm = cfg.test.get("norm") or "episode"
    with test_statistics(norm, run.algorithm, run.params, run.train_sampler, statistics_generator(cfg.seed, device)):
        losses, scores = evaluate_batches(run.algorithm, run.params, batches)
    return {
        "step": step,
        "split": "val",
        "loss": distributed.mean(losses),
        run.metric: distributed.mean(scores),
        "tasks_per_sec": None,
        "elapsed_s": clock.elapsed(),
    }


def summary(run: Run, progress: Progress, last: dict, elapsed: float, run_dir: Path):
    metric = run.metric
    return summary_table(
        "metaexp train",
        {
            "algorithm": type(run.algorithm).__name__,
            "steps": progress.step,
            f"train {metric}": last["train"][metric] if last["train"] else "-",
            f"val {metric} (last)": last["val"][metric] if last["val"] else "-",
            f"val {metric} (best)": progress.best if progress.best is not None else "-",
            "tasks/s (median of the logged laps)": statistics.median(last["rates"]) if last["rates"] else "-",
            "wall time (s)": elapsed,
            "run directory": str(run_dir),
        },
    )


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


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
