"""The meta-training loop: sample tasks -> meta-step -> log -> validate -> checkpoint."""
import json
import logging
import os
import signal
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from metaexp import checkpoint, distributed
from metaexp.build import build, build_algorithm, build_sampler, resolve_device
from metaexp.engine import MetaStep
from metaexp.errors import MetaexpError
from metaexp.evaluate import evaluate_batches, sampled_batches
from metaexp.tasks import task_generator
from metaexp.logs import MetricsFile, Stopwatch, TrainingProgress, console, read_metrics, summary_table

log = logging.getLogger("metaexp.train")


class StopRequest:
    """Turns the first SIGINT/SIGTERM into a flag the loop checks after each step; a second one aborts."""

    def __init__(self):
        self.signal = None

    def __enter__(self):
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def handle(self, signum, frame):
        self.signal = signum
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)


class Interrupted(MetaexpError):
    """Training stopped on a signal after saving last.pt."""


def train(cfg: DictConfig) -> float:
    """Meta-train as `cfg` says, in the current Hydra run directory; returns the best validation metric."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    device = resolve_device(cfg.trainer.device)
    distributed.init_from_env(device)
    device = distributed.local_device(device)
    if not distributed.is_main():
        root = logging.getLogger()
        root.handlers = [h for h in root.handlers if not isinstance(h, logging.FileHandler)]
    torch.manual_seed(cfg.seed)
    dtype = torch.float32

    dataset = build(cfg.dataset, "dataset")
    train_tasks = build_sampler(cfg, dataset, "train", device)
    val_tasks = build_sampler(cfg, dataset, "val", device)
    algorithm = build_algorithm(cfg, train_tasks)
    metric, higher_is_better = train_tasks.objective.metric, train_tasks.objective.higher_is_better
    params = {k: v.to(device, dtype).requires_grad_() for k, v in algorithm.init_params().items()}
    extra = {"capturable": True} if cfg.trainer.cuda_graph else {}
    optimizer = build(cfg.optim, "optimizer", params=list(params.values()), **extra)
    scheduler = build(cfg.scheduler, "scheduler", optimizer=optimizer) if cfg.get("scheduler") else None
    if scheduler is not None and cfg.trainer.cuda_graph:
        raise MetaexpError("trainer.cuda_graph=true replays a fixed step and cannot follow a learning-rate "
                           "schedule; drop the scheduler or set trainer.cuda_graph=false.")
    generator = task_generator(cfg.seed, "train", device, distributed.rank())
    meta_batch = shard(cfg.trainer.meta_batch)

    step, best, elapsed = 0, None, 0.0
    resume_from = checkpoint.find_resume(cfg, run_dir, Path(cfg.paths.output_dir))
    if resume_from is not None:
        step, best, elapsed = restore(checkpoint.load(resume_from), params, optimizer, scheduler, generator)
        carry_metrics(resume_from, run_dir, step)
        log.info("resumed from %s at step %d", resume_from, step)

    def ensure_finite(loss: float) -> None:
        if not (torch.isfinite(torch.tensor(loss)) and all_finite(params)):
            raise MetaexpError(
                f"The training loss became {loss} by step {step}; the weights are no longer finite, so they "
                f"were not saved and the checkpoints in {run_dir / 'checkpoints'} keep the last good state. "
                f"Lower optim.lr or the inner learning rate, or set trainer.grad_clip, then resume from them.")

    def save(name: str) -> None:
        ensure_finite(0.0)
        generator_states = gather_generator_states(generator)
        if distributed.is_main():
            checkpoint.save(run_dir / "checkpoints" / name, {
                "params": {k: v.detach().cpu() for k, v in params.items()},
                "optimizer": optimizer.state_dict(), "step": step,
                "scheduler": scheduler.state_dict() if scheduler is not None else None, "best": best,
                "elapsed_s": clock.elapsed(), "generator": generator_states, "metric": metric,
                "config": OmegaConf.to_container(cfg, resolve=False)})

    log.info("run directory %s; %s on %s, %d parameters", run_dir, type(algorithm).__name__, device,
             sum(v.numel() for v in params.values()))
    if distributed.is_main():
        (run_dir / "machine.json").write_text(json.dumps(describe_machine(device)) + "\n")
    meta_step = MetaStep(algorithm, params, optimizer, device, cfg.trainer.precision, cfg.trainer.compile,
                         cfg.trainer.cuda_graph, cfg.trainer.grad_clip, cfg.trainer.task_chunk)
    metrics = [MetricsFile(run_dir), *([build(cfg.logger, "logger")] if cfg.get("logger") else [])] \
        if distributed.is_main() else []
    clock = Stopwatch(elapsed)
    loss_sum = torch.zeros((), device=device)
    score_sum = torch.zeros((), device=device)
    done_tasks, logged_at = 0, step
    last_row, last_val = None, None
    with StopRequest() as stop, TrainingProgress(cfg.trainer.steps, step, metric,
                                                  enabled=distributed.is_main()) as progress:
        while step < cfg.trainer.steps:
            batch = train_tasks.sample(meta_batch, generator).to(dtype=dtype)
            losses, scores = meta_step(batch, step)
            if scheduler is not None:
                scheduler.step()
            loss_sum += losses.sum()
            score_sum += scores.sum()
            step += 1
            done_tasks += cfg.trainer.meta_batch
            final = step == cfg.trainer.steps
            if step % cfg.trainer.log_every == 0 or final or stop.signal:
                n = (step - logged_at) * cfg.trainer.meta_batch
                loss_mean = distributed.average(loss_sum).item() / (n / distributed.world_size())
                score_mean = distributed.average(score_sum).item() / (n / distributed.world_size())
                ensure_finite(loss_mean)
                last_row = {"step": step, "split": "train", "loss": loss_mean, metric: score_mean,
                            "tasks_per_sec": clock.lap(done_tasks), "elapsed_s": clock.elapsed()}
                write(metrics, last_row)
                progress.update(step, last_row)
                loss_sum.zero_()
                score_sum.zero_()
                logged_at = step
            if step % cfg.trainer.val_every == 0 or final:
                val_loss, val_score = validate(algorithm, params, val_tasks, cfg, device, meta_batch, dtype)
                last_val = {"step": step, "split": "val", "loss": val_loss, metric: val_score,
                            "tasks_per_sec": None, "elapsed_s": clock.elapsed()}
                write(metrics, last_val)
                log.info("step %d: val loss %.4f, val %s %.4f", step, last_val["loss"], metric, last_val[metric])
                value = last_val[metric]
                if best is None or (value > best if higher_is_better else value < best):
                    best = value
                    save("best.pt")
                save("last.pt")
            if stop.signal:
                save("last.pt")
                raise Interrupted(
                    f"Stopped by {signal.Signals(stop.signal).name} at step {step}; {run_dir}/checkpoints/last.pt "
                    f"holds this step. Continue with the same command plus trainer.resume=auto (or "
                    f"trainer.resume={run_dir}).")
    for sink in metrics:
        sink.close()
    if distributed.is_main():
        console.print(summary_table("metaexp train", {
            "algorithm": type(algorithm).__name__, "steps": step,
            f"train {metric}": last_row[metric] if last_row else "-",
            f"val {metric} (last)": last_val[metric] if last_val else "-", f"val {metric} (best)": best,
            "tasks/s": done_tasks / max(clock.elapsed() - elapsed, 1e-9), "wall time (s)": clock.elapsed(),
            "run directory": str(run_dir)}))
    return best


def restore(state: dict, params: dict, optimizer, scheduler, generator) -> tuple:
    """Load a checkpoint's weights, optimizer, scheduler and this rank's generator; (step, best, elapsed)."""
    with torch.no_grad():
        for k, v in params.items():
            v.copy_(state["params"][k])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"][distributed.rank()])
    return state["step"], state["best"], state["elapsed_s"]


def validate(algorithm, params: dict, val_tasks, cfg: DictConfig, device, meta_batch: int, dtype) -> tuple:
    """Mean query loss and score over the run's fixed validation tasks (the same tasks at every validation)."""
    generator = task_generator(cfg.seed, "val", device, distributed.rank())
    losses, scores = evaluate_batches(
        algorithm, params, sampled_batches(val_tasks, shard(cfg.trainer.val_tasks), meta_batch, generator), dtype)
    return distributed.average(losses.mean()).item(), distributed.average(scores.mean()).item()


def describe_machine(device: torch.device) -> dict:
    """What ran this: the device (GPU card or CPU cores), process count and torch version."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
    return {"device": name, "processes": distributed.world_size(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def shard(count: int) -> int:
    """This rank's share of `count` tasks."""
    world = distributed.world_size()
    if count % world:
        raise MetaexpError(f"{count} tasks cannot be split evenly over {world} processes; make "
                           f"trainer.meta_batch and trainer.val_tasks multiples of the process count.")
    return count // world


def write(sinks: list, row: dict) -> None:
    for sink in sinks:
        sink.write(row)


def all_finite(params: dict) -> bool:
    return all(torch.isfinite(v).all() for v in params.values())


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


def carry_metrics(resume_from: Path, run_dir: Path, step: int) -> None:
    """Start this run's metrics.jsonl with the resumed run's rows up to `step`; later rows are redone."""
    source = resume_from.parent.parent / "metrics.jsonl"
    if distributed.is_main():
        rows = [r for r in read_metrics(source) if r["step"] <= step] if source.is_file() else []
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
