"""torch.distributed helpers for `torchrun ... -m metaexp train`: each rank runs its share of the meta-batch,
meta-gradients are averaged, rank 0 alone writes."""

import os

import torch
import torch.distributed as dist

from metaexp.errors import MetaexpError


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: torch.device) -> None:
    """Join the process group that torchrun (WORLD_SIZE > 1) or a multi-task SLURM job launched by the submitit
    launcher describes in the environment; otherwise do nothing."""
    if "WORLD_SIZE" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def setup(device: torch.device) -> torch.device:
    """Join the process group if launched as one, and return this rank's device."""
    init_from_env(device)
    return local_device(device)


def teardown(exc_type=None, *exc) -> None:
    """Leave the process group (an ExitStack exit callback). Exiting with it still up lets gloo's threads
    abort the process (SIGABRT, "terminate called without an active exception") after a run that otherwise
    finished. The ranks wait for each other only after a clean finish: a rank that failed may never arrive."""
    if dist.is_available() and dist.is_initialized():
        if exc_type is None:
            dist.barrier()
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """This rank's GPU under torchrun, or `device` itself."""
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def average_gradients(params, weight: int = 1) -> None:
    """All-reduce `.grad` across ranks as one flat buffer: the mean of each rank's gradient weighted by
    `weight`, its number of tasks, so that uneven shards (25 tasks on 2 ranks: 13 + 12) give the gradient of
    the mean over all tasks."""
    if world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) * weight for g in grads] + [grads[0].new_tensor([weight])])
    dist.all_reduce(flat)
    flat = flat[:-1] / flat[-1]
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def total(value: torch.Tensor) -> torch.Tensor:
    """Sum of a tensor across ranks."""
    if world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
    return value


def mean(values: torch.Tensor) -> float:
    """Mean of all ranks' values together (ranks may hold different numbers of them)."""
    both = total(torch.stack([values.sum(), torch.tensor(float(values.numel()), dtype=values.dtype)]))
    return (both[0] / both[1]).item()


def shard(count: int, setting: str) -> int:
    """This rank's share of `count` tasks: the first `count % world` ranks take one more."""
    world = world_size()
    if count < world:
        raise MetaexpError(
            f"{setting}={count} gives fewer tasks than the {world} processes; set it to at least {world}."
        )
    return count // world + (rank() < count % world)


def gather_generator_states(generator: torch.Generator) -> list:
    """Every rank's sampling-generator state (index = rank), so a resume continues each rank's tasks."""
    state = generator.get_state()
    if world_size() == 1:
        return [state]
    on = "cuda" if dist.get_backend() == "nccl" else "cpu"
    states = [torch.empty_like(state).to(on) for _ in range(world_size())]
    dist.all_gather(states, state.to(on))
    return [s.cpu() for s in states]
