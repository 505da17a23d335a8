"""The task samplers (metaexp/samplers.py): shapes, labels, distinct rows, rotations, determinism, setting names."""

import math

import pytest
import torch

from metaexp.datasets.sinusoid import Sinusoid
from metaexp.datasets.store import from_classes
from metaexp.errors import MetaexpError
from metaexp.samplers import EpisodeSampler, RegressionSampler, task_generator

SIZES = [6, 7, 9, 6, 8, 6, 10, 6]


def identified_split():
    """Class c, example i: a 4x4 image whose pixels spell (c, i) in an orientation-revealing corner pattern."""
    classes = []
    for c, n in enumerate(SIZES):
        x = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
        x[:, 0, 0, 0] = 200
        x[:, 0, 0, 1] = c + 1
        x[:, 0, 1, 0] = torch.arange(n, dtype=torch.uint8) + 1
        classes.append(x)
    return from_classes(classes, [f"c{c}" for c in range(len(SIZES))])


def identify(image):
    """(class, example, quarter turns) of a fixture image."""
    for quarter in range(4):
        upright = torch.rot90(image, -quarter, dims=(-2, -1))
        if upright[0, 0, 0] == 200:
            return int(upright[0, 0, 1]) - 1, int(upright[0, 1, 0]) - 1, quarter
    raise AssertionError("not a fixture image")


def test_episodes_have_distinct_classes_and_rows_and_consistent_labels():
    sampler = EpisodeSampler(identified_split(), ways=3, shots=2, queries=3, rotations=False)
    batch = sampler.sample(40, torch.Generator().manual_seed(0))
    assert batch.support_x.shape == (40, 6, 1, 4, 4) and batch.query_x.shape == (40, 9, 1, 4, 4)
    assert batch.support_x.dtype == torch.float32 and batch.support_x.max() <= 1.0
    assert torch.equal(batch.support_y[0], torch.tensor([0, 0, 1, 1, 2, 2]))
    for t in range(40):
        images = torch.cat([batch.support_x[t], batch.query_x[t]]).mul(255).round().byte()
        labels = torch.cat([batch.support_y[t], batch.query_y[t]])
        ids = [identify(x) for x in images]
        assert len({(c, i) for c, i, _ in ids}) == len(ids)
        by_label = {int(y): {c for (c, _, _), yy in zip(ids, labels) if yy == y} for y in labels}
        assert all(len(v) == 1 for v in by_label.values()) and len({next(iter(v)) for v in by_label.values()}) == 3
        assert all(i < SIZES[c] for c, i, _ in ids)


def test_rotations_are_classes_and_each_class_keeps_one_turn():
    sampler = EpisodeSampler(identified_split(), ways=5, shots=1, queries=2, rotations=True)
    assert sampler.num_classes == 4 * len(SIZES)
    batch = sampler.sample(200, torch.Generator().manual_seed(1))
    seen_turns = set()
    for t in range(200):
        images = torch.cat([batch.support_x[t], batch.query_x[t]]).mul(255).round().byte()
        labels = torch.cat([batch.support_y[t], batch.query_y[t]])
        per_label = {}
        for x, y in zip(images, labels):
            c, _, quarter = identify(x)
            per_label.setdefault(int(y), set()).add((c, quarter))
        assert all(len(v) == 1 for v in per_label.values())
        assert len({next(iter(v)) for v in per_label.values()}) == 5
        seen_turns |= {q for v in per_label.values() for _, q in v}
    assert seen_turns == {0, 1, 2, 3}


def test_sampling_is_deterministic_per_seed():
    sampler = EpisodeSampler(identified_split(), ways=4, shots=1, queries=1)
    a, b, c = (sampler.sample(8, torch.Generator().manual_seed(s)) for s in (3, 3, 4))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a.support_x, c.support_x)


def test_split_generators_differ_between_splits_and_ranks():
    states = {(s, r): task_generator(0, s, "cpu", r).initial_seed() for s in ("train", "val", "test") for r in (0, 1)}
    assert len(set(states.values())) == 6


def test_impossible_episodes_are_refused():
    with pytest.raises(MetaexpError, match=r"only 32 classes \(8 x 4 rotations\)"):
        EpisodeSampler(identified_split(), ways=33, shots=1, queries=1, rotations=True)
    with pytest.raises(MetaexpError, match="only 8 classes"):
        EpisodeSampler(identified_split(), ways=9, shots=1, queries=1)
    with pytest.raises(MetaexpError, match="smallest class of the split has 6"):
        EpisodeSampler(identified_split(), ways=2, shots=5, queries=2)


def test_sinusoid_tasks_follow_the_paper_ranges():
    sampler = RegressionSampler(Sinusoid(), shots=5, queries=7)
    batch = sampler.sample(4000, torch.Generator().manual_seed(0))
    assert batch.support_x.shape == (4000, 5, 1) and batch.query_y.shape == (4000, 7, 1)
    x = torch.cat([batch.support_x, batch.query_x], 1)
    y = torch.cat([batch.support_y, batch.query_y], 1)
    assert x.min() >= -5 and x.max() <= 5
    assert y.abs().max() <= 5.0 and y.abs().max() > 4.5
    amplitude_bound = y.abs().amax(1)
    assert amplitude_bound.min() < 0.5
    assert math.isclose(float(x.mean()), 0.0, abs_tol=0.05)


def test_a_setting_name_and_its_eval_overrides_invert_each_other():
    """`reproduce` evaluates a preset in each published setting by name: the name's overrides must spell the
    same setting again, and a name of another family is not taken for one of this family's."""
    from metaexp.rollouts import RolloutSampler

    settings = {"ways": 20, "shots": 5, "queries": 15}
    assert EpisodeSampler.label(settings) == "20w5s" and EpisodeSampler.report_label(settings) == "20w5s15q"
    assert EpisodeSampler.test_overrides("20w5s") == ["sampler.ways=20", "sampler.shots=5"]
    assert RegressionSampler.test_overrides("10shot") == ["sampler.shots=10"]
    assert EpisodeSampler.test_overrides("10shot") is None and RegressionSampler.test_overrides("5w1s") is None
    assert RolloutSampler.test_overrides("return_2steps") == [] and RolloutSampler.test_overrides("20traj") is None
    assert RolloutSampler.label({"trajectories": 40, "budget": None}) == "40traj"
    assert RolloutSampler.label({"trajectories": 40, "budget": 4000}) == "4000envsteps"
    assert RolloutSampler.report_label({"trajectories": 40, "budget": 4000}) == "4000envsteps"
    # A test that departs from the run's own in a setting the name does not spell says so.
    from metaexp.samplers import departures

    assert (
        departures(RolloutSampler, {"gamma": 0.99, "trajectories": 20}, {"gamma": 0.5, "trajectories": 40})
        == "-gamma0.5"
    )
