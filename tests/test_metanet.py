"""Meta Networks against a plain reference written from the description: Python loops over the support chunks,
the support examples and the queries, torch's own nn.LSTM and nn.Sequential generators, float64."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from metaexp.algorithms import coordinatewise
from metaexp.algorithms.coordinatewise import CoordinateLSTM, CoordinateMLP
from metaexp.algorithms.metanet import MetaNet, gradient_features
from metaexp.backbones.metanet_conv import MetaNetConv
from metaexp.errors import MetaexpError
from metaexp.objectives import CLASSIFICATION
from metaexp.samplers import TaskBatch

WAYS, QUERIES, TASKS, HIDDEN = 5, 2, 2, 8
NO_COMPILER = "no C compiler (cc) builds metaexp/algorithms/coordinatewise.c on this machine"


def tasks(seed=0):
    g = torch.Generator().manual_seed(seed)
    return TaskBatch(
        torch.rand(TASKS, WAYS, 1, 28, 28, generator=g, dtype=torch.float64),
        torch.arange(WAYS).expand(TASKS, -1).contiguous(),
        torch.rand(TASKS, WAYS * QUERIES, 1, 28, 28, generator=g, dtype=torch.float64),
        torch.arange(WAYS).repeat_interleave(QUERIES).expand(TASKS, -1).contiguous(),
    )


def net(weights, x, fast=None, key=False, add=False):
    """The twin network, each layer relu(W h) + relu(W* h) (or relu(W h + W* h) with `add`), written out layer
    by layer."""

    def relu(slow, quick):
        if fast is None:
            return F.relu(slow)
        return F.relu(slow + quick) if add else F.relu(slow) + F.relu(quick)

    h = x
    for i in range(5):
        conv = f"convs.{i}.weight"
        quick = F.conv2d(h, fast[conv], padding=1) if fast is not None else None
        h = F.max_pool2d(relu(F.conv2d(h, weights[conv], padding=1), quick), 2, ceil_mode=True)
    h = h.reshape(len(h), -1)
    if key:
        return h @ weights["fc1.weight"].T + (h @ fast["fc1.weight"].T if fast is not None else 0)
    h = relu(h @ weights["fc1.weight"].T, h @ fast["fc1.weight"].T if fast is not None else None)
    return h @ weights["head.weight"].T + (h @ fast["head.weight"].T if fast is not None else 0)


def features(g):
    eps = torch.finfo(torch.float32).eps
    first = torch.maximum(torch.log(g.abs() + eps) / 7, torch.tensor(-1.0, dtype=g.dtype))
    return torch.stack([first, torch.clamp(g * math.e**7, -1, 1)], -1)


def generators(params, kind):
    """torch's nn.LSTM + nn.Linear and an nn.Sequential MLP, called with the algorithm's parameter tensors."""
    lstm, out = torch.nn.LSTM(2, 20).double(), torch.nn.Linear(20, 1).double()
    mlp = torch.nn.Sequential(
        torch.nn.Linear(2, 20), torch.nn.ReLU(), torch.nn.Linear(20, 20), torch.nn.ReLU(), torch.nn.Linear(20, 1)
    ).double()
    p = {k[len(f"meta.lstm.{kind}.") :]: v for k, v in params.items() if k.startswith(f"meta.lstm.{kind}.")}
    m = {k[len(f"meta.mlp.{kind}.") :]: v for k, v in params.items() if k.startswith(f"meta.mlp.{kind}.")}
    lstm_weights = {"weight_ih_l0": p["w_ih"], "weight_hh_l0": p["w_hh"], "bias_ih_l0": p["b"],
                    "bias_hh_l0": torch.zeros_like(p["b"])}  # fmt: skip

    def generate_task_weight(sequence):  # [T, P, 2] -> [P]
        outputs, _ = functional_call(lstm, lstm_weights, (sequence,))
        return functional_call(out, {"weight": p["w_out"], "bias": p["b_out"]}, (outputs[-1],)).squeeze(-1)

    def generate_example_weight(feature):  # [..., 2] -> [...]
        weights = {"0.weight": m["w0"], "0.bias": m["b0"], "2.weight": m["w1"], "2.bias": m["b1"],
                   "4.weight": m["w2"], "4.bias": m["b2"]}  # fmt: skip
        return functional_call(mlp, weights, (feature,)).squeeze(-1)

    return generate_task_weight, generate_example_weight


def reference_task_loss(params, sx, sy, qx, qy, chunks=5, mean_read=False, add=False):
    base = {k[5:]: v for k, v in params.items() if k.startswith("base.")}
    embed = {k[6:]: v for k, v in params.items() if k.startswith("embed.")}
    made = {kind: generators(params, kind) for kind in ("conv", "fc")}

    def kind(name):
        return "conv" if name.startswith("convs.") else "fc"

    size = len(sx) // chunks
    sequences = {k: [] for k in embed}
    for c in range(chunks):
        loss = F.cross_entropy(net(embed, sx[c * size : (c + 1) * size]), sy[c * size : (c + 1) * size])
        for k, g in zip(embed, torch.autograd.grad(loss, list(embed.values()))):
            sequences[k].append(features(g.reshape(-1)))
    embed_fast = {k: made[kind(k)][0](torch.stack(s)).reshape(embed[k].shape) for k, s in sequences.items()}
    memory = []
    for i in range(len(sx)):
        loss = F.cross_entropy(net(base, sx[i : i + 1]), sy[i : i + 1])
        grads = torch.autograd.grad(loss, list(base.values()))
        memory.append({k: made[kind(k)][1](features(g)) for k, g in zip(base, grads)})
    keys = [net(embed, sx[i : i + 1], embed_fast, key=True, add=add)[0] for i in range(len(sx))]
    total = 0.0
    for j in range(len(qx)):
        key = net(embed, qx[j : j + 1], embed_fast, key=True, add=add)[0]
        attention = torch.stack([F.cosine_similarity(key, k, dim=0) for k in keys]).softmax(0)
        if mean_read:
            attention = torch.full_like(attention, 1 / len(sx))
        fast = {k: sum(attention[i] * memory[i][k] for i in range(len(sx))) for k in base}
        total = total + F.cross_entropy(net(base, qx[j : j + 1], fast, add=add), qy[j : j + 1])
    return total


def assert_equal_to_the_reference(algorithm, seed, **reference):
    """metaexp's meta-loss and every parameter group's gradient against the loop reference, float64."""
    start = {k: v.double() for k, v in algorithm.init_params().items()}
    batch = tasks(seed)
    ours = {k: v.clone().requires_grad_() for k, v in start.items()}
    outer, _, _ = algorithm.meta_loss(ours, batch)
    outer.backward()
    theirs = {k: v.clone().requires_grad_() for k, v in start.items()}
    total = sum(reference_task_loss(theirs, *task, **reference) for task in zip(*batch)) / TASKS
    total.backward()
    assert outer.item() == pytest.approx(total.item(), rel=1e-9)
    groups = {}
    for k in start:
        groups.setdefault(".".join(k.split(".")[:3]) if k.startswith("meta.") else k.split(".")[0], []).append(k)
    for group, names in groups.items():
        a = [ours[k].grad.reshape(-1) for k in names if ours[k].grad is not None]
        b = [theirs[k].grad.reshape(-1) for k in names if theirs[k].grad is not None]
        assert len(a) == len(b), group  # a group without gradient in one must have none in the other
        if b:
            assert (torch.cat(a) - torch.cat(b)).norm() <= 1e-6 * torch.cat(b).norm(), group


@pytest.fixture(params=["compiled", "torch ops"])
def generators_run_as(request, monkeypatch):
    """Each generator test twice: with coordinatewise.c's compiled loops (what a CPU with a C compiler runs) and
    with the blocked torch ops (what an accelerator, or a machine without a compiler, runs)."""
    if request.param == "torch ops":
        monkeypatch.setattr(coordinatewise, "compiled", lambda x: None)
    elif coordinatewise.native(torch.float64) is None:
        pytest.skip(NO_COMPILER)
    return request.param


@pytest.mark.parametrize("init", ["lecun", "torch"])
@pytest.mark.parametrize("seed", [0, 1])
def test_vectorised_metanet_equals_the_loop_reference_in_float64(seed, init, generators_run_as):
    torch.manual_seed(seed)
    assert_equal_to_the_reference(MetaNet(MetaNetConv(WAYS, hidden=HIDDEN), CLASSIFICATION, init=init), seed)


@pytest.mark.parametrize(
    ("setting", "reference"),
    [({"example_fast_weights": False}, {"mean_read": True}), ({"augmentation": "weight"}, {"add": True})],
)
def test_ablations_equal_the_loop_reference_changed_the_same_way(setting, reference):
    """Without example-level fast weights every query reads the memory's mean; without layer augmentation the
    fast weights are added to the slow ones before the ReLU, in both twins. Both against the reference so
    changed, float64."""
    torch.manual_seed(0)
    algorithm = MetaNet(MetaNetConv(WAYS, hidden=HIDDEN), CLASSIFICATION, **setting)
    assert_equal_to_the_reference(algorithm, 0, **reference)
    with pytest.raises(AssertionError):  # and the change is one the reference can see
        assert_equal_to_the_reference(MetaNet(MetaNetConv(WAYS, hidden=HIDDEN), CLASSIFICATION), 0, **reference)


def test_coordinate_generators_equal_torchs_lstm_and_mlp_per_task_in_float64(monkeypatch, generators_run_as):
    """The generators with their hand-written backward against nn.LSTM and nn.Sequential under autograd, vmapped
    over 3 tasks (the tasks' coordinates stacked into one call) and over 3 draws of the generators' own weights
    (one call per draw); inputs' gradients included. 3 x 100 coordinates: the blocked ops in blocks of 7 (the
    last one short), the compiled loops in tiles of 128 (the last one short)."""
    monkeypatch.setattr(coordinatewise, "BLOCK", 7)
    torch.manual_seed(0)
    algorithm = MetaNet(MetaNetConv(WAYS, hidden=HIDDEN), CLASSIFICATION)
    draws = [{k: v.double() for k, v in algorithm.init_params().items()} for _ in range(3)]
    inputs = {"lstm": gradient_features(torch.randn(3, 5, 100, dtype=torch.float64) * 1e-3 * torch.rand(3, 1, 100)),
              "mlp": torch.rand(3, 100, 2, dtype=torch.float64) * 2 - 1}  # fmt: skip

    def run(generate, name, tasks, params: dict, per_draw: bool):
        """(outputs, the inputs' gradient, each weight's gradient) of a weighted sum of the outputs."""
        own = sorted(k for k in params if k.startswith(f"meta.{name}.conv."))
        params = {k: v.clone().requires_grad_(k in own) for k, v in params.items()}
        tasks = tasks.clone().requires_grad_()
        output = generate(name, params, tasks, per_draw)
        (output * torch.linspace(-1, 2, output.numel(), dtype=output.dtype).view_as(output)).sum().backward()
        return [output, tasks.grad, *(params[k].grad for k in own)]

    def ours(name, params, tasks, per_draw):
        generator = getattr(algorithm, name)
        if per_draw:
            return vmap(lambda p, x: generator(p, "conv", x))(params, tasks)
        return vmap(lambda x: generator(params, "conv", x))(tasks)

    def theirs(name, params, tasks, per_draw):
        pick = 0 if name == "lstm" else 1
        draw = [{k: v[i] for k, v in params.items()} if per_draw else params for i in range(len(tasks))]
        return torch.stack([generators(draw[i], "conv")[pick](x) for i, x in enumerate(tasks)])

    stacked = {k: torch.stack([d[k] for d in draws]) for k in draws[0]}
    for name in ("lstm", "mlp"):
        for params, per_draw in ((draws[0], False), (stacked, True)):
            a, b = (run(generate, name, inputs[name], params, per_draw) for generate in (ours, theirs))
            for x, y in zip(a, b, strict=True):
                assert (x - y).abs().max() <= 1e-12 * (1 + y.abs().max()), name


def test_compiled_generators_are_as_accurate_as_the_blocked_ops_in_float32(monkeypatch):
    """What training runs on a CPU (float32, coordinatewise.c built with -ffast-math) and the blocked torch ops in
    float32, both against the blocked ops in float64: 5 chunks x 3,000 coordinates and 10,000 MLP rows, at the
    features' scale and at 50 times the weights' (saturated gates, where a fast exp could overflow into NaN, and
    a badly conditioned sum). Outputs and every gradient finite and within a bound relative to their scale: 1e-5
    at the features' scale (both paths' errors are under 1e-6 of it), 2e-3 at 50 times (both under 5e-4)."""
    if coordinatewise.native(torch.float32) is None:
        pytest.skip(NO_COMPILER)
    torch.manual_seed(0)
    params = MetaNet(MetaNetConv(WAYS, hidden=HIDDEN), CLASSIFICATION).init_params()
    lstm = [params[f"meta.lstm.conv.{k}"] for k in ("w_ih", "w_hh", "b", "w_out", "b_out")]
    mlp = [params[f"meta.mlp.conv.{kind}{i}"] for i in range(3) for kind in ("w", "b")]
    sequence, rows = gradient_features(torch.randn(5, 3000) * 1e-3), torch.rand(10_000, 2) * 2 - 1

    def run(generator, inputs, weights, dtype):
        leaves = [x.to(dtype, copy=True).requires_grad_() for x in (inputs, *weights)]
        output = generator.apply(*leaves)
        (output * torch.linspace(-1, 2, len(output), dtype=dtype)).sum().backward()
        return [output.detach().double(), *(leaf.grad.double() for leaf in leaves)]

    for scale, tolerance in ((1.0, 1e-5), (50.0, 2e-3)):
        for generator, inputs, weights in ((CoordinateLSTM, sequence, lstm), (CoordinateMLP, rows, mlp)):
            weights = [w * scale for w in weights]
            ours = run(generator, inputs, weights, torch.float32)
            monkeypatch.setattr(coordinatewise, "compiled", lambda x: None)
            theirs, exact = (run(generator, inputs, weights, dtype) for dtype in (torch.float32, torch.float64))
            monkeypatch.undo()
            for results in (ours, theirs):
                for result, truth in zip(results, exact, strict=True):
                    assert torch.isfinite(result).all(), (generator.__name__, scale)
                    bound = tolerance * (1 + truth.abs().max())
                    assert (result - truth).abs().max() <= bound, (generator.__name__, scale)


@pytest.mark.parametrize("compiler", ["false", None])
def test_a_failed_build_falls_back_to_the_torch_ops_with_one_warning(monkeypatch, tmp_path, caplog, compiler):
    """A machine whose compiler cannot build coordinatewise.c (CC=false), or that has none (no cc on PATH),
    trains with the blocked ops; the log says why once, and nothing half-built is left in the cache."""
    if compiler is None:
        monkeypatch.delenv("CC", raising=False)
        monkeypatch.setattr(coordinatewise.shutil, "which", lambda name: None)
    else:
        monkeypatch.setenv("CC", compiler)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    coordinatewise.native.cache_clear()
    try:
        with caplog.at_level("WARNING", logger=coordinatewise.__name__):
            assert coordinatewise.native(torch.float32) is None
            assert coordinatewise.native(torch.float32) is None
        assert [r.getMessage().split(":")[0] for r in caplog.records] == [
            "MetaNet's generators run as torch ops (slower)"
        ]
        assert not list(tmp_path.glob("metaexp/kernels/*"))
        torch.manual_seed(0)
        assert_equal_to_the_reference(MetaNet(MetaNetConv(WAYS, hidden=HIDDEN), CLASSIFICATION), 0)
    finally:
        coordinatewise.native.cache_clear()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_centred_generators_give_every_group_a_gradient(seed):
    """Under init=torch the generators' outputs are centred on a zero gradient, so no fast path starts dead."""
    torch.manual_seed(seed)
    algorithm = MetaNet(MetaNetConv(WAYS, hidden=HIDDEN), CLASSIFICATION, init="torch")
    params = {k: v.requires_grad_() for k, v in algorithm.init_params().items()}
    batch = TaskBatch(*(t.float() if t.is_floating_point() else t for t in tasks(seed)))
    algorithm.meta_loss(params, batch)[0].backward()
    dead = sorted(k for k, v in params.items() if v.grad is None or not v.grad.abs().sum() > 0)
    # u's own head only scores the support chunks whose gradients are constant meta information: no outer gradient.
    assert dead == ["embed.head.weight"]


def test_lecun_initialisation_is_chainers_default():
    """Normal weights with std sqrt(1 / fan_in) (within four standard errors of the sample std), zero biases, twins
    drawn apart."""
    torch.manual_seed(0)
    params = MetaNet(MetaNetConv(WAYS), CLASSIFICATION).init_params()
    for name, fan_in in (("base.convs.1.weight", 64 * 9), ("embed.fc1.weight", 64), ("meta.lstm.conv.w_ih", 2),
                         ("meta.lstm.fc.w_hh", 20), ("meta.mlp.conv.w1", 20)):  # fmt: skip
        weight = params[name]
        assert weight.std().item() == pytest.approx(fan_in**-0.5, rel=4 / math.sqrt(2 * weight.numel())), name
    assert all(not v.any() for k, v in params.items() if k.startswith("meta.") and ".b" in k)
    assert not torch.equal(params["base.convs.1.weight"], params["embed.convs.1.weight"])
    with pytest.raises(MetaexpError, match="algorithm.init='chainer' is not valid"):
        MetaNet(MetaNetConv(WAYS), CLASSIFICATION, init="chainer")


def test_preprocessing_at_known_points():
    g = torch.tensor([0.0, 1.0, -1e-4, 1e-2, -5.0])
    got = gradient_features(g)
    e7 = math.exp(7)
    expected = [(-1.0, 0.0), (math.log(1 + 2**-23) / 7, 1.0), (-1.0, -1e-4 * e7), (math.log(1e-2 + 2**-23) / 7, 1.0),
                (math.log(5 + 2**-23) / 7, -1.0)]  # fmt: skip
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6)


def test_ceil_mode_shapes_and_bad_pairs():
    omniglot, mini = MetaNetConv(5), MetaNetConv(5, in_channels=3, image_size=84, hidden=32)
    assert omniglot.embedding_size == 64 and omniglot(torch.zeros(2, 1, 28, 28)).shape == (2, 5)
    assert mini.embedding_size == 288 and mini(torch.zeros(2, 3, 84, 84)).shape == (2, 5)
    from metaexp.backbones.conv4 import Conv4
    from metaexp.objectives import REGRESSION

    with pytest.raises(MetaexpError, match="backbone=metanet_conv"):
        MetaNet(Conv4(5), CLASSIFICATION)
    with pytest.raises(MetaexpError, match="cannot learn mse regression"):
        MetaNet(MetaNetConv(1), REGRESSION)


def test_partial_network_has_fast_weights_only_where_the_authors_put_them():
    """MetaNetPartial.py's shape: batch norm on conv1-3, fast weights on conv4, conv5, fc1 and the head only."""
    torch.manual_seed(0)
    model = MetaNetConv(WAYS, hidden=HIDDEN, norm_layers=3, fast_convs=2)
    algorithm = MetaNet(model, CLASSIFICATION, init="torch")
    params = {k: v.requires_grad_() for k, v in algorithm.init_params().items()}
    batch = TaskBatch(*(t.float() if t.is_floating_point() else t for t in tasks(0)))
    base = {k[5:]: v for k, v in params.items() if k.startswith("base.")}
    memory = algorithm.memory(params, base, batch.support_x[0], batch.support_y[0])
    assert sorted(memory) == ["convs.3.weight", "convs.4.weight", "fc1.weight", "head.weight"]
    algorithm.meta_loss(params, batch)[0].backward()
    dead = sorted(k for k, v in params.items() if v.grad is None or not v.grad.abs().sum() > 0)
    assert dead == ["embed.head.weight"]
    assert any(k.startswith("base.norms.2.") for k in params)
    mini = MetaNetConv(5, in_channels=3, image_size=84, hidden=32, norm_layers=3, fast_convs=2)
    assert mini.embedding_size == 288 and mini(torch.zeros(2, 3, 84, 84)).shape == (2, 5)


def test_metanet_minus_leaves_the_lstm_out():
    """task_fast_weights=false: u's keys use its slow weights only, so the LSTM gets no gradient and changing its
    weights changes nothing, while the memory's MLP still learns."""
    torch.manual_seed(0)
    algorithm = MetaNet(MetaNetConv(WAYS, hidden=HIDDEN), CLASSIFICATION, task_fast_weights=False)
    params = {k: v.requires_grad_() for k, v in algorithm.init_params().items()}
    batch = TaskBatch(*(t.float() if t.is_floating_point() else t for t in tasks(0)))
    loss = algorithm.meta_loss(params, batch)[0]
    loss.backward()
    assert all(v.grad is None for k, v in params.items() if k.startswith("meta.lstm."))
    assert all(v.grad is not None for k, v in params.items() if k.startswith("meta.mlp."))
    shifted = {k: v + 1 if k.startswith("meta.lstm.") else v for k, v in params.items()}
    assert algorithm.meta_loss(shifted, batch)[0].item() == loss.item()
