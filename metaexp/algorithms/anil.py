"""ANIL (Raghu et al. 2020): MAML that adapts only the linear head on top of a once-computed embedding."""

from metaexp.algorithms.maml import MAML
from metaexp.backbones import embed, head


class ANIL(MAML):
    adapts_policies = False  # its inner loop runs on embeddings, which a rollout never hands it

    def inner_params(self, params: dict) -> dict:
        return {k: v for k, v in params.items() if k.startswith("head.")}

    def task_loss(self, params, support_x, support_y, query_x, query_y, step):
        support_z, query_z = embed(self.model, params, support_x), embed(self.model, params, query_x)
        return super().task_loss(params, support_z, support_y, query_z, query_y, step)

    def adapted(self, params: dict, support_x, support_y) -> dict:
        return super().adapted(params, embed(self.model, params, support_x), support_y)

    def predict_adapted(self, weights: dict, x):
        return head(self.model, weights, embed(self.model, weights, x))

    def forward(self, fast: dict, z):
        return head(self.model, fast, z)
