"""One meta-training step (meta-loss, backward, all-reduce, optimizer step), run eagerly, compiled, or
replayed from a captured CUDA graph; optionally in bfloat16 autocast."""

import contextlib
import logging

import torch

from metaexp import distributed, trpo
from metaexp.errors import MetaexpError
from metaexp.samplers import TaskBatch
from metaexp.threads import SMALL_MODEL

log = logging.getLogger("metaexp.engine")

# The steps a run must have left for `trainer.compile=auto` to compile on a CPU: compiling MAML Conv-4 5-way
# 1-shot cost about 115 s at its first step here, and the step went from 51 to 70 tasks/s end to end.
COMPILE_AFTER = 1000
# And the time: at those rates the compiled run catches up with the eager one after about 7 minutes
# (70 (t - 115) = 51 t), so a run limited to less (trainer.minutes) stays eager.
COMPILE_MINUTES = 10


def check_combination(
    algorithm, optimizer: type, *, device: torch.device, cuda_graph: bool, scheduled: bool, precision: str = "fp32"
) -> None:
    """The one place that says what a meta-step can combine, refusing the rest before anything is built or
    written: a CUDA graph replays one fixed step on a GPU (no schedule of the step or the learning rate, no
    data-dependent line search); TRPO runs in one process on an algorithm that adapts policies."""
    if precision not in ("fp32", "bf16"):
        raise MetaexpError(f"trainer.precision={precision} is not one of fp32, bf16.")
    if issubclass(optimizer, trpo.TRPO):
        if cuda_graph or distributed.world_size() > 1:
            raise MetaexpError(
                "optim=trpo runs a line search whose length depends on the data, which a captured CUDA graph or "
                "several processes cannot follow. Set trainer.cuda_graph=false and run one process, or use "
                "optim=adam."
            )
        trpo.check_fits(algorithm)
    if not cuda_graph:
        return
    if device.type != "cuda":
        raise MetaexpError(
            f"trainer.cuda_graph=true needs a CUDA device; set trainer.cuda_graph=false on {device.type}."
        )
    if algorithm.changes_during_training:
        raise MetaexpError(
            "trainer.cuda_graph=true replays one fixed step, but the MAML++ schedules "
            "(multi_step_loss, first_order_until) change the step as training goes. Turn one of them off."
        )
    if scheduled:
        raise MetaexpError(
            "trainer.cuda_graph=true replays a fixed step and cannot follow a learning-rate "
            "schedule; drop the scheduler or set trainer.cuda_graph=false."
        )


def compile_choice(
    setting, *, steps_left: int, parameters: int, device: torch.device, algorithm, optimizer, minutes=None
) -> tuple:
    """(compile?, why) for trainer.compile: true or false as given; `auto` compiles on a CPU a model of at least
    SMALL_MODEL parameters with at least COMPILE_AFTER steps and, where `minutes` limits the run, at least
    COMPILE_MINUTES left, for an algorithm that declares it gains and an optimizer that takes a plain gradient
    (TRPO's line search is left eager). On a GPU, where its gain is not measured yet, `auto` leaves it to
    trainer.compile=true."""
    if setting != "auto":
        return bool(setting), f"trainer.compile={str(setting).lower()}"
    if device.type != "cpu":
        return False, f"auto: compiling on {device.type} is not measured yet; trainer.compile=true turns it on"
    if isinstance(optimizer, trpo.TRPO) or not algorithm.compiles:
        return False, f"auto: {type(algorithm).__name__} with {type(optimizer).__name__} runs eagerly"
    if parameters < SMALL_MODEL:
        return False, f"auto: a model of {parameters:,} parameters gains nothing from compiling"
    if steps_left < COMPILE_AFTER:
        return False, f"auto: {steps_left} steps left, fewer than the {COMPILE_AFTER} that repay compiling"
    if minutes and minutes < COMPILE_MINUTES:
        return False, f"auto: trainer.minutes={minutes} is less than the {COMPILE_MINUTES} that repay compiling"
    return True, f"auto: {steps_left} steps left repay compiling once"


class MetaStep:
    def __init__(
        self,
        algorithm,
        params: dict,
        optimizer,
        device: torch.device,
        precision: str = "fp32",
        compile: bool = False,
        cuda_graph: bool = False,
        grad_clip: float | None = None,
        task_chunk="auto",
    ):
        check_combination(
            algorithm, type(optimizer), device=device, cuda_graph=cuda_graph, scheduled=False, precision=precision
        )
        # TRPO (optim=trpo) takes closures of the loss and the divergence instead of a gradient.
        self.trust_region = isinstance(optimizer, trpo.TRPO)
        self.algorithm, self.params, self.optimizer, self.device = algorithm, params, optimizer, device
        self.autocast = (
            (lambda: torch.autocast(device.type, dtype=torch.bfloat16))
            if precision == "bf16"
            else contextlib.nullcontext
        )
        self.meta_loss = torch.compile(algorithm.meta_loss) if compile else algorithm.meta_loss
        self.compiled = compile
        self.grad_clip, self.cuda_graph = grad_clip, cuda_graph
        # Compiled, the whole meta-batch is one graph: chunks of 4 would be unrolled (MAML Conv-4's first step
        # then took 503 s to compile here, against 115 s whole).
        self.task_chunk = None if compile and task_chunk == "auto" else task_chunk
        self.eager_chunk = task_chunk
        self.graph = None

    def eager(self, batch: TaskBatch, step: int):
        self.optimizer.zero_grad(set_to_none=True)
        chunk = task_chunk_size(self.task_chunk, self.device, batch)
        if self.trust_region:
            return self.trust_region_step(batch, step, chunk)
        losses, scores = self.backward(batch, step, chunk)
        distributed.average_gradients(self.params.values(), weight=len(batch))
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params.values(), self.grad_clip)
        self.optimizer.step()
        return losses.float(), scores.float()

    def backward(self, batch: TaskBatch, step: int, chunk: int | None):
        """The meta-loss's gradient into the parameters' `.grad`; per-task query losses and scores. Where the
        outer loss is the tasks' mean (`algorithm.separable`), chunk by chunk, each chunk's graph freed before
        the next is built, so memory holds one chunk's (a vmap in chunks keeps every chunk's graph until the
        backward, too much for MetaNet's 20-way tasks at meta-batch 16)."""
        pieces = batch.split(chunk) if chunk and self.algorithm.separable else [batch]
        results = []
        for piece in pieces:
            with self.autocast():
                outer_loss, losses, scores = self.meta_loss(self.params, piece, step, chunk)
            (outer_loss * (len(piece) / len(batch))).backward()
            results.append((losses, scores))
        losses, scores = zip(*results)
        return torch.cat(losses), torch.cat(scores)

    def trust_region_step(self, batch: TaskBatch, step: int, chunk: int | None):
        """TRPO's step; the losses and scores reported are those before it, as for a gradient step."""
        before = []

        def loss():
            with self.autocast():
                outer_loss, losses, scores = self.meta_loss(self.params, batch, step, chunk)
            before.append((losses, scores))
            return outer_loss

        def divergence():
            with self.autocast():
                return trpo.meta_divergence(self.algorithm, self.params, batch, chunk)

        product = trpo.divergence_curvature(self.algorithm, self.params, batch, chunk)
        names = list(self.params)  # the optimizer holds params.values() in this order (loop.build_run)

        def curvature(tangents: list) -> list:
            products = product(dict(zip(names, tangents)))
            return [products.get(name) for name in names]  # None: a weight the policies do not use

        self.optimizer.step(loss, divergence, curvature)
        losses, scores = before[0]
        return losses.float(), scores.float()

    def __call__(self, batch: TaskBatch, step: int):
        """Per-task query losses and scores of this meta-batch, on the device (no host sync)."""
        if self.compiled:
            return self.compiled_step(batch, step)
        if not self.cuda_graph:
            return self.eager(batch, step)
        return self.graph_step(batch, step)

    def graph_step(self, batch: TaskBatch, step: int):
        if self.graph is None:
            self.capture(batch, step)
        for static, fresh in zip(self.static_batch, batch):
            static.copy_(fresh)
        self.graph.replay()
        return self.static_out

    def compiled_step(self, batch: TaskBatch, step: int):
        """A compiled step; where compilation fails, one warning and eager steps from then on (a failed step
        changed nothing: gradients are cleared first and the optimizer steps last)."""
        try:
            return self.eager(batch, step) if not self.cuda_graph else self.graph_step(batch, step)
        except Exception as error:
            if isinstance(error, MetaexpError):
                raise
            first = next(iter(str(error).splitlines()), "")
            log.warning("torch.compile failed (%s: %s); this run goes on eagerly", type(error).__name__, first[:200])
            self.meta_loss, self.compiled, self.graph = self.algorithm.meta_loss, False, None
            self.task_chunk = self.eager_chunk
            return self(batch, step)

    def capture(self, batch: TaskBatch, step: int) -> None:
        """Warm up on a side stream, capture one step, then restore the weights the warm-up changed."""
        saved_params = {k: v.detach().clone() for k, v in self.params.items()}
        saved_optim = {
            p: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
            for p, s in self.optimizer.state.items()
        }
        self.static_batch = TaskBatch(*(t.clone() for t in batch))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            # Three eager steps before capture, as torch's CUDA-graph notes advise: lazy initialisation (cuBLAS
            # handles, the optimizer's state tensors, autograd's buffers) must happen outside the graph.
            for _ in range(3):
                self.eager(self.static_batch, step)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.static_out = self.eager(self.static_batch, step)
        with torch.no_grad():
            for k, v in self.params.items():
                v.copy_(saved_params[k])
            for p, state in self.optimizer.state.items():
                for k, v in state.items():
                    if torch.is_tensor(v):
                        v.copy_(saved_optim[p][k]) if p in saved_optim else v.zero_()


def task_chunk_size(task_chunk, device: torch.device, batch: TaskBatch) -> int | None:
    """Tasks per vmap chunk. `auto`: the whole meta-batch, except on a CPU for tasks whose support set holds over
    1,000 numbers (images, trajectories), where chunks of 4 tasks whose activations fit the cache beat one large
    batch (benchmarks/bench_engine.py measures it on images; on 2D navigation a TRPO step takes 2.7 s in chunks
    of 4 against 3.9 s whole, two threads)."""
    if task_chunk == "auto":
        return 4 if device.type == "cpu" and batch.support_x[0].numel() > 1000 else None
    return task_chunk
