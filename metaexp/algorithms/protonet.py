"""Prototypical Networks (Snell et al. 2017): classify queries by squared Euclidean distance to class means."""

from metaexp.algorithms.base import EmbeddingAlgorithm


class ProtoNet(EmbeddingAlgorithm):
    def logits(self, params, support_z, support_onehot, query_z):
        prototypes = (support_onehot.T @ support_z) / support_onehot.sum(0).unsqueeze(-1)
        return -(query_z.unsqueeze(1) - prototypes.unsqueeze(0)).square().sum(-1)
