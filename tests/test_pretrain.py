"""Pretrain-then-adapt (Baseline, Baseline++, SimpleShot, RFS): the supervised sampler's mini-batches cover every
training class and only them, each test-time head equals a direct computation on fixed features (nearest
centroid by hand, scikit-learn's logistic regression, a plain torch.optim.SGD loop), the vmapped episodes equal
one at a time, and a pretraining run resumes bit-identically and is evaluated on episodes without its
classifier."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from conftest import OMNIGLOT_LAKE, make_layout, metrics, only_report, run_inline, straight_and_resumed
from metaexp.algorithms.baseline import Baseline
from metaexp.algorithms.baseline_pp import BaselinePlusPlus
from metaexp.algorithms.rfs import RFS, logistic_regression
from metaexp.algorithms.simpleshot import SimpleShot
from metaexp.backbones.mlp import MLP
from metaexp.components import build_sampler
from metaexp.datasets.store import from_classes
from metaexp.objectives import CLASSIFICATION
from metaexp.samplers import TaskBatch

SPLITS = {"train": 7, "val": 3, "test": 4}  # classes per split


class Identified:
    """A data set whose every image names its split and class in its pixels (a marker of 200 at (0, 0), so a
    quarter turn shows; split s at (1, 0) as s + 1, class c at (0, 1) as c + 1)."""

    def split(self, name):
        s = list(SPLITS).index(name)
        classes = []
        for c in range(SPLITS[name]):
            x = torch.zeros(5, 1, 4, 4, dtype=torch.uint8)
            x[:, 0, 0, 0], x[:, 0, 1, 0], x[:, 0, 0, 1] = 200, s + 1, c + 1
            classes.append(x)
        return from_classes(classes, [f"{name}{c}" for c in range(SPLITS[name])])._replace(rotations=True)


def sampler(split, **settings):
    cfg = OmegaConf.create({"sampler": {"_target_": "metaexp.samplers.PretrainSampler", "ways": 3, "shots": 1,
                                        "queries": 2, "batch_size": 32, **settings}})  # fmt: skip
    return build_sampler(cfg, Identified(), split, torch.device("cpu"))


def test_training_batches_cover_every_training_class_and_no_other_and_episodes_elsewhere():
    train = sampler("train")
    assert train.classes == train.outputs == 7 * 4  # quarter turns are classes of their own
    batch = train.sample(20, torch.Generator().manual_seed(0))
    assert batch.support_x.shape[1] == 0 and batch.query_x.shape == (20, 32, 1, 4, 4)
    seen = set()
    for image, label in zip(batch.query_x.flatten(0, 1), batch.query_y.flatten().tolist()):
        turns = next(q for q in range(4) if round(255 * torch.rot90(image, -q, dims=(-2, -1))[0, 0, 0].item()) == 200)
        upright = torch.rot90(image, -turns, dims=(-2, -1))[0] * 255
        assert round(upright[1, 0].item()) == 1  # a training image, never a validation or test one
        assert label == round(upright[0, 1].item()) - 1 + 7 * turns  # its class, turned as labelled
        seen.add(label)
    assert seen == set(range(28))
    val = sampler("val").sample(4, torch.Generator().manual_seed(0))  # the same episodes as sampler=episodic
    assert val.support_x.shape == (4, 3, 1, 4, 4) and val.query_y.shape == (4, 6)
    assert set(val.support_y.flatten().tolist()) == {0, 1, 2}


def features(seed=0, ways=5, shots=2, queries=3, d=8):
    g = torch.Generator().manual_seed(seed)
    support = torch.randn(ways * shots, d, generator=g, dtype=torch.float64)
    query = torch.randn(ways * queries, d, generator=g, dtype=torch.float64)
    onehot = F.one_hot(torch.arange(ways).repeat_interleave(shots), ways).double()
    return support, onehot, query


def head_of(kind, ways=5, **settings):
    torch.manual_seed(0)
    return kind(MLP(out_features=None, in_features=8, hidden=(8,)), CLASSIFICATION, ways=ways, **settings)


def test_simpleshot_is_the_nearest_normalised_centroid():
    support, onehot, query = features()
    logits = head_of(SimpleShot).logits({}, support, onehot, query)
    unit = [[[v / math.sqrt(sum(u * u for u in x)) for v in x] for x in rows.tolist()] for rows in (support, query)]
    labels = onehot.argmax(-1).tolist()
    centroids = [[sum(col) / labels.count(c) for col in zip(*(x for x, y in zip(unit[0], labels) if y == c))]
                 for c in range(5)]  # fmt: skip
    for q, row in zip(unit[1], logits.tolist()):
        distances = [sum((a - b) ** 2 for a, b in zip(q, c)) for c in centroids]
        assert row == pytest.approx([-d for d in distances], abs=1e-12)


@pytest.mark.parametrize("shots", [1, 5])
def test_rfs_fits_scikit_learns_logistic_regression(shots):
    linear_model = pytest.importorskip("sklearn.linear_model", reason="scikit-learn (make install-dev) is RFS's solver")
    support, onehot, query = features(shots=shots)
    unit = F.normalize(support, dim=-1)
    weight, bias = logistic_regression(unit, onehot, C=1.0, steps=300)
    reference = linear_model.LogisticRegression(C=1.0, tol=1e-12, max_iter=10_000).fit(unit, onehot.argmax(-1))
    torch.testing.assert_close(weight, torch.from_numpy(reference.coef_), rtol=0, atol=1e-6)
    torch.testing.assert_close(bias, torch.from_numpy(reference.intercept_), rtol=0, atol=1e-6)
    logits = head_of(RFS).logits({}, support, onehot, query)
    expected = reference.predict_proba(F.normalize(query, dim=-1))
    torch.testing.assert_close(logits.softmax(-1), torch.from_numpy(expected), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", [Baseline, BaselinePlusPlus])
def test_the_fine_tuned_head_is_a_plain_sgd_loop(kind):
    support, onehot, query = features()
    algorithm = head_of(kind, steps=30)
    head = {k: v.double().clone().requires_grad_() for k, v in algorithm.start.items()}
    optimizer = torch.optim.SGD(head.values(), lr=0.01, momentum=0.9, dampening=0.9, weight_decay=1e-3)
    for _ in range(30):
        optimizer.zero_grad()
        F.cross_entropy(algorithm.classify(head, support), onehot.argmax(-1)).backward()
        optimizer.step()
    with torch.no_grad():  # as at evaluation: the fine-tuning's own gradients still flow (torch.func)
        ours = algorithm.logits({}, support, onehot, query)
        torch.testing.assert_close(ours, algorithm.classify(head, query), rtol=0, atol=1e-10)
    assert head_of(kind).steps is None  # by default as many steps as the paper's updates: 100 x ceil(10 / 4)


@pytest.mark.parametrize("kind", [SimpleShot, RFS, Baseline, BaselinePlusPlus])
def test_episodes_vmapped_equal_one_at_a_time(kind):
    algorithm = head_of(kind, ways=3)
    params = algorithm.init_params()
    g = torch.Generator().manual_seed(1)
    batch = TaskBatch(torch.randn(4, 6, 8, generator=g), torch.arange(3).repeat(2).expand(4, 6),
                      torch.randn(4, 9, 8, generator=g), torch.arange(3).repeat(3).expand(4, 9))  # fmt: skip
    losses, scores = algorithm.evaluate(params, batch)
    for i in range(4):
        loss, _, score = algorithm.task_loss(params, *(t[i] for t in batch), step=None)
        torch.testing.assert_close(losses[i], loss)
        assert scores[i] == score


def test_pretraining_resumes_bit_identically_and_tests_on_episodes_without_its_classifier(tmp_path):
    root = make_layout(tmp_path / "omniglot")
    # Lake's split of the fixture: 4 training characters (x 4 turns), 2 validation, 4 test.
    run = [*OMNIGLOT_LAKE, f"dataset.root={root}", "algorithm=baseline_pp", "sampler.ways=2", "sampler.queries=1",
           "sampler.batch_size=8", "trainer.meta_batch=2", "trainer.steps=4", "trainer.val_every=2",
           "trainer.val_tasks=4", "trainer.log_every=1", "trainer.device=cpu", "algorithm.steps=5"]  # fmt: skip
    a, b = straight_and_resumed(run, tmp_path)
    assert a["meta.classifier.direction"].shape == (16, 64) and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = metrics(tmp_path / "resumed")
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4]
    assert all(0 <= r["accuracy"] <= 1 for r in rows)

    episodes = tmp_path / "episodes.json"
    tested = run_inline("eval", f"checkpoint={tmp_path / 'resumed'}", "trainer.device=cpu", "eval.episodes=6",
                        f"eval.save_episodes={episodes}", cwd=tmp_path)  # fmt: skip
    assert tested.returncode == 0, tested.stdout + tested.stderr
    report = only_report(tmp_path / "resumed")
    assert report["settings"]["label"] == "2w1s" and report["episodes"] == 6 and 0 <= report["mean"] <= 1
    # The same episodes from their file (as any other algorithm's) score the same.
    again = run_inline("eval", f"checkpoint={tmp_path / 'resumed'}", "trainer.device=cpu",
                       f"eval.episodes_file={episodes}", f"eval.output={tmp_path / 'again.json'}",
                       cwd=tmp_path)  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads((tmp_path / "again.json").read_text())["mean"] == report["mean"]


def test_an_episodic_algorithm_on_pretraining_batches_is_refused(tmp_path):
    root = make_layout(tmp_path / "omniglot")
    refused = run_inline("train", *OMNIGLOT_LAKE, f"dataset.root={root}", "algorithm=protonet", "sampler=pretrain",
                         "sampler.ways=2", "sampler.queries=1", "trainer.device=cpu",
                         f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)  # fmt: skip
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "ProtoNet trains on a task family's own sampler" in refused.stdout and "sampler=pretrain" in refused.stdout
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_augmented_images_are_flips_and_shifted_crops_of_their_originals():
    train = sampler("train", flip=True, crop_padding=1, rotations=False)
    plain = sampler("train", rotations=False)
    generator = torch.Generator().manual_seed(3)
    images = plain.sample(1, torch.Generator().manual_seed(3)).query_x[0]
    augmented = train.augmented(images, generator)
    padded = F.pad(images, (1, 1, 1, 1))
    kinds = set()
    for original, padded_one, new in zip(images, padded, augmented):
        found = [
            (flip, dy, dx)
            for flip in (False, True)
            for dy in range(3)
            for dx in range(3)
            if torch.equal((padded_one.flip(-1) if flip else padded_one)[:, dy : dy + 4, dx : dx + 4], new)
        ]
        assert found, "an augmented image is a flipped or unflipped crop of its padded original"
        kinds.update(found)
    assert {flip for flip, _, _ in kinds} == {False, True} and len({(dy, dx) for _, dy, dx in kinds}) > 3
