"""Proto-MAML (Triantafillou et al. 2020, Meta-Dataset): MAML whose linear head starts each task as the
prototype classifier of its support set. With prototypes c_k (class means of the support embeddings),
-||z - c_k||^2 = 2 c_k . z - ||c_k||^2 + const, so the head W_k = 2 c_k, b_k = -||c_k||^2 classifies as
ProtoNets do before any inner step; the inner loop then fine-tunes body and head, and the meta-gradient
flows through the prototypes into the body."""

from torch import nn

from metaexp.algorithms.base import one_hot
from metaexp.errors import MetaexpError
from metaexp.algorithms.maml import MAML
from metaexp.backbones import embed


class ProtoMAML(MAML):
    uses_head = False  # the head is made per task from the prototypes: it has no meta-parameters of its own
    adapts_policies = False  # a policy has no classes to make prototypes of
    classification_only = True

    def __init__(self, model, objective, ways: int, **maml):
        super().__init__(model, objective, **maml)
        if not isinstance(model.head, nn.Linear):
            raise MetaexpError(
                "Proto-MAML fills the backbone's linear head with each task's prototypes, but this backbone has "
                "none (backbone.out_features=null). Leave backbone.out_features at its default."
            )
        self.ways = ways

    def task_start(self, params: dict, support_x, support_y) -> dict:
        z = embed(self.model, params, support_x)
        labels = one_hot(support_y, self.ways, z.dtype)
        prototypes = (labels.T @ z) / labels.sum(0).unsqueeze(-1)
        return {**params, "head.weight": 2 * prototypes, "head.bias": -prototypes.square().sum(-1)}
