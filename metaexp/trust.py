"""Which `_target_`s a config that came from a file may name before anything of it is imported or built.

A checkpoint's weights load with `weights_only=True`, but `metaexp eval` and `metaexp.load_run` rebuild the
model from the config saved beside them, and Hydra's `instantiate` calls whatever a `_target_` names: a crafted
`pathlib.Path.write_text` writes a file (Hydra's own blocklist stops only `os.system` and `subprocess`). So a
config read from a checkpoint or a record names only metaexp's component classes and the optimizer and
schedule classes of torch, or classes under module prefixes the user named (`trust=[mylab.]`).
"""

import inspect

import torch
from hydra._internal.utils import _locate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from metaexp.errors import MetaexpError

# The packages a component's class may come from; a prefix is checked before anything is imported.
COMPONENTS = (
    "metaexp.algorithms.",
    "metaexp.backbones.",
    "metaexp.datasets.",
    "metaexp.samplers.",
    "metaexp.rollouts.",
    "metaexp.control.",
    "metaexp.trpo.",
)
TORCH = ("torch.optim.",)  # torch.optim.Adam, torch.optim.lr_scheduler.StepLR: checked to be such classes


def targets(node, path: str = ""):
    """(where, `_target_` value) of every node of a config that names one, interpolations resolved."""
    if isinstance(node, DictConfig):
        for key in node.keys():
            where = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                try:
                    yield where, node[key]
                except OmegaConfBaseException:
                    yield where, OmegaConf.to_container(node, resolve=False)[key]
            else:
                child = node._get_node(key)
                yield from targets(child if isinstance(child, (DictConfig, ListConfig)) else None, where)
    elif isinstance(node, ListConfig):
        for index in range(len(node)):
            child = node._get_node(index)
            yield from targets(child if isinstance(child, (DictConfig, ListConfig)) else None, f"{path}[{index}]")


def allowed(target, trust: tuple) -> bool:
    """Whether `target` names a class metaexp builds components from (or one under a trusted prefix). A name
    under those prefixes that does not exist passes: building it then says the config cannot be rebuilt."""
    if not isinstance(target, str) or not target.startswith((*COMPONENTS, *TORCH, *trust)):
        return False
    try:
        found = _locate(target)  # the very lookup `instantiate` makes, so both see the same object
    except ImportError:
        return True
    if not inspect.isclass(found):
        return False  # a function or a method (Path.write_text, checkpoint.save) is never a component
    home = found.__module__ + "."
    if home.startswith(trust) and target.startswith(trust):
        return True
    if home.startswith(COMPONENTS):
        return True
    return issubclass(found, (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler)) and home.startswith(TORCH)


def check_targets(config, source, trust=()) -> None:
    """Refuse, before any of it is built, a config from `source` whose `_target_`s name anything but
    metaexp's components, torch's optimizers and schedules, or classes under the `trust` prefixes."""
    config = config if isinstance(config, DictConfig) else OmegaConf.create(config)
    trust = tuple(str(t) for t in (trust or ()))
    for where, target in targets(config):
        if not allowed(target, trust):
            raise MetaexpError(
                f"The config saved in {source} names {where}={str(target)[:120]!r}, which is not a metaexp "
                f"component, nor a torch optimizer or learning-rate schedule. A checkpoint or record from "
                f"elsewhere could run code this way, so nothing of it was built or run. If the class is your "
                f"own (a module of yours the run was trained with), name its module prefix: trust=[mylab.] on "
                f"the command line, or load_run(..., trust=['mylab.'])."
            )
