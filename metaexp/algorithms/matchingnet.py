"""Matching Networks (Vinyals et al. 2016) without full context embeddings: a softmax over cosine
similarities to the support set, summed per class. Returns log-probabilities, so cross-entropy is their NLL."""

import torch.nn.functional as F

from metaexp.algorithms.base import EmbeddingAlgorithm


class MatchingNet(EmbeddingAlgorithm):
    def logits(self, params, support_z, support_onehot, query_z):
        similarity = F.normalize(query_z, dim=-1) @ F.normalize(support_z, dim=-1).T
        return (similarity.softmax(-1) @ support_onehot).clamp_min(1e-8).log()
