"""Proto-MAML: before any inner step its head is the prototype classifier (the same class probabilities as
ProtoNets on the same embedding), and the meta-gradient reaches the body through the prototypes."""

import torch
import torch.nn.functional as F
from torch.func import grad

from conftest import random_batch
from metaexp.algorithms.protomaml import ProtoMAML
from metaexp.algorithms.protonet import ProtoNet
from metaexp.backbones import predict
from metaexp.backbones.mlp import MLP
from metaexp.objectives import CLASSIFICATION


def test_before_any_inner_step_the_head_classifies_as_prototypes_do():
    torch.manual_seed(0)
    # No batch norm: ProtoNets embed support and queries together, MAML each set apart.
    model = MLP(out_features=5, in_features=28 * 28, hidden=(32, 16))
    proto_maml = ProtoMAML(model, CLASSIFICATION, ways=5, inner_steps=1, eval_inner_steps=0)
    protonet = ProtoNet(model, CLASSIFICATION, ways=5)
    batch = random_batch(1, 5, queries=3)
    task = [t[0] for t in batch]
    params = proto_maml.init_params()
    assert not any(k.startswith("head.") for k in params)  # no meta-learned head
    start = proto_maml.task_start(params, task[0], task[1])
    ours = predict(model, start, task[2])
    theirs = protonet.adapt(protonet.init_params(), task[0], task[1])(task[2])
    # Equal up to a per-query constant (-||z||^2): the same class probabilities.
    torch.testing.assert_close(F.log_softmax(ours, -1), F.log_softmax(theirs, -1), rtol=1e-4, atol=1e-4)

    def outer(p):
        return proto_maml.task_loss(p, *task, step=0)[0]

    grads = grad(outer)(params)
    assert all(torch.isfinite(g).all() for g in grads.values())
    body = [k for k in grads if k.startswith("features.")]
    assert body and all(grads[k].abs().sum() > 0 for k in body[:1])
