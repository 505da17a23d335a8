"""ANIL (Raghu et al. 2020): MAML that adapts only the linear head on top of a once-computed embedding."""
from metaexp.algorithms.maml import MAML
from metaexp.models import embed, head, with_prefix


class ANIL(MAML):
    def adapted(self, params: dict) -> dict:
        return {f"head.{k}": v for k, v in with_prefix(params, "head.").items()}

    def task_loss(self, params, support_x, support_y, query_x, query_y, step):
        support_z, query_z = embed(self.model, params, support_x), embed(self.model, params, query_x)
        return super().task_loss(params, support_z, support_y, query_z, query_y, step)

    def forward(self, params: dict, fast: dict, z):
        return head(self.model, fast, z)
