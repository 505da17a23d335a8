"""Every config composes, and every preset builds its data set, backbone and algorithm without training
(lightning-hydra-template's test_configs.py pattern): milliseconds each, and all of them guarded."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from metaexp.algorithms.base import Algorithm
from metaexp.api import config_dir

CONF = Path(config_dir())
PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
SETTINGS = sorted(p.stem for p in (CONF / "setting").glob("*.yaml"))
# The algorithms of the settings' names; baseline_pp before baseline, which it starts with.
ALGORITHMS = ("anil", "baseline_pp", "baseline", "fomaml", "maml", "matchingnet", "metanet", "metaoptnet", "metasgd")
ALGORITHMS += ("protomaml", "protonet", "reptile", "rfs", "simpleshot")
GROUPS = ["dataset", "sampler", "backbone", "algorithm", "optim", "scheduler", "logger"]


@pytest.fixture(scope="module", autouse=True)
def hydra():
    with initialize_config_dir(str(CONF), version_base="1.3"):
        yield


def composed(*overrides):
    return compose("train", overrides=list(overrides), return_hydra_config=False)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_builds_its_data_set_backbone_and_algorithm(preset):
    cfg = composed(f"experiment={preset}")
    assert OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    dataset = instantiate(cfg.dataset)  # data sets read their files lazily, on split()
    assert type(dataset).__name__ in cfg.dataset._target_
    model = instantiate(cfg.backbone)
    # The task family gives its objective without a task drawn (a rollout sampler's is shaped by its environment).
    objective = get_class(cfg.sampler._target_).objective_from(lambda: dataset, cfg.sampler)
    algorithm = instantiate(cfg.algorithm, model=model, objective=objective)
    assert isinstance(algorithm, Algorithm) and algorithm.init_params()
    assert (
        cfg.test.get("source")
        or cfg.test.get("published") is None
        or all(v is None for v in cfg.test.published.values())
    ), "a published figure names its source"


def test_every_preset_is_listed():
    assert len(PRESETS) == 86


@pytest.mark.parametrize("setting", SETTINGS)
def test_algorithm_and_data_set_alone_get_the_published_setting(setting):
    """`algorithm=X dataset=Y` composes exactly as the X_Y 5-way 1-shot preset, less its published figure."""
    algorithm, dataset = next((a, setting[len(a) + 1 :]) for a in ALGORITHMS if setting.startswith(a + "_"))
    preset = f"{algorithm}_{dataset.replace('_', '')}_5w1s"
    plain = OmegaConf.to_container(composed(f"algorithm={algorithm}", f"dataset={dataset}"))
    paper = OmegaConf.to_container(composed(f"experiment={preset}"))
    for cfg in (plain, paper):
        cfg["test"].pop("published", None)
        cfg["test"].pop("source", None)
    assert plain == paper


@pytest.mark.parametrize("algorithm", ["protonet", "matchingnet"])
def test_metric_learners_on_omniglot_get_their_papers_max_pool_network(algorithm):
    for preset in (p for p in PRESETS if p.startswith(f"{algorithm}_omniglot_")):
        model = instantiate(composed(f"experiment={preset}").backbone)
        assert isinstance(model.features[0].pool, torch.nn.MaxPool2d) and model.embedding_size == 64, preset
    assert not composed("algorithm=maml", "dataset=omniglot").backbone.max_pool  # MAML's strided Conv-4


@pytest.mark.parametrize("backbone", ["resnet12", "conv4", "mlp"])
def test_a_settings_backbone_variant_does_not_reach_another_backbone(backbone):
    """protonet_mini_imagenet asks for 64 filters; ResNet-12 or an MLP picked on the command line still builds."""
    assert instantiate(composed("algorithm=protonet", "dataset=mini_imagenet", f"backbone={backbone}").backbone)


def test_the_command_line_wins_over_the_published_setting():
    cfg = composed("algorithm=maml", "dataset=omniglot", "algorithm.inner_lr=0.1", "trainer.meta_batch=4")
    assert cfg.algorithm.inner_lr == 0.1 and cfg.trainer.meta_batch == 4 and cfg.sampler.queries == 1


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes(group):
    for option in sorted(p.stem for p in (CONF / group).glob("*.yaml")):
        extra = ["dataset.root=/data"] if group == "dataset" and option == "image_folder" else []
        assert composed(f"{group}={option}", *extra)[group] is not None


def test_configs_of_earlier_checkpoints_are_upgraded():
    from metaexp.checkpoint import upgraded

    old = {
        "backbone": {"_target_": "metaexp.models.conv4.Conv4"},
        "dataset": {"_target_": "metaexp.data.omniglot.Omniglot"},
        "sampler": {"_target_": "metaexp.tasks.EpisodeSampler"},
        "algorithm": {"_target_": "metaexp.algorithms.maml.MAML", "eval_inner_steps": None},
        "test": {"inner_steps": 3},
    }
    new = upgraded(old)
    assert new["backbone"]["_target_"] == "metaexp.backbones.conv4.Conv4"
    assert new["dataset"]["_target_"] == "metaexp.datasets.omniglot.Omniglot"
    assert new["sampler"]["_target_"] == "metaexp.samplers.EpisodeSampler"
    assert OmegaConf.create(new).algorithm.eval_inner_steps == 3
    current = OmegaConf.to_container(composed("experiment=maml_omniglot_5w1s"))
    assert upgraded(current) == current
    # That every shipped class is importable at its new path, test_preset_builds_... shows for every preset.
