"""SimpleShot (Wang et al. 2019): nearest class centroid on L2-normalised pretrained features (its L2N variant)."""

import torch.nn.functional as F

from metaexp.algorithms.pretrain import Pretrained


class SimpleShot(Pretrained):
    def logits(self, params, support_z, support_onehot, query_z):
        support_z, query_z = F.normalize(support_z, dim=-1), F.normalize(query_z, dim=-1)
        centroids = (support_onehot.T @ support_z) / support_onehot.sum(0).unsqueeze(-1)
        return -(query_z.unsqueeze(1) - centroids.unsqueeze(0)).square().sum(-1)
