"""MetaNet's fast-weight generators, an LSTM over support chunks and an MLP, applied coordinate-wise: the same
small weights run on every one of the ~150,000 coordinates of the twin networks.

Written as plain tensor ops (gates `[P, 80]`), every gate is a strided slice, on which torch's elementwise CPU
kernels run many times slower than on contiguous memory, and each of the dozens of elementwise steps streams
tens of megabytes that autograd then keeps for the backward: the generators were most of a MetaNet step. Here
coordinates come last (each gate a contiguous block), both generators run over blocks of a few thousand
coordinates, and the backward recomputes a block's forward and back-propagates it at once, so
nothing per coordinate is kept between the two passes; what is left is the matrix products' arithmetic. Both
are `torch.autograd.Function`s (`Coordinatewise`) whose vmap rule stacks the tasks' coordinates, so under the
vmap over tasks they run once on plain matrices; tests/test_metanet.py checks them against autograd on the
plain ops in float64.

On a CPU with a C compiler both run as the fused loops of coordinatewise.c instead, compiled on first use into the
user's cache: a coordinate's states stay in registers through all of its steps, a few times faster again than
the blocked ops (benchmarks/bench_metanet.py prints which ran). The blocked ops remain what accelerators and
machines without a compiler run; tests/test_metanet.py holds both to autograd.
"""

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from collections import deque
from pathlib import Path

import torch

from metaexp.files import user_cache

HIDDEN = 20
# Coordinates per block: small enough that a block's states stay near the core, large enough that each of the
# thousands of small ops a step issues carries work for two threads (2,048 was as fast at one thread, slower at two).
BLOCK = 8192


def blocks(*tensors_and_dims):
    """Aligned slices of the (tensor, coordinate dimension) pairs, BLOCK coordinates at a time on the CPU; one
    block on an accelerator, whose cost is the number of kernels launched rather than cache misses."""
    first, dim = tensors_and_dims[0]
    size = first.shape[dim]
    step = BLOCK if first.device.type == "cpu" else size
    for start in range(0, size, step):
        yield [t.narrow(dim, start, min(step, size - start)) for t, dim in tensors_and_dims]


class Coordinatewise(torch.autograd.Function):
    """What both generators share: their inputs saved for a backward that recomputes, and a vmap rule that
    stacks the tasks' coordinates along dimension `coordinates` of the first input, one call on all of them (so
    the kernels see plain matrices, not batches of them); per-task generator weights, a vmap over the
    generators themselves, take one call per task."""

    coordinates: int

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @classmethod
    def vmap(cls, info, in_dims, inputs, *weights):
        if any(dim is not None for dim in in_dims[1:]):
            picked = [[x if dim is None else x.select(dim, k) for x, dim in zip((inputs, *weights), in_dims)]
                      for k in range(info.batch_size)]  # fmt: skip
            return torch.stack([cls.apply(*args) for args in picked]), 0
        if in_dims[0] is None:
            return cls.apply(inputs, *weights), None
        stacked = inputs.movedim(in_dims[0], cls.coordinates).flatten(cls.coordinates, cls.coordinates + 1)
        return cls.apply(stacked, *weights).view(info.batch_size, -1), 0


SOURCE = Path(__file__).with_suffix(".c")
FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp", "-shared", "-fPIC")
REALS = {torch.float32: ("float", ctypes.c_float), torch.float64: ("double", ctypes.c_double)}
log = logging.getLogger(__name__)


@functools.cache
def native(dtype: torch.dtype):
    """coordinatewise.c built for `dtype` and loaded, or None where it cannot be: the blocked torch ops run then,
    for a dtype other than float32 and float64 silently, without a compiler or after a failed build after one
    warning. Built once per machine, into the user's cache: the library's name hashes the source, the compiler
    command and the CPU it was built for."""
    compiler = os.environ.get("CC") or shutil.which("cc")
    if dtype not in REALS:
        return None
    if compiler is None:
        log.warning("MetaNet's generators run as torch ops (slower): no C compiler (cc) on PATH; install gcc or set CC")
        return None
    real, scalar = REALS[dtype]
    command = [compiler, *FLAGS, f"-Dreal={real}", str(SOURCE), "-lm"]
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(command[:-2]).encode() + cpu_signature())
    library = user_cache() / "kernels" / f"coordinatewise-{real}-{digest.hexdigest()[:16]}.so"
    try:
        if not library.exists():
            build(command, library)
        kernels = ctypes.CDLL(str(library))
    except (OSError, subprocess.CalledProcessError) as error:
        reason = error
        if isinstance(error, subprocess.CalledProcessError):
            reason = error.stderr.strip() or f"{error.cmd[0]} exited with status {error.returncode}"
        log.warning("MetaNet's generators run as torch ops (slower): building %s failed: %s", SOURCE.name, reason)
        return None
    pointer, size, count = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    kernels.lstm_forward.argtypes = [size, count, *[pointer] * 3, scalar, pointer, count]
    kernels.lstm_backward.argtypes = [size, count, *[pointer] * 6, count]
    kernels.mlp_forward.argtypes = [size, *[pointer] * 6, scalar, pointer, count]
    kernels.mlp_backward.argtypes = [size, *[pointer] * 9, count]
    return kernels


def build(command: list, library: Path) -> None:
    """`command -o library`, written beside it under a unique name and renamed, so that two processes building
    at once both end with a whole library."""
    library.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=library.parent, suffix=".so")
    os.close(fd)
    try:
        subprocess.run([*command, "-o", partial], capture_output=True, text=True, check=True)
        os.replace(partial, library)
    finally:
        Path(partial).unlink(missing_ok=True)


def cpu_signature() -> bytes:
    """What -march=native compiled for: the CPU's model and flags (Linux), else the platform's name."""
    try:
        lines = Path("/proc/cpuinfo").read_bytes().split(b"\n\n")[0].splitlines()  # the first core's
    except OSError:
        return platform.processor().encode()
    return b"".join(line for line in lines if line.startswith((b"model name", b"flags")))


def compiled(x: torch.Tensor):
    """The compiled kernels for `x`'s dtype where `x` lives on the CPU."""
    return native(x.dtype) if x.device.type == "cpu" else None


def run(kernel, *args, threads: int | None = None) -> None:
    """A compiled kernel on `args` (tensors contiguous, as the C code reads them) and `threads` (torch's count
    unless given; a backward gives its rows of partial gradients, which the count may not exceed): tensors go by
    address, None as NULL, numbers as they are."""
    kernel(*(x.data_ptr() if isinstance(x, torch.Tensor) else x for x in args), threads or torch.get_num_threads())


def packed(sequence, w_ih, w_hh, b) -> tuple:
    """The compiled LSTM's inputs: `sequence` `[T, P, 2]` as `[T, 2, P]`, and (W_hh, W_ih, b) as one `[80, 23]`."""
    return sequence.transpose(1, 2).contiguous(), torch.cat([w_hh, w_ih, b[:, None]], 1)


def g_last(rows):
    """Rows in torch's gate order (i, f, g, o) as (i, f, o, g), and back: the three sigmoid gates one
    contiguous block, the tanh gate another."""
    i, f, g, o = rows.chunk(4)
    return torch.cat([i, f, o, g])


def tanh(x):
    """tanh as 2 sigmoid(2x) - 1: torch's CPU tanh kernel is several times slower per element than its sigmoid, and
    the LSTM takes two tanh of every coordinate at every step. Exact in real arithmetic; in float32 within a few
    units in the last place (2e-7 absolute at most, torch's tanh 6e-8)."""
    return torch.mul(x, 2).sigmoid_().mul_(2).sub_(1)


def lstm_states(rows, weights):
    """Each step's (z, i, f, g, o, previous c, tanh c) of an LSTM on `rows` `[T, 3, n]` (two features and a row
    of ones) from h = c = 0, where z = (h, x, 1) is what `weights` = (W_hh, W_ih, b), gates (i, f, o, g),
    multiplies: one matrix product per step, each step's h written into the next step's z. States are `[20, n]`,
    coordinates last, so that each gate is a contiguous block (torch's elementwise kernels are many times slower
    on strided slices). A generator, so that a forward that keeps only the last step holds one step at a time."""
    steps, _, n = rows.shape
    z = rows.new_empty(steps, HIDDEN + 3, n)
    z[0, :HIDDEN] = 0
    z[:, HIDDEN:] = rows
    doubled = torch.cat([weights[: 3 * HIDDEN], 2 * weights[3 * HIDDEN :]])  # g's rows: tanh(a) = 2 sigmoid(2a) - 1
    c = 0
    for t in range(steps):
        # At the first step h = c = 0: only the input columns multiply anything.
        pre = doubled[:, HIDDEN:] @ z[0, HIDDEN:] if t == 0 else doubled @ z[t]
        i, f, o, g = pre.sigmoid_().chunk(4)
        g.mul_(2).sub_(1)
        c_new = i * g if t == 0 else torch.addcmul(i * g, f, c)
        tanh_c = tanh(c_new)
        yield z[t], i, f, g, o, c, tanh_c
        if t + 1 < steps:
            torch.mul(o, tanh_c, out=z[t + 1, :HIDDEN])
        c = c_new


def lstm_inputs(sequence, w_ih, w_hh, b) -> tuple:
    """(`sequence` `[T, P, 2]` as `[T, 3, P]` with a row of ones, the weights (W_hh, W_ih, b) `[80, 23]` in the
    gate order of lstm_states)."""
    ones = sequence.new_ones(sequence.shape[:-1])[..., None]
    rows = torch.cat([sequence, ones], -1).transpose(1, 2).contiguous()
    return rows, g_last(torch.cat([w_hh, w_ih, b[:, None]], 1))


class CoordinateLSTM(Coordinatewise):
    """`lstm(sequence [T, P, 2], w_ih [80, 2], w_hh [80, 20], b [80], w_out [1, 20], b_out [1]) -> [P]`: the
    LSTM's last hidden state through the output layer, for each coordinate."""

    coordinates = 1

    @staticmethod
    def forward(sequence, w_ih, w_hh, b, w_out, b_out):
        if kernels := compiled(sequence):
            (x, weights), y = packed(sequence, w_ih, w_hh, b), sequence.new_empty(sequence.shape[1])
            run(kernels.lstm_forward, len(y), len(x), x, weights, w_out.contiguous(), b_out.item(), y)
            return y
        rows, weights = lstm_inputs(sequence, w_ih, w_hh, b)
        outputs = []
        for (block,) in blocks((rows, 2)):
            *_, o, _, tanh_c = deque(lstm_states(block, weights), maxlen=1).pop()  # holds one step at a time
            outputs.append((w_out @ (o * tanh_c))[0] + b_out)
        return torch.cat(outputs)

    @staticmethod
    def backward(ctx, grad_output):
        sequence, w_ih, w_hh, b, w_out, b_out = ctx.saved_tensors
        grad_b_out = grad_output.sum(0, keepdim=True)
        if kernels := compiled(sequence):
            x, weights = packed(sequence, w_ih, w_hh, b)
            partial = x.new_zeros(torch.get_num_threads(), weights.numel() + HIDDEN)
            grad_x = torch.empty_like(x) if ctx.needs_input_grad[0] else None
            gradients = (w_out.contiguous(), grad_output.contiguous(), partial, grad_x)
            run(kernels.lstm_backward, x.shape[-1], len(x), x, weights, *gradients, threads=len(partial))
            grad_w, grad_w_out = partial.sum(0).split([weights.numel(), HIDDEN])
            grad_w, grad_sequence = grad_w.view_as(weights), None if grad_x is None else grad_x.transpose(1, 2)
            return grad_sequence, grad_w[:, HIDDEN:-1], grad_w[:, :HIDDEN], grad_w[:, -1], grad_w_out[None], grad_b_out
        rows, weights = lstm_inputs(sequence, w_ih, w_hh, b)
        grad_weights, grad_out, grad_rows = [], [], []
        for block, grad in blocks((rows, 2), (grad_output, 0)):
            states = list(lstm_states(block, weights))
            _, _, _, _, o, _, tanh_c = states[-1]
            grad_out.append(grad[None] @ (o * tanh_c).T)
            dh, dc, grad_x = w_out.T * grad, 0, []
            dpre = rows.new_empty(4 * HIDDEN, block.shape[-1])
            di, df, do, dg = dpre.chunk(4)  # the gates' pre-activations, in lstm_states' order
            for z, i, f, g, o, c, tanh_c in reversed(states):
                # Written into dpre's rows (no concatenation); d sigmoid = s - s^2, d tanh = 1 - tanh^2.
                torch.mul(dh, tanh_c, out=do).mul_(torch.addcmul(o, o, o, value=-1))
                dc = dc + dh * o * (1 - tanh_c * tanh_c)
                torch.mul(dc, i, out=dg).mul_(1 - g * g)
                torch.mul(dc, g, out=di).mul_(torch.addcmul(i, i, i, value=-1))
                torch.mul(dc, c, out=df).mul_(torch.addcmul(f, f, f, value=-1))
                grad_weights.append(dpre @ z.T)
                dz = weights.T @ dpre  # (dh, dx, d1) of the step before
                dh, dc = dz[:HIDDEN], dc * f
                grad_x.append(dz[HIDDEN : HIDDEN + 2])
            if ctx.needs_input_grad[0]:  # meta information is a constant: usually not
                grad_rows.append(torch.stack(grad_x[::-1]))
        grad_w = g_last(sum(grad_weights))  # (W_hh, W_ih, b) columns, torch's gate order
        grad_sequence = torch.cat(grad_rows, 2).transpose(1, 2) if grad_rows else None
        return grad_sequence, grad_w[:, HIDDEN:-1], grad_w[:, :HIDDEN], grad_w[:, -1], sum(grad_out), grad_b_out


def with_ones(rows):
    """`rows` `[k, n]` with a row of ones below: what (W, b) multiplies as one matrix."""
    return torch.cat([rows, rows.new_ones(1, rows.shape[-1])])


def mlp_layers(w0, b0, w1, b1, w2, b2) -> list:
    """Each layer's (W, b) as one matrix `[out, in + 1]`."""
    return [torch.cat([w, b[:, None]], 1) for w, b in ((w0, b0), (w1, b1), (w2, b2))]


def mlp_states(x, layers) -> tuple:
    """The inputs (with their row of ones) of the MLP's three layers on `x` `[2, n]`."""
    z0 = with_ones(x)
    z1 = with_ones(torch.relu(layers[0] @ z0))
    return z0, z1, with_ones(torch.relu(layers[1] @ z1))


class CoordinateMLP(Coordinatewise):
    """`mlp(features [n, 2], w0 [20, 2], b0, w1 [20, 20], b1, w2 [1, 20], b2) -> [n]`: ReLU MLP 2->20->20->1 on each
    row, computed with coordinates last and each layer's bias a column of its weights."""

    coordinates = 0

    @staticmethod
    def forward(features, *weights):
        if kernels := compiled(features):
            *layers, b2 = (w.contiguous() for w in weights)
            y = features.new_empty(len(features))
            run(kernels.mlp_forward, len(y), features.contiguous(), *layers, b2.item(), y)
            return y
        layers = mlp_layers(*weights)
        return torch.cat([(layers[2] @ mlp_states(x, layers)[2])[0] for (x,) in blocks((features.T.contiguous(), 1))])

    @staticmethod
    def backward(ctx, grad_output):
        features, w0, _, w1, _, w2, _ = weights = ctx.saved_tensors
        if kernels := compiled(features):
            layers = [w.contiguous() for w in weights[1:-1]]  # w0, b0, w1, b1, w2
            partial = features.new_zeros(torch.get_num_threads(), sum(w.numel() for w in layers))
            grad_x = features.new_empty(features.shape) if ctx.needs_input_grad[0] else None
            run(kernels.mlp_backward, len(features), features.contiguous(), *layers, grad_output.contiguous(),
                partial, grad_x, threads=len(partial))  # fmt: skip
            grads = partial.sum(0).split([w.numel() for w in layers])
            return grad_x, *(g.view_as(w) for g, w in zip(grads, layers)), grad_output.sum(0, keepdim=True)
        terms, grad_features, layers = [], [], mlp_layers(*weights[1:])
        for x, grad in blocks((features.T.contiguous(), 1), (grad_output, 0)):
            z0, z1, z2 = mlp_states(x, layers)
            # ReLU's derivative is the sign of its output (0 or 1); far faster here than a boolean mask.
            d1 = (w2.T * grad) * torch.sign(z2[:-1])
            d0 = (w1.T @ d1) * torch.sign(z1[:-1])
            terms.append((d0 @ z0.T, d1 @ z1.T, grad[None] @ z2.T))
            if ctx.needs_input_grad[0]:  # meta information is a constant: usually not
                grad_features.append(w0.T @ d0)
        grads = [sum(values) for values in zip(*terms)]  # each layer's (W, b) as one matrix
        grad_input = torch.cat(grad_features, 1).T if grad_features else None
        return grad_input, *(part for g in grads for part in (g[:, :-1], g[:, -1]))
