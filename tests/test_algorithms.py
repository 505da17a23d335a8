"""Each algorithm against its reference: learn2learn's clone/adapt MAML, MetaSGD and ANIL (float64
meta-gradients), a plain per-task SGD loop for Reptile, and direct computations for the metric heads."""

import copy

import pytest
import torch
import torch.nn.functional as F

from metaexp.algorithms.anil import ANIL
from metaexp.algorithms.maml import MAML
from metaexp.algorithms.matchingnet import MatchingNet
from metaexp.algorithms.metaoptnet import MetaOptNet
from metaexp.algorithms.metasgd import MetaSGD
from metaexp.algorithms.protonet import ProtoNet
from metaexp.algorithms.reptile import Reptile
from metaexp.backbones.conv4 import Conv4
from metaexp.objectives import CLASSIFICATION
from metaexp.samplers import TaskBatch

from conftest import random_batch

l2l = pytest.importorskip("learn2learn", reason="learn2learn is the reference; `make install` installs it")
WAYS, SHOTS, QUERIES, TASKS, HIDDEN = 5, 1, 3, 3, 8


def tasks(seed=0, shots=SHOTS):
    g = torch.Generator().manual_seed(seed)

    def images(n):
        return torch.rand(TASKS, n, 1, 28, 28, generator=g, dtype=torch.float64)

    def labels(k):
        return torch.arange(WAYS).repeat_interleave(k).expand(TASKS, -1).contiguous()

    return TaskBatch(images(WAYS * shots), labels(shots), images(WAYS * QUERIES), labels(QUERIES))


def ours_and_peer(seed=0, flatten=False):
    """Our Conv4 and learn2learn's OmniglotCNN with identical float64 weights, and the name map between them.

    `flatten` pairs the flattened-embedding variant with learn2learn's CNN4 instead: OmniglotCNN registers its
    conv base twice, and learn2learn's MetaSGD then drops the gradients of the conv layers' learning rates.
    """
    torch.manual_seed(seed)
    if flatten:
        ours = Conv4(WAYS, hidden=HIDDEN, embedding="flatten").double()
        peer = (
            l2l.vision.models.CNN4(
                WAYS, hidden_size=HIDDEN, channels=1, max_pool=False, embedding_size=ours.embedding_size
            )
            .double()
            .train()
        )
    else:
        ours = Conv4(WAYS, hidden=HIDDEN).double()
        peer = l2l.vision.models.OmniglotCNN(WAYS, hidden_size=HIDDEN).double().train()
    base = "features" if flatten else "base"
    names = {}
    for k in dict(ours.named_parameters()):
        if k.startswith("head."):
            names[k] = k.replace("head.", "classifier.")
        else:
            block, layer, kind = k.split(".")[1:]
            names[k] = f"{base}.{block}.{'normalize' if layer == 'norm' else 'conv'}.{kind}"
    peer_params = dict(peer.named_parameters())
    with torch.no_grad():
        for k, v in ours.named_parameters():
            if "norm" in k:
                v.normal_(0, 0.3)
            peer_params[names[k]].copy_(v)
    return ours, peer, names


def our_gradients(algorithm, batch):
    params = {k: v.clone().requires_grad_() for k, v in algorithm.init_params().items()}
    objective, _, _ = algorithm.meta_loss(params, batch, step=0)
    objective.backward()
    return objective.detach(), {k: v.grad for k, v in params.items()}


def assert_close(ours: dict, peer: dict, rtol=1e-6):
    """Whole meta-gradient, and each tensor in norm, within `rtol` relative. A conv bias feeds batch norm,
    which removes it, so its true gradient is zero: both sides must be zero up to float64 rounding (1e-12 of
    the whole gradient's norm), where a relative comparison of two rounding residues would be a coin toss."""
    flat_ours, flat_peer = (torch.cat([g[k].reshape(-1) for k in ours]) for g in (ours, peer))
    scale = flat_peer.norm()
    assert (flat_ours - flat_peer).norm() / scale < rtol, "meta-gradient relative error too large"
    for k in ours:
        if "conv.bias" in k:
            assert max(ours[k].abs().max(), peer[k].abs().max()) <= 1e-12 * scale, f"{k} is not zero"
        else:
            error = (ours[k] - peer[k]).norm() / peer[k].norm()
            assert error < rtol, f"{k}: relative error {error:.2e}"


def peer_maml_gradients(peer, batch, steps, lr, first_order, meta_sgd=False):
    learner_type = l2l.algorithms.MetaSGD if meta_sgd else l2l.algorithms.MAML
    meta = learner_type(peer, lr=lr, first_order=first_order)
    total = 0.0
    for sx, sy, qx, qy in zip(*batch):
        learner = meta.clone()
        for _ in range(steps):
            learner.adapt(F.cross_entropy(learner(sx), sy))
        total = total + F.cross_entropy(learner(qx), qy)
    (total / len(batch)).backward()
    return meta


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [1, 2])
def test_maml_meta_gradient_equals_learn2learn(first_order, steps):
    ours, peer, names = ours_and_peer()
    batch = tasks()
    _, grads = our_gradients(
        MAML(ours, CLASSIFICATION, inner_lr=0.4, inner_steps=steps, first_order=first_order), batch
    )
    peer_maml_gradients(peer, batch, steps, 0.4, first_order)
    peer_grads = {k: p.grad for k, p in peer.named_parameters()}
    assert_close(grads, {k: peer_grads[names[k]] for k in grads})


def test_metasgd_meta_gradient_equals_learn2learn():
    ours, peer, names = ours_and_peer(flatten=True)
    batch = tasks()
    _, grads = our_gradients(MetaSGD(ours, CLASSIFICATION, inner_lr=0.3), batch)
    meta = peer_maml_gradients(peer, batch, 1, 0.3, False, meta_sgd=True)
    peer_grads = {k: p.grad for k, p in peer.named_parameters()}
    peer_lr_grads = {k: lr.grad for (k, _), lr in zip(peer.named_parameters(), meta.lrs)}
    assert set(grads) == {*names, *(f"meta.lr.{k}" for k in names)}
    assert_close(
        grads,
        {
            k: peer_lr_grads[names[k[len("meta.lr.") :]]] if k.startswith("meta.lr.") else peer_grads[names[k]]
            for k in grads
        },
    )


def test_anil_meta_gradient_equals_learn2learn():
    ours, peer, names = ours_and_peer()
    batch = tasks()
    _, grads = our_gradients(ANIL(ours, CLASSIFICATION, inner_lr=0.5, inner_steps=2), batch)
    head = l2l.algorithms.MAML(peer.classifier, lr=0.5)
    total = 0.0
    for sx, sy, qx, qy in zip(*batch):
        learner = head.clone()
        support = peer.features(sx)
        for _ in range(2):
            learner.adapt(F.cross_entropy(learner(support), sy))
        total = total + F.cross_entropy(learner(peer.features(qx)), qy)
    (total / TASKS).backward()
    peer_grads = {k: p.grad for k, p in peer.named_parameters()}
    assert_close(grads, {k: peer_grads[names[k]] for k in grads})


def test_maml_plus_plus_options_change_the_objective_as_scheduled():
    ours, _, _ = ours_and_peer()
    batch = tasks()
    maml = MAML(
        ours, CLASSIFICATION, inner_lr=0.4, inner_steps=3, per_step_lrs=True, multi_step_loss=100, first_order_until=10
    )
    params = maml.init_params()
    assert params["meta.lr.head.weight"].shape == (3,)
    assert maml.step_weights(0, 3) == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    assert maml.step_weights(100, 3) == [0.0, 0.0, 1.0]
    plain = MAML(ours, CLASSIFICATION, inner_lr=0.4, inner_steps=3)
    late, _, _ = maml.meta_loss(params, batch, step=100)
    reference, _, _ = plain.meta_loss(plain.init_params(), batch, step=100)
    assert late.item() == pytest.approx(reference.item(), rel=1e-12)
    early, _, _ = maml.meta_loss(params, batch, step=0)
    assert early.item() != pytest.approx(late.item(), rel=1e-6)
    _, first = our_gradients(maml, batch)
    maml.first_order_until = 0
    _, second = our_gradients(maml, batch)
    assert (first["features.0.conv.weight"] - second["features.0.conv.weight"]).norm() > 1e-8


def test_reptile_update_equals_per_task_sgd_loop():
    ours, _, _ = ours_and_peer()
    batch = tasks()
    _, grads = our_gradients(Reptile(ours, CLASSIFICATION, inner_lr=0.1, inner_steps=3), batch)
    reference = {k: torch.zeros_like(v) for k, v in ours.named_parameters()}
    for sx, sy, _, _ in zip(*batch):
        model = copy.deepcopy(ours)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            optimizer.zero_grad()
            F.cross_entropy(model(sx), sy).backward()
            optimizer.step()
        for (k, start), (_, end) in zip(ours.named_parameters(), model.named_parameters()):
            reference[k] += (start - end).detach() / TASKS
    assert_close(grads, reference, rtol=1e-10)


def reference_metric_loss(model, batch, logits_of):
    total = 0.0
    for sx, sy, qx, qy in zip(*batch):
        z = model.features(torch.cat([sx, qx]))
        zs, zq = z[: len(sx)], z[len(sx) :]
        total = total + F.cross_entropy(logits_of(zs, sy, zq), qy)
    return total / len(batch)


def protonet_logits(zs, sy, zq):
    prototypes = torch.stack([zs[sy == c].mean(0) for c in range(WAYS)])
    return -torch.cdist(zq, prototypes).pow(2)


def matchingnet_logits(zs, sy, zq):
    attention = F.cosine_similarity(zq[:, None], zs[None], dim=-1).softmax(-1)
    return torch.log(torch.stack([attention[:, sy == c].sum(-1) for c in range(WAYS)], -1))


def metaoptnet_logits(zs, sy, zq, ridge=50.0):
    targets = F.one_hot(sy, WAYS).double()
    weights = torch.linalg.inv(zs.T @ zs + ridge * torch.eye(zs.shape[1], dtype=zs.dtype)) @ zs.T @ targets
    return zq @ weights


@pytest.mark.parametrize(
    "algorithm, logits_of",
    [(ProtoNet, protonet_logits), (MatchingNet, matchingnet_logits), (MetaOptNet, metaoptnet_logits)],
)
def test_metric_heads_equal_direct_computation(algorithm, logits_of):
    ours, _, _ = ours_and_peer()
    batch = tasks(shots=3)
    method = algorithm(ours, CLASSIFICATION, ways=WAYS)
    loss, _, scores = method.meta_loss(method.init_params(), batch)
    assert loss.item() == pytest.approx(reference_metric_loss(ours, batch, logits_of).item(), rel=1e-9)
    assert scores.shape == (TASKS,)


def test_evaluation_matches_training_forward_and_needs_no_outer_graph():
    ours, _, _ = ours_and_peer()
    batch = tasks()
    maml = MAML(ours, CLASSIFICATION, inner_lr=0.4, inner_steps=1)
    params = maml.init_params()
    _, losses, scores = maml.meta_loss(params, batch, step=0)
    eval_losses, eval_scores = maml.evaluate(params, batch)
    assert torch.allclose(losses, eval_losses) and torch.equal(scores, eval_scores)
    assert not eval_losses.requires_grad


def test_algorithm_backbone_pairs_that_cannot_work_are_refused():
    from metaexp.errors import MetaexpError
    from metaexp.backbones.mlp import MLP
    from metaexp.objectives import REGRESSION

    with pytest.raises(MetaexpError, match="cannot learn mse regression"):
        ProtoNet(MLP(), REGRESSION, ways=5)
    with pytest.raises(MetaexpError, match="this backbone has none"):
        ANIL(Conv4(None, hidden=HIDDEN), CLASSIFICATION)
    assert set(ProtoNet(Conv4(None, hidden=HIDDEN), CLASSIFICATION, ways=5).init_params()) == {
        k for k, _ in Conv4(5, hidden=HIDDEN).named_parameters() if not k.startswith("head.")
    }


def test_backbones_build_and_train_under_vmap():
    from metaexp.backbones.resnet12 import ResNet12

    assert Conv4(5, in_channels=3, image_size=84, hidden=32, max_pool=True, embedding="flatten").embedding_size == 800
    assert Conv4(5).embedding_size == 64
    batch = random_batch(2, 5, channels=3, size=32)
    for algorithm in (
        ProtoNet(ResNet12(None, channels=(8, 8, 16, 16)), CLASSIFICATION, ways=5),
        MAML(ResNet12(5, channels=(8, 8, 16, 16)), CLASSIFICATION, inner_lr=0.1),
    ):
        params = {k: v.requires_grad_() for k, v in algorithm.init_params().items()}
        objective, losses, scores = algorithm.meta_loss(params, batch)
        objective.backward()
        assert torch.isfinite(objective) and losses.shape == (2,)
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for k, p in params.items() if "shortcut" in k)
