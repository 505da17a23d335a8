"""metaexp: config-driven meta-learning experiments.

In a notebook:
    import metaexp
    cfg = metaexp.compose(["algorithm=protonet", "dataset=omniglot", "trainer.steps=100"])
    metaexp.train(cfg, "runs/protonet")
    run = metaexp.load_run("runs/protonet")
    predict = run.algorithm.adapt(run.params, support_x, support_y)   # one task's support set
    logits = predict(query_x)
"""

from metaexp.version import __version__

__all__ = ["compose", "build", "train", "load_run", "__version__"]


def __getattr__(name: str):
    # Imported on first use: `python -m metaexp` installs its Ctrl-C handler before torch and hydra load.
    if name in __all__:
        from metaexp import api

        return getattr(api, name)
    raise AttributeError(f"module 'metaexp' has no attribute {name!r}")
