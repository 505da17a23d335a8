"""Files that come from elsewhere (a checkpoint, a record, an episode file someone sends) are read, never run;
a damaged one is one paragraph, and what metaexp writes is readable by collaborators. In process where no
process boundary is under test."""

import json
import os
import stat

import pytest
import torch

import metaexp
from conftest import TINY, run_inline
from metaexp.algorithms.maml import MAML
from metaexp.errors import MetaexpError
from metaexp.evaluate import evaluate_checkpoint
from metaexp.trust import allowed


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished sinusoid run (trained in process)."""
    run = tmp_path_factory.mktemp("untrusted") / "run"
    metaexp.train(metaexp.compose(TINY), run)
    return run


def crafted(trained, tmp_path, config_change) -> tuple:
    """A copy of the run's last.pt whose config `config_change` rewrote, and the file its payload would write."""
    target = tmp_path / "written-by-the-checkpoint"
    payload = torch.load(trained / "checkpoints" / "last.pt", weights_only=True)
    config_change(payload["config"], str(target))
    (tmp_path / "checkpoints").mkdir()
    torch.save(payload, tmp_path / "checkpoints" / "last.pt")
    return tmp_path / "checkpoints" / "last.pt", target


def write_text(path: str, prefix: str = "pathlib.") -> dict:
    return {"_target_": f"{prefix}Path.write_text", "_args_": [{"_target_": f"{prefix}Path", "_args_": [path]}, "x"]}


def evaluate(checkpoint, *overrides):
    return evaluate_checkpoint(
        metaexp.compose([f"checkpoint={checkpoint}", "eval.episodes=4", "trainer.device=cpu", *overrides], "eval")
    )


@pytest.mark.parametrize(
    "change",
    [
        lambda config, path: config.update(dataset=write_text(path)),
        lambda config, path: config.update(dataset=write_text(path, "metaexp.datasets.omniglot.")),  # via an import
        lambda config, path: config["algorithm"].update(extra=write_text(path)),  # nested in a component
        lambda config, path: config["sampler"].update(_target_="builtins.print"),
    ],
    ids=["pathlib", "through-a-metaexp-module", "nested", "builtin"],
)
def test_a_crafted_checkpoint_config_runs_nothing_in_eval_or_load_run(trained, tmp_path, change):
    checkpoint, target = crafted(trained, tmp_path, change)
    with pytest.raises(MetaexpError, match="is not a metaexp component") as refused:
        evaluate(checkpoint)
    assert "trust=" in str(refused.value)
    with pytest.raises(MetaexpError, match="is not a metaexp component"):
        metaexp.load_run(tmp_path, checkpoint="last")
    assert not target.exists()


def test_the_cli_refuses_a_crafted_checkpoint_in_one_paragraph(trained, tmp_path):
    checkpoint, target = crafted(trained, tmp_path, lambda config, path: config.update(dataset=write_text(path)))
    result = run_inline("eval", f"checkpoint={checkpoint}", "trainer.device=cpu", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    assert "dataset._target_='pathlib.Path.write_text'" in " ".join(result.stdout.split())
    assert not target.exists()


def test_which_targets_a_saved_config_may_name():
    assert allowed("metaexp.algorithms.maml.MAML", ())
    assert allowed("metaexp.datasets.sinusoid.Sinusoid", ())
    assert allowed("torch.optim.Adam", ()) and allowed("torch.optim.lr_scheduler.StepLR", ())
    assert not allowed("metaexp.checkpoint.save", ())  # a metaexp function that writes files
    assert not allowed("metaexp.datasets.omniglot.Path", ())  # pathlib's class, reached through a metaexp module
    assert not allowed("torch.optim.swa_utils.torch.save", ())
    assert not allowed("builtins.open", ()) and not allowed("os.system", ())
    assert not allowed("collections.OrderedDict", ())
    assert allowed("collections.OrderedDict", ("collections.",))  # the user's own opt-in


class OwnMAML(MAML):
    """A researcher's own algorithm, outside metaexp."""


def test_a_users_own_class_loads_once_its_module_is_trusted(trained, tmp_path):
    crafted(trained, tmp_path, lambda config, path: config["algorithm"].update(_target_=f"{__name__}.OwnMAML"))
    with pytest.raises(MetaexpError, match="is not a metaexp component"):
        metaexp.load_run(tmp_path, checkpoint="last")
    assert isinstance(metaexp.load_run(tmp_path, checkpoint="last", trust=[f"{__name__}."]).algorithm, OwnMAML)


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", "is not a readable checkpoint (EOFError)"),
        (b"garbage" * 10, "is not a readable checkpoint"),
    ],
    ids=["empty", "garbage"],
)
def test_an_unreadable_checkpoint_is_one_sentence_without_unsafe_advice(tmp_path, content, words):
    (tmp_path / "last.pt").write_bytes(content)
    with pytest.raises(MetaexpError, match=words.replace("(", r"\(").replace(")", r"\)")) as refused:
        evaluate(tmp_path / "last.pt")
    assert "weights_only" not in str(refused.value)


class Custom:
    """An object a weights-only load refuses."""


def test_a_checkpoint_holding_objects_is_refused_without_torchs_advice(tmp_path):
    torch.save({"params": {}, "config": {}, "step": 0, "extra": Custom()}, tmp_path / "last.pt")
    with pytest.raises(MetaexpError, match="objects other than tensors") as refused:
        evaluate(tmp_path / "last.pt")
    assert "weights_only" not in str(refused.value)


def test_a_checkpoint_whose_config_is_a_string_is_one_paragraph(trained, tmp_path):
    checkpoint = trained / "checkpoints" / "last.pt"
    payload = torch.load(checkpoint, weights_only=True)
    torch.save({**payload, "config": "dataset: x"}, tmp_path / "last.pt")
    with pytest.raises(MetaexpError, match="params and config as mappings"):
        evaluate(tmp_path / "last.pt")


def test_an_empty_last_pt_elsewhere_under_outputs_does_not_stop_a_resume_auto_run(tmp_path):
    broken = tmp_path / "outputs" / "old" / "checkpoints"
    broken.mkdir(parents=True)
    (broken / "last.pt").write_bytes(b"")
    cfg = metaexp.compose([*TINY, f"paths.output_dir={tmp_path / 'outputs'}", "trainer.resume=auto"])
    metaexp.train(cfg, tmp_path / "outputs" / "new")
    assert (tmp_path / "outputs" / "new" / "checkpoints" / "last.pt").is_file()


def test_checkpoints_reports_and_records_follow_the_umask(trained, tmp_path):
    old = os.umask(0o022)
    try:
        metaexp.train(metaexp.compose(TINY), tmp_path / "run")
        evaluate(tmp_path / "run")
    finally:
        os.umask(old)
    (report,) = (tmp_path / "run").glob("eval-*.json")
    for path in (tmp_path / "run" / "checkpoints" / "last.pt", tmp_path / "run" / "checkpoints" / "best.pt", report):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


@pytest.fixture
def episode_folder(trained, tmp_path):
    """An image folder data set run's view: a folder with an episode file beside one real image."""
    from PIL import Image

    folder = tmp_path / "episodes"
    folder.mkdir()
    Image.new("L", (28, 28)).save(folder / "inside.png")
    Image.new("L", (28, 28)).save(tmp_path / "outside.png")
    return folder


@pytest.mark.parametrize(
    "ref, words",
    [
        ("../outside.png", "lies outside the episode file's folder"),
        ("{outside}", "lies outside the episode file's folder"),  # an absolute path
        ("/dev/zero", "lies outside the episode file's folder"),
        ("fifo", "is not a file"),
        ("missing.png", "is not a file"),
    ],
    ids=["dotdot", "absolute", "dev-zero", "fifo", "missing"],
)
def test_an_episode_file_reads_only_files_inside_its_folder(episode_folder, ref, words):
    from metaexp.episodes import load_episodes

    os.mkfifo(episode_folder / "fifo")
    ref = ref.format(outside=episode_folder.parent / "outside.png")
    document = {"format": 1, "split": "test", "episodes": [{"support": [["inside.png", 0]], "query": [[ref, 0]]}]}
    (episode_folder / "episodes.json").write_text(json.dumps(document))
    with pytest.raises(MetaexpError, match=words):
        load_episodes(episode_folder / "episodes.json")
