"""Meta-SGD (Li et al. 2017): MAML with a learned inner learning rate for every weight."""

import torch

from metaexp.algorithms.maml import MAML


class MetaSGD(MAML):
    def init_params(self) -> dict:
        params = super().init_params()
        params.update({f"meta.lr.{k}": torch.full_like(v, self.inner_lr) for k, v in self.inner_params(params).items()})
        return params

    def inner_rate(self, params: dict, name: str, step: int):
        return params[f"meta.lr.{name}"]
