"""The presets of conf/experiment as a results table knows them: each one's published figures by test
setting, its full schedule, which records run it as published, and how long it is expected to take."""

import contextlib
import hashlib
import json
from pathlib import Path

from metaexp.errors import MetaexpError
from metaexp.files import replacing, user_cache
from metaexp.records import Record
from metaexp.version import __version__


def preset_tables() -> tuple:
    """Each conf/experiment preset's published figures, keyed by test setting (e.g. {"5w1s": 0.988}; None where
    the paper gives no figure for a setting the preset is tested in), and its full schedule: (tasks, work per
    task, steps), the work being examples per task times passes over them (inner steps plus the query pass).

    Composing every preset takes seconds, so the answer is kept in the user's cache under a hash of every
    config file: a changed config composes afresh."""
    from metaexp.configs import config_dir

    conf = Path(config_dir())
    digest = hashlib.sha256(f"{__version__} tables/3".encode())  # tables/3: with the steps
    for path in sorted(conf.rglob("*.yaml")):
        digest.update(f"{path.relative_to(conf)}\0".encode() + path.read_bytes() + b"\0")
    cached = user_cache() / f"presets-{digest.hexdigest()[:20]}.json"
    try:
        kept = json.loads(cached.read_text())
        return kept["tables"], {preset: tuple(schedule) for preset, schedule in kept["tasks"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        tables, tasks = composed_preset_tables(conf)
    with contextlib.suppress(MetaexpError):  # no writable cache: compose again next time
        with replacing(cached, "w") as file:
            file.write(json.dumps({"tables": tables, "tasks": tasks}))
    return tables, tasks


def composed_preset_tables(conf: Path) -> tuple:
    """preset_tables, composed from the config tree `conf`."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    tables, tasks = {}, {}
    with initialize_config_dir(str(conf), version_base="1.3"):
        for path in sorted((conf / "experiment").glob("*.yaml")):
            cfg = compose("train", overrides=[f"experiment={path.stem}"])
            s = cfg.sampler
            examples = s.get("trajectories") or s.get("ways", 1) * (s.get("shots", 0) + s.get("queries", 0))
            passes = 1 + (cfg.algorithm.get("inner_steps") or 0)
            tasks[path.stem] = (cfg.trainer.steps * cfg.trainer.meta_batch, examples * passes, cfg.trainer.steps)
            published = cfg.test.get("published")
            table = OmegaConf.to_container(published) if published else {}
            # The preset's own test setting, as its task family names it: the figures it inherits for other
            # settings are set to null, and its own is listed even where the paper gives none.
            family = get_class(cfg.sampler._target_)
            own = family.label(OmegaConf.merge(cfg.sampler, cfg.test.get("sampler") or {}))
            tables[path.stem] = {k: v for k, v in table.items() if v is not None or k == own}
            if family.test_overrides(own) is not None:
                tables[path.stem].setdefault(own, None)
    return tables, tasks


# Overrides that leave a preset as its paper ran it: schedule and device (a shortened run says so in its
# status), seed, where the data lives, loggers. Any other override makes a variant, which has no published figure.
AS_PUBLISHED = ("experiment=", "trainer.", "seed=", "dataset.root=", "logger", "paths.", "hydra.")


def runs_preset(record: Record, tables: dict) -> bool:
    return record.preset in tables and all(o.startswith(AS_PUBLISHED) for o in record.overrides)


def attach_published(records: list, tables: dict) -> None:
    for r in records:
        if r.test is not None and runs_preset(r, tables):
            r.published = tables[r.preset].get(r.test)


def expected_time(preset: str, tasks: dict, records: list) -> str:
    """The preset's full schedule on each machine with a record to time it: at the throughput a recorded run of
    the preset measured (a shortened one, say), or else a run of the same algorithm on the same data set scaled
    by the work per task (examples times passes: on one H200, MAML's 20-way 5-step tasks cost 13x its 5-way
    1-step ones in `bench_engine.py`, and this scale says 12x)."""
    family = preset.rsplit("_", 1)[0]
    timed = [r for r in records if r.tasks_per_sec and r.preset in tasks]
    same = [r for r in timed if r.preset == preset] or [r for r in timed if r.preset.startswith(family + "_")]
    if not same:
        return "no run of its algorithm and data set recorded to time it"
    by_machine = {}
    for r in same:
        by_machine.setdefault(r.machine or "the machine of its record", []).append(r)
    estimates = []
    for machine, mine in sorted(by_machine.items()):
        run = min(mine, key=lambda r: r.tasks_per_sec)  # the slowest record: an estimate that errs long
        rate = run.tasks_per_sec * tasks[run.preset][1] / tasks[preset][1]
        basis = "" if run.preset == preset else f", scaled from {run.preset}"
        hours = tasks[preset][0] / rate / 3600
        span = f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.0f} min"
        estimates.append(f"about {span} on {machine}{basis}")
    return "; ".join(estimates)


def preset_records(records: list, tables: dict, tasks: dict) -> list:
    """A 'not yet run' record for each test setting of each preset that no run evaluated, with its expected time."""
    done = {(r.preset, r.test) for r in records if r.test_mean is not None and runs_preset(r, tables)}
    return [
        Record(
            run=preset,
            label=preset,
            config=preset,
            preset=preset,
            test=setting_name,
            n_seeds=0,
            published=value,
            status="; ".join(
                ["not yet run", expected_time(preset, tasks, records)]
                + ([] if value is not None else ["the paper gives no figure"])
            ),
        )
        for preset, table in tables.items()
        for setting_name, value in table.items()
        if (preset, setting_name) not in done
    ]
