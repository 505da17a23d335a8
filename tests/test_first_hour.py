"""What a researcher meets in the first hour: the headline command's setting, own backbones with native
batch norm, rotations only where they are classes, installable ranges, version and machine records."""

import json
import tomllib

import pytest
import torch
from torch import nn

from conftest import OMNIGLOT_LAKE, ROOT, make_layout
from metaexp.algorithms.maml import MAML
from metaexp.algorithms.protonet import ProtoNet
from metaexp.datasets.store import from_classes
from metaexp.errors import MetaexpError
from metaexp.logs import rate
from metaexp.objectives import CLASSIFICATION
from metaexp.samplers import EpisodeSampler


class OwnBackbone(nn.Module):
    """What a user writes first: torch's own BatchNorm2d."""

    def __init__(self, track_running_stats):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, track_running_stats=track_running_stats), nn.Flatten()
        )
        self.head = nn.Linear(4 * 26 * 26, 5)


@pytest.mark.parametrize("track", [True, False])
def test_native_batch_norm_is_refused_with_the_replacement_named(track):
    for algorithm in (lambda m: MAML(m, CLASSIFICATION), lambda m: ProtoNet(m, CLASSIFICATION, ways=5)):
        with pytest.raises(MetaexpError, match=r"features\.1.*metaexp\.backbones\.layers\.BatchNorm"):
            algorithm(OwnBackbone(track))


def test_rotations_are_classes_for_omniglot_only(tmp_path):
    from metaexp.datasets.omniglot import Omniglot

    images = [torch.zeros(4, 3, 8, 8, dtype=torch.uint8) for _ in range(10)]
    natural = EpisodeSampler(from_classes(images, [str(c) for c in range(10)]), ways=5, shots=1, queries=1)
    assert not natural.rotations and natural.num_classes == 10
    with pytest.raises(MetaexpError, match="only 10 classes"):
        EpisodeSampler(from_classes(images, [str(c) for c in range(10)]), ways=20, shots=1, queries=1)
    omniglot = Omniglot(make_layout(tmp_path / "omniglot"), download=False)
    sampler = EpisodeSampler(omniglot.split("train"), ways=5, shots=1, queries=1)
    assert sampler.rotations and sampler.num_classes == 4 * len(omniglot.split("train").class_names)


@pytest.mark.slow
def test_headline_command_says_what_it_trains(cli, tmp_path):
    root = make_layout(tmp_path / "omniglot")
    result = cli(
        "train",
        "algorithm=maml",
        *OMNIGLOT_LAKE,
        f"dataset.root={root}",
        "trainer.steps=2",
        "trainer.val_every=2",
        "trainer.val_tasks=4",
        "trainer.meta_batch=4",
        "backbone.hidden=8",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    line = "training MAML on Omniglot: 5-way 1-shot, 1 queries per class, inner rate 0.4 x 1 steps, meta-batch 4"
    assert line in " ".join(result.stdout.split()) and line in (tmp_path / "run" / "train.log").read_text()
    machine = json.loads((tmp_path / "run" / "machine.json").read_text())
    assert {"git_commit", "git_dirty", "metaexp", "python", "torch"} <= set(machine)
    assert machine["git_commit"] is None or len(machine["git_commit"]) == 40


def test_dependencies_are_ranges_and_the_tested_set_is_pinned():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_spec = next(d for d in project["dependencies"] if d.startswith("torch"))
    assert "==" not in torch_spec and ">=2.11" in torch_spec, torch_spec
    pins = (ROOT / "constraints.txt").read_text()
    assert f"torch=={torch.__version__.split('+')[0]}" in pins


def test_every_config_folder_is_listed_as_package_data():
    """setuptools warns for each folder of package data not listed in `packages` (ci/wheel_check.sh fails on
    any warning of the build): a new folder of conf/ must be listed in pyproject.toml."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {
        ".".join(("metaexp", "conf", *folder.relative_to(ROOT / "conf").parts)).rstrip(".")
        for folder in [ROOT / "conf", *(ROOT / "conf").rglob("*")]
        if folder.is_dir() and "__pycache__" not in folder.parts
    }
    assert folders - listed == set(), f"list these in pyproject.toml's packages: {sorted(folders - listed)}"


def test_version_and_progress_rates(cli):
    result = cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == "metaexp 0.1.0"
    assert [rate(v) for v in (0.4123, 41.23, 4123.0)] == ["0.412", "41.2", "4,123"]
