"""The Python API: compose -> train -> load_run -> adapt, with no Hydra run, gives what the CLI gives."""

import torch

import metaexp
from metaexp.samplers import task_generator


def test_compose_train_load_and_adapt_in_a_notebook(tmp_path):
    cfg = metaexp.compose(
        [
            "trainer.steps=6",
            "trainer.val_every=3",
            "trainer.val_tasks=10",
            "trainer.meta_batch=5",
            "trainer.log_every=2",
            "trainer.device=cpu",
        ]
    )
    best = metaexp.train(cfg, tmp_path / "run")
    assert best > 0 and (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
    assert (tmp_path / "run" / ".hydra" / "config.yaml").is_file()

    run = metaexp.load_run(tmp_path / "run")
    assert run.step in (3, 6) and [r["step"] for r in run.metrics if r["split"] == "val"] == [3, 6]
    components = metaexp.build(run.cfg)
    batch = components.val_sampler.sample(4, task_generator(0, "val", "cpu"))
    losses, _ = run.algorithm.evaluate(run.params, batch)
    for task in range(4):
        predict = run.algorithm.adapt(run.params, batch.support_x[task], batch.support_y[task])
        loss = run.algorithm.objective.loss(predict(batch.query_x[task]), batch.query_y[task])
        torch.testing.assert_close(loss, losses[task], rtol=1e-5, atol=0)


def test_adapt_matches_each_algorithms_own_evaluation():
    from metaexp.algorithms.anil import ANIL
    from metaexp.algorithms.protonet import ProtoNet
    from metaexp.algorithms.reptile import Reptile
    from metaexp.backbones.conv4 import Conv4
    from metaexp.objectives import CLASSIFICATION
    from conftest import random_batch

    batch = random_batch(2, 3)
    torch.manual_seed(0)
    for algorithm in (
        ProtoNet(Conv4(None, hidden=8), CLASSIFICATION, ways=3),
        ANIL(Conv4(3, hidden=8), CLASSIFICATION, inner_lr=0.5, inner_steps=2),
        Reptile(Conv4(3, hidden=8), CLASSIFICATION, inner_lr=0.1, inner_steps=2),
    ):
        params = algorithm.init_params()
        losses, _ = algorithm.evaluate(params, batch)
        for task in range(2):
            predict = algorithm.adapt(params, batch.support_x[task], batch.support_y[task])
            loss = algorithm.objective.loss(predict(batch.query_x[task]), batch.query_y[task])
            torch.testing.assert_close(loss, losses[task], rtol=1e-5, atol=0, msg=type(algorithm).__name__)


def test_load_run_rebuilds_a_policy_and_a_meta_network(tmp_path):
    """load_run on the two runs whose algorithm needs more than a sampler class's objective: a policy's objective
    is shaped by its environment, MetaNet's twin networks by its config; both score as in training."""
    from conftest import OMNIGLOT_LAKE, make_layout
    from metaexp.components import build, build_sampler
    from metaexp.trpo import meta_divergence

    tiny = [
        "trainer.device=cpu",
        "trainer.steps=2",
        "trainer.val_every=2",
        "trainer.val_tasks=2",
        "trainer.log_every=1",
    ]
    navigation = [
        "experiment=maml_navigation2d",
        "trainer.meta_batch=2",
        "sampler.trajectories=2",
        "dataset.horizon=10",
    ]
    metaexp.train(metaexp.compose([*navigation, *tiny]), tmp_path / "nav")
    run = metaexp.load_run(tmp_path / "nav", "last")
    assert run.step == 2 and run.algorithm.objective.divergence is not None
    sampler = build_sampler(run.cfg, build(run.cfg.dataset, "dataset"), "val", torch.device("cpu"))
    sampler.bind(run.algorithm, run.params, run.algorithm.inner_steps)
    batch = sampler.sample(2, task_generator(0, "val", "cpu"))
    assert abs(float(meta_divergence(run.algorithm, run.params, batch))) < 1e-6  # the policies that sampled it

    root = make_layout(tmp_path / "omniglot")
    metanet = ["experiment=metanet_omniglot_5w1s", *OMNIGLOT_LAKE, f"dataset.root={root}", "sampler.ways=2",
               "sampler.queries=1", "algorithm.chunks=2", "trainer.meta_batch=1"]  # fmt: skip
    metaexp.train(metaexp.compose([*metanet, *tiny]), tmp_path / "metanet")
    run = metaexp.load_run(tmp_path / "metanet", "last")
    components = metaexp.build(run.cfg)
    batch = components.val_sampler.sample(2, task_generator(0, "val", "cpu"))
    losses, scores = run.algorithm.evaluate(run.params, batch)
    assert losses.shape == (2,) and torch.isfinite(losses).all() and ((scores >= 0) & (scores <= 1)).all()
    validated = next(r for r in run.metrics if r["split"] == "val")
    assert validated["step"] == 2 and "accuracy" in validated
