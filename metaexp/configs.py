"""Where the config tree lives and how a config is composed from it, outside any Hydra run (the API,
`reproduce` and `summarize` compose presets with it)."""

from pathlib import Path

from omegaconf import DictConfig


def config_dir() -> str:
    """The config tree: `metaexp/conf` inside an installed wheel, `conf/` at the top of a source checkout."""
    here = Path(__file__).resolve().parent
    return str(next(c for c in (here / "conf", here.parent / "conf") if (c / "train.yaml").is_file()))


def compose(overrides: list | None = None, config_name: str = "train") -> DictConfig:
    """The config `metaexp train OVERRIDES...` would run, e.g. compose(["algorithm=protonet", "dataset=omniglot"])."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir(), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides or []))
