"""MetaOptNet-RR / R2-D2 (Lee et al. 2019; Bertinetto et al. 2019): a differentiable closed-form ridge
regression from support embeddings to one-hot labels, solved in the dual, with a learned logit scale."""

import torch

from metaexp.algorithms.base import EmbeddingAlgorithm, ridge_weights


class MetaOptNet(EmbeddingAlgorithm):
    def __init__(self, model, objective, ways: int, ridge: float = 50.0, scale: float = 1.0):
        super().__init__(model, objective, ways)
        self.ridge, self.scale = ridge, scale

    def init_params(self) -> dict:
        return {**super().init_params(), "meta.scale": torch.tensor(self.scale)}

    def logits(self, params, support_z, support_onehot, query_z):
        weights = ridge_weights(support_z, support_onehot, self.ridge)  # in the dual: N K support rows
        return params["meta.scale"] * (query_z @ weights)
