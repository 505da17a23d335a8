"""MetaNet's fast-weight generators, an LSTM over support chunks and an MLP, applied coordinate-wise: the same
small weights run on every one of the ~150,000 coordinates of the twin networks.

Written as plain tensor ops (gates `[P, 80]`), every gate is a strided slice, on which torch's elementwise CPU
kernels run many times slower than on contiguous memory, and each of the dozens of elementwise steps streams
tens of megabytes that autograd then keeps for the backward: the generators were most of a MetaNet step. Here
coordinates come last (each gate a contiguous block), both generators run over blocks of coordinates small
enough to stay in cache, and the backward recomputes a block's forward and back-propagates it at once, so
nothing per coordinate is kept between the two passes; what is left is the matrix products' arithmetic. Both
are `torch.autograd.Function`s (`Coordinatewise`) whose vmap rule stacks the tasks' coordinates, so under the
vmap over tasks they run once on plain matrices; tests/test_metanet.py checks them against autograd on the
plain ops in float64.
"""

from collections import deque

import torch

HIDDEN = 20
# Coordinates per block: a block's LSTM states over five chunks (~2 MB in float32) stay in a core's cache.
BLOCK = 2048


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


def lstm_states(sequence, weights):
    """Each step's (z, i, f, g, o, previous c, tanh c) of an LSTM on `sequence` `[T, 3, n]` (two features and a
    row of ones) from h = c = 0, where z = (h, x, 1) is what `weights` = (W_hh, W_ih, b) multiplies: one matrix
    product per step. States are `[20, n]`, coordinates last, so that each gate is a contiguous block (torch's
    elementwise kernels are many times slower on strided slices); tanh is 2 sigmoid(2x) - 1 (several times
    faster than torch.tanh here), and g's rows of `weights` come doubled, so one sigmoid gives all four gates
    (torch's order i, f, g, o). A generator, so that a forward that keeps only the last step reuses the memory
    (still in cache) of the steps before."""
    h = c = sequence.new_zeros(HIDDEN, sequence.shape[-1])
    for x in sequence:
        z = torch.cat([h, x])
        i, f, g, o = torch.sigmoid(weights @ z).chunk(4)
        g = 2 * g - 1
        c_new = torch.addcmul(i * g, f, c)
        tanh_c = 2 * torch.sigmoid(2 * c_new) - 1
        yield z, i, f, g, o, c, tanh_c
        h, c = o * tanh_c, c_new


def lstm_inputs(sequence, w_ih, w_hh, b) -> tuple:
    """(`sequence` `[T, P, 2]` as `[T, 3, P]` with a row of ones, the weights (W_hh, W_ih, b) `[80, 23]`, the
    same with g's rows doubled for lstm_states)."""
    ones = sequence.new_ones(sequence.shape[:-1])[..., None]
    rows = torch.cat([sequence, ones], -1).transpose(1, 2).contiguous()
    weights = torch.cat([w_hh, w_ih, b[:, None]], 1)
    scale = torch.ones(4 * HIDDEN, 1, dtype=b.dtype, device=b.device)
    scale[2 * HIDDEN : 3 * HIDDEN] = 2
    return rows, weights, weights * scale


class CoordinateLSTM(Coordinatewise):
    """`lstm(sequence [T, P, 2], w_ih [80, 2], w_hh [80, 20], b [80], w_out [1, 20], b_out [1]) -> [P]`: the
    LSTM's last hidden state through the output layer, for each coordinate."""

    coordinates = 1

    @staticmethod
    def forward(sequence, w_ih, w_hh, b, w_out, b_out):
        rows, _, doubled = lstm_inputs(sequence, w_ih, w_hh, b)
        outputs = []
        for (block,) in blocks((rows, 2)):
            *_, o, _, tanh_c = deque(lstm_states(block, doubled), maxlen=1).pop()  # holds one step at a time
            outputs.append((w_out @ (o * tanh_c))[0] + b_out)
        return torch.cat(outputs)

    @staticmethod
    def backward(ctx, grad_output):
        sequence, w_ih, w_hh, b, w_out, b_out = ctx.saved_tensors
        rows, weights, doubled = lstm_inputs(sequence, w_ih, w_hh, b)
        grad_weights, grad_out, grad_rows = [], [], []
        for block, grad in blocks((rows, 2), (grad_output, 0)):
            states = list(lstm_states(block, doubled))
            _, _, _, _, o, _, tanh_c = states[-1]
            grad_out.append(grad[None] @ (o * tanh_c).T)
            dh, dc, grad_x = w_out.T * grad, 0, []
            for z, i, f, g, o, c, tanh_c in reversed(states):
                dc = dc + dh * o * (1 - tanh_c * tanh_c)
                # The gates' pre-activations, g's undoubled (d tanh(x) = 1 - tanh(x)^2).
                dpre = torch.cat([dc * g * i * (1 - i), dc * c * f * (1 - f), dc * i * (1 - g * g),
                                  dh * tanh_c * o * (1 - o)])  # fmt: skip
                grad_weights.append(dpre @ z.T)
                dz = weights.T @ dpre  # (dh, dx, d1) of the step before
                dh, dc = dz[:HIDDEN], dc * f
                grad_x.append(dz[HIDDEN : HIDDEN + 2])
            if ctx.needs_input_grad[0]:  # meta information is a constant: usually not
                grad_rows.append(torch.stack(grad_x[::-1]))
        grad_w = sum(grad_weights)  # (W_hh, W_ih, b) columns
        grad_sequence = torch.cat(grad_rows, 2).transpose(1, 2) if grad_rows else None
        grad_b_out = grad_output.sum(0, keepdim=True)
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
        layers = mlp_layers(*weights)
        return torch.cat([(layers[2] @ mlp_states(x, layers)[2])[0] for (x,) in blocks((features.T.contiguous(), 1))])

    @staticmethod
    def backward(ctx, grad_output):
        features, w0, _, w1, _, w2, _ = weights = ctx.saved_tensors
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
