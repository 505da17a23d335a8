"""Test-time batch norm (`test.norm`): `episode` normalises with each batch's own statistics (transductive, as
the MAML papers test), `training` with statistics of training images (ProtoNets, Matching Networks,
MetaOptNet), under which a query's prediction no longer depends on the other queries of its episode."""

import pytest
import torch

from conftest import OMNIGLOT_LAKE, TINY, eval_reports, make_layout, run_inline
from metaexp.algorithms.protonet import ProtoNet
from metaexp.backbones import predict
from metaexp.backbones.conv4 import Conv4
from metaexp.backbones.layers import BatchNorm, batch_statistics, training_statistics
from metaexp.objectives import CLASSIFICATION


def small_model():
    torch.manual_seed(0)
    return Conv4(out_features=None, hidden=8)


def test_statistics_are_the_mean_of_the_batch_statistics_and_are_dropped_after_the_block():
    model, images = small_model(), torch.rand(40, 1, 28, 28)
    params = dict(model.named_parameters())
    first = next(m for m in model.modules() if isinstance(m, BatchNorm))
    conv = model.features[0].conv
    expected = [batch_statistics(conv(chunk)) for chunk in images.split(10)]
    with training_statistics(model, params, images, batch=10):
        for got, want in zip(first.fixed, zip(*expected)):
            torch.testing.assert_close(got, torch.stack(want).mean(0))
    assert all(m.fixed is None for m in model.modules() if isinstance(m, BatchNorm))
    with pytest.raises(RuntimeError), training_statistics(model, params, images):
        raise RuntimeError("inside")
    assert all(m.fixed is None for m in model.modules() if isinstance(m, BatchNorm))


def test_training_statistics_make_a_query_independent_of_the_other_queries():
    model = small_model()
    algorithm = ProtoNet(model, CLASSIFICATION, ways=5)
    params = algorithm.init_params()
    g = torch.Generator().manual_seed(1)
    support, labels, queries = torch.rand(5, 1, 28, 28, generator=g), torch.arange(5), torch.rand(10, 1, 28, 28)

    def first_query_logits(query_x):
        return algorithm.adapt(params, support, labels)(query_x)[0]

    alone, together = first_query_logits(queries[:1]), first_query_logits(queries)
    assert not torch.allclose(alone, together, atol=1e-4)  # episode statistics: transductive
    with training_statistics(model, params, torch.rand(100, 1, 28, 28, generator=g)):
        torch.testing.assert_close(first_query_logits(queries[:1]), first_query_logits(queries))
        assert predict(model, params, queries).shape == (10, 8)


def test_one_checkpoint_is_evaluated_both_ways_and_both_reports_are_kept(tmp_path):
    root = make_layout(tmp_path / "omniglot")
    run = tmp_path / "run"
    # MetaOptNet: its `meta.scale` is no weight of the backbone the statistics pass through (that crashed once).
    args = [*OMNIGLOT_LAKE, f"dataset.root={root}", "algorithm=metaoptnet", "sampler.ways=2", "sampler.queries=1"]
    trained = run_inline("train", *TINY, *args, f"hydra.run.dir={run}", cwd=tmp_path)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    for norm in ("episode", "training"):
        result = run_inline("eval", f"checkpoint={run}", "eval.episodes=10", "trainer.device=cpu", f"test.norm={norm}",
                         cwd=tmp_path)  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
    reports = eval_reports(run)
    assert sorted(r["settings"]["norm"] for r in reports.values()) == ["episode", "training"]
    assert any("trainingnorm" in name for name in reports)
    bad = run_inline("eval", f"checkpoint={run}", "test.norm=running", cwd=tmp_path)
    assert bad.returncode == 2 and "test.norm='running' is not valid" in bad.stdout, bad.stdout
    table = run_inline("summarize", run, "--markdown", cwd=tmp_path).stdout
    assert "| 2w1s |" in table and "| 2w1s (episode norm) |" in table  # the run's own protocol is training
