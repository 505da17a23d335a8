"""Meta Networks (Munkhdalai & Yu 2017), after the authors' MetaNetFull.py: a base learner b (slow weights W)
and an embedding network u (slow weights Q) of the same shape, each layer augmented with fast weights,
`relu(W h) + relu(W* h)` (the head sums its two linear outputs).

- Meta information is a loss gradient, one scalar per weight, preprocessed into two features (`gradient_features`);
  it is a constant for the outer update (no second-order term).
- Task-level fast weights Q*: u's own cross-entropy on the support set, in `chunks` chunks, its gradient w.r.t. Q
  fed coordinate-wise through an LSTM(2->20) + Linear(20->1) over the chunks; the last output is Q*.
- Example-level fast weights: for each support example, the gradient of b's loss on it w.r.t. W through a
  coordinate-wise MLP 2->20->20->1: the memory values M. Memory keys: u's fc1 pre-activation, `Q h + Q* h`.
- A query reads W* = M^T softmax(cosine(key, support keys)) and is classified by b with (W, W*).
- Ablations: `task_fast_weights=False` (the paper's MetaNet-: keys from Q alone); `example_fast_weights=False`
  (every query reads the memory's mean, so b's fast weights are task-level and u is unused);
  `augmentation="weight"` (relu((W + W*) h) in place of the layer augmentation relu(W h) + relu(W* h)).
Conv and fc coordinates have separate LSTMs and MLPs, run by `coordinatewise` in blocks of coordinates (most of a
step's arithmetic is theirs). Everything per task is batched (per-example gradients by vmap of grad, every
query's fast weights by one einsum, the queries' forwards by vmap), and the base class vmaps the task over the
meta-batch like every other algorithm.
"""

import copy
import math

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from metaexp.algorithms.base import Algorithm
from metaexp.algorithms.coordinatewise import CoordinateLSTM, CoordinateMLP
from metaexp.backbones import with_prefix
from metaexp.backbones.metanet_conv import MetaNetConv
from metaexp.errors import MetaexpError
from metaexp.schema import at_least, one_of

HIDDEN = 20
KINDS = ("conv", "fc")


def gradient_features(g: torch.Tensor) -> torch.Tensor:
    """`[..., 2]` features of gradient values: (max(log(|g| + eps) / 7, -1), clamp(g * e^7, -1, 1)), eps the float32
    machine epsilon (Andrychowicz et al. 2016's preprocessing with p = 7, as MetaNet uses it)."""
    eps = torch.finfo(torch.float32).eps
    return torch.stack([(torch.log(g.abs() + eps) / 7).clamp_min(-1.0), (g * math.exp(7)).clamp(-1.0, 1.0)], -1)


def kind(name: str) -> str:
    return "conv" if name.startswith("convs.") else "fc"


class MetaNet(Algorithm):
    classification_only = True

    training_norm = False

    def __init__(
        self,
        model,
        objective,
        chunks: int = 5,
        init: str = "lecun",
        task_fast_weights: bool = True,
        example_fast_weights: bool = True,
        augmentation: str = "layer",
    ):
        super().__init__(model, objective)
        if not isinstance(model, MetaNetConv):
            raise MetaexpError(
                f"metanet augments the layers of its twin networks with fast weights and needs their shape "
                f"(conv layers, fc1, head without biases, the names of the augmented weights), which "
                f"{type(model).__name__} does not have. Use backbone=metanet_conv."
            )
        at_least("algorithm.chunks", chunks, 1, whole=True)
        one_of("algorithm.init", init, ("lecun", "torch"))
        one_of("algorithm.augmentation", augmentation, ("layer", "weight"))
        self.chunks, self.init, self.task_level = chunks, init, task_fast_weights
        self.example_level, self.add_weights = example_fast_weights, augmentation == "weight"
        self.layers, self.augmented = len(model.convs), set(model.augmented)

    def check_sampler(self, sampler) -> None:
        super().check_sampler(sampler)
        support = sampler.ways * sampler.shots
        if support % self.chunks:
            raise MetaexpError(
                f"algorithm.chunks={self.chunks} does not divide the {support} support examples of a "
                f"{sampler.ways}-way {sampler.shots}-shot task; pick a divisor of {support} (the paper: one chunk "
                f"per class, algorithm.chunks={sampler.ways})."
            )

    def init_params(self) -> dict:
        """b's weights (`base.`), u's (`embed.`, a twin drawn afresh) and the generators (`meta.`), drawn as `init`
        says.

        `lecun` is the authors' Chainer v1 defaults: every weight normal with std sqrt(1 / fan_in), biases and the
        forget bias zero. `torch` is torch's defaults with each generator's output bias set so that a zero
        gradient gives a zero fast weight (metaexp's earlier choice, kept as an ablation). They differ most in
        scale: a bias-free ReLU layer keeps half the second moment of its input under LeCun's std and a sixth
        under torch's uniform bound 1/sqrt(fan_in), so after six such layers torch's twins start with logits
        near zero and loss gradients, the meta information, near zero too."""
        if self.init == "lecun":
            return self.lecun_params()
        twin = copy.deepcopy(self.model)
        for module in [*twin.convs, twin.fc1, twin.head]:  # batch norm starts at scale one, shift zero anyway
            module.reset_parameters()
        params = {f"base.{k}": p.detach().clone() for k, p in self.model.named_parameters()}
        params.update({f"embed.{k}": p.detach().clone() for k, p in twin.named_parameters()})
        zero = gradient_features(torch.zeros(1))  # the features of a zero gradient, [1, 2]
        for name in KINDS:
            lstm, out = torch.nn.LSTMCell(2, HIDDEN), torch.nn.Linear(HIDDEN, 1)
            params.update(
                {
                    f"meta.lstm.{name}.w_ih": lstm.weight_ih.detach(),
                    f"meta.lstm.{name}.w_hh": lstm.weight_hh.detach(),
                    f"meta.lstm.{name}.b": (lstm.bias_ih + lstm.bias_hh).detach(),
                    f"meta.lstm.{name}.w_out": out.weight.detach(),
                    f"meta.lstm.{name}.b_out": out.bias.detach(),
                }
            )
            layers = (torch.nn.Linear(2, HIDDEN), torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.Linear(HIDDEN, 1))
            for i, layer in enumerate(layers):
                params[f"meta.mlp.{name}.w{i}"] = layer.weight.detach()
                params[f"meta.mlp.{name}.b{i}"] = layer.bias.detach()
            with torch.no_grad():
                params[f"meta.lstm.{name}.b_out"] -= self.lstm(params, name, zero.expand(self.chunks, 1, 2))
                params[f"meta.mlp.{name}.b2"] -= self.mlp(params, name, zero)
        return params

    def lecun_params(self) -> dict:
        """Chainer v1's defaults (the API MetaNetFull.py is written in): L.Convolution2D, L.Linear and L.LSTM's
        two linear maps draw normal weights with std sqrt(1 / fan_in); biases start at zero (batch norm, in the
        partial network, at scale one and shift zero)."""

        def lecun(shape):
            return torch.randn(shape) * math.sqrt(1 / math.prod(shape[1:]))

        params = {
            f"{twin}.{k}": lecun(p.shape) if p.dim() > 1 else p.detach().clone()
            for twin in ("base", "embed")
            for k, p in self.model.named_parameters()
        }
        for name in KINDS:
            lstm = {"w_ih": lecun((4 * HIDDEN, 2)), "w_hh": lecun((4 * HIDDEN, HIDDEN)), "b": torch.zeros(4 * HIDDEN),
                    "w_out": lecun((1, HIDDEN)), "b_out": torch.zeros(1)}  # fmt: skip
            params.update({f"meta.lstm.{name}.{k}": v for k, v in lstm.items()})
            for i, (fan_out, fan_in) in enumerate([(HIDDEN, 2), (HIDDEN, HIDDEN), (1, HIDDEN)]):
                params[f"meta.mlp.{name}.w{i}"] = lecun((fan_out, fan_in))
                params[f"meta.mlp.{name}.b{i}"] = torch.zeros(fan_out)
        return params

    def forward(self, weights: dict, fast: dict | None, x, key: bool = False):
        """The augmented network on `x` `[n, C, H, W]`; `key=True` stops at fc1's pre-activation, Q h + Q* h."""

        def layer(apply, name):
            out = apply(weights[name])
            return out, (apply(fast[name]) if fast is not None and name in fast else None)

        def relu(slow, quick):
            if quick is None:
                return F.relu(slow)
            # The paper's layer augmentation, or (augmentation=weight) fast weights added to the slow ones.
            return F.relu(slow + quick) if self.add_weights else F.relu(slow) + F.relu(quick)

        h = x
        for i in range(self.layers):
            slow, quick = layer(lambda w: F.conv2d(h, w, padding=1), f"convs.{i}.weight")
            if i < len(self.model.norms):  # the partial variant's batch norm, on layers without fast weights
                slow = functional_call(self.model.norms[i], with_prefix(weights, f"norms.{i}."), (slow,))
            h = F.max_pool2d(relu(slow, quick), 2, ceil_mode=True)
        h = h.flatten(-3)
        slow, quick = layer(lambda w: F.linear(h, w), "fc1.weight")
        if key:
            return slow + (quick if quick is not None else 0)
        h = relu(slow, quick)
        slow, quick = layer(lambda w: F.linear(h, w), "head.weight")
        return slow + (quick if quick is not None else 0)

    def lstm(self, params: dict, name: str, sequence: torch.Tensor) -> torch.Tensor:
        """Coordinate-wise LSTM(2->20) + Linear(20->1) over `sequence` `[T, P, 2]`; the last output `[P]`."""
        p = with_prefix(params, f"meta.lstm.{name}.")
        return CoordinateLSTM.apply(sequence, p["w_ih"], p["w_hh"], p["b"], p["w_out"], p["b_out"])

    def mlp(self, params: dict, name: str, features: torch.Tensor) -> torch.Tensor:
        """Coordinate-wise MLP 2->20->20->1 on `features` `[..., 2]`."""
        p = with_prefix(params, f"meta.mlp.{name}.")
        weights = [p[f"{kind}{i}"] for i in range(3) for kind in ("w", "b")]
        return CoordinateMLP.apply(features.reshape(-1, 2), *weights).view(features.shape[:-1])

    def task_fast_weights(self, params: dict, embed: dict, support_x, support_y) -> dict:
        """Q*: the gradients of u's loss on each support chunk, through the LSTM over the chunks."""
        if len(support_x) % self.chunks:
            raise MetaexpError(f"algorithm.chunks={self.chunks} does not divide the {len(support_x)} support examples.")
        xs = support_x.unflatten(0, (self.chunks, -1))
        ys = support_y.unflatten(0, (self.chunks, -1))
        constant = {k: v.detach() for k, v in embed.items()}  # meta information: no second-order term

        def chunk_loss(weights, x, y):
            return self.objective.loss(self.forward(weights, None, x), y)

        grads = vmap(grad(chunk_loss), in_dims=(None, 0, 0))(constant, xs, ys)
        return {
            k: self.lstm(params, kind(k), gradient_features(g.flatten(1))).view_as(embed[k])
            for k, g in grads.items()
            if k in self.augmented
        }

    def memory(self, params: dict, base: dict, support_x, support_y) -> dict:
        """M: for each support example, its gradient of b's loss through the MLP, `[N, *shape]` per weight."""
        constant = {k: v.detach() for k, v in base.items()}

        def example_loss(weights, x, y):
            return self.objective.loss(self.forward(weights, None, x[None]), y[None])

        grads = vmap(grad(example_loss), in_dims=(None, 0, 0))(constant, support_x, support_y)
        return {k: self.mlp(params, kind(k), gradient_features(g)) for k, g in grads.items() if k in self.augmented}

    def adapt(self, params: dict, support_x, support_y):
        base, embed = with_prefix(params, "base."), with_prefix(params, "embed.")
        memory = self.memory(params, base, support_x, support_y)
        if not self.example_level:  # ablation: every query reads the memory's mean; u and its keys go unused
            mean = {k: m.mean(0) for k, m in memory.items()}
            return lambda query_x: self.forward(base, mean, query_x)
        # The paper's MetaNet- ablation: keys from u's slow weights alone, no LSTM.
        embed_fast = self.task_fast_weights(params, embed, support_x, support_y) if self.task_level else None
        support_keys = self.forward(embed, embed_fast, support_x, key=True)

        def predict(query_x):
            keys = self.forward(embed, embed_fast, query_x, key=True)
            attention = (F.normalize(keys, dim=-1) @ F.normalize(support_keys, dim=-1).T).softmax(-1)
            fast = {k: torch.einsum("qn,n...->q...", attention, m) for k, m in memory.items()}
            return vmap(lambda x, weights: self.forward(base, weights, x[None])[0])(query_x, fast)

        return predict

    def task_loss(self, params, support_x, support_y, query_x, query_y, step):
        logits = self.adapt(params, support_x, support_y)(query_x)
        losses = F.cross_entropy(logits, query_y, reduction="none")
        # The outer loss sums the query cross-entropies, as the authors' code does; the reported loss is their mean.
        return losses.sum(), losses.mean(), self.objective.score(logits, query_y)
