"""RFS (Tian et al. 2020, "Rethinking Few-Shot Image Classification: a Good Embedding Is All You Need?"): a
multinomial logistic regression on L2-normalised pretrained features of the support set, as the paper's
scikit-learn `LogisticRegression(C=1.0)`: minimise C sum_i CE_i + |W|^2 / 2 (the bias unpenalised). Fitted by
Nesterov's accelerated gradient, which converges for a fixed step count under vmap: with unit features the
loss's curvature is at most 1 + lam (lam = 1 / (C n)) and at least lam, so step 1 / (1 + lam) and momentum
(sqrt(kappa) - 1) / (sqrt(kappa) + 1), kappa = (1 + lam) / lam. The paper's self-distillation stage is not
here."""

import torch
import torch.nn.functional as F

from metaexp.algorithms.pretrain import Pretrained


class RFS(Pretrained):
    def __init__(self, model, objective, ways: int, C: float = 1.0, steps: int = 300):
        super().__init__(model, objective, ways)
        self.C, self.steps = C, steps

    def logits(self, params, support_z, support_onehot, query_z):
        weight, bias = logistic_regression(F.normalize(support_z, dim=-1), support_onehot, self.C, self.steps)
        return F.normalize(query_z, dim=-1) @ weight.T + bias


def logistic_regression(z: torch.Tensor, onehot: torch.Tensor, C: float, steps: int) -> tuple:
    """(weight `[classes, d]`, bias `[classes]`) minimising C sum_i CE(z_i W^T + b, y_i) + |W|^2 / 2 for rows
    `z` of norm at most 1 (scikit-learn's multinomial objective), by `steps` accelerated gradient steps."""
    n = z.shape[0]
    lam = 1.0 / (C * n)
    kappa = (1 + lam) / lam
    rate, momentum = 1 / (1 + lam), (kappa**0.5 - 1) / (kappa**0.5 + 1)
    weight = z.new_zeros(onehot.shape[1], z.shape[1])
    bias = z.new_zeros(onehot.shape[1])
    ahead_w, ahead_b = weight, bias
    for _ in range(steps):
        residual = (torch.softmax(z @ ahead_w.T + ahead_b, -1) - onehot) / n  # the mean loss's gradient by logit
        next_w = ahead_w - rate * (residual.T @ z + lam * ahead_w)
        next_b = ahead_b - rate * residual.sum(0)
        ahead_w, ahead_b = next_w + momentum * (next_w - weight), next_b + momentum * (next_b - bias)
        weight, bias = next_w, next_b
    return weight, bias
