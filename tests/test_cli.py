"""The CLI end to end, in subprocesses, on the embedded sinusoid benchmark with tiny budgets."""

import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from conftest import OMNIGLOT_LAKE, ROOT, TINY, make_layout, metrics, only_report


def rows(run_dir):
    return metrics(run_dir)


def stable(metrics):
    return [{k: v for k, v in r.items() if k not in ("tasks_per_sec", "elapsed_s")} for r in metrics]


def params(path):
    return torch.load(path, weights_only=True)["params"]


def test_help_lists_commands_and_config_groups(cli):
    top = cli("--help")
    assert top.returncode == 0 and all(c in top.stdout for c in ("train", "eval", "summarize"))
    train_help = cli("train", "--help")
    assert train_help.returncode == 0
    for text in ("algorithm: ", "maml", "protonet", "dataset: ", "omniglot", "sampler: ", "trainer: "):
        assert text in train_help.stdout
    job = cli("train", "--cfg", "job", "algorithm=protonet", "dataset=omniglot")
    assert job.returncode == 0 and "metaexp.algorithms.protonet.ProtoNet" in job.stdout
    assert "metaexp.samplers.EpisodeSampler" in job.stdout and "metaexp.backbones.conv4.Conv4" in job.stdout
    preset = yaml.safe_load(cli("train", "--cfg", "job", "experiment=maml_omniglot_20w1s", "seed=4").stdout)
    assert preset["test"]["inner_steps"] == 5 and preset["seed"] == 4 and preset["algorithm"]["inner_lr"] == 0.1


def test_train_writes_run_directory_and_eval_scores_it(cli, tmp_path):
    run = tmp_path / "run"
    result = cli("train", *TINY, f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "train.log").read_text()
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 4 and set(state) >= {"params", "optimizer", "generator", "config"}
    assert (run / "checkpoints" / "best.pt").is_file()
    metrics = rows(run)
    assert {r["split"] for r in metrics} == {"train", "val"}
    assert all({"step", "split", "loss", "mse", "tasks_per_sec", "elapsed_s"} <= set(r) for r in metrics)
    assert [r["step"] for r in metrics if r["split"] == "train"] == [1, 2, 3, 4]
    assert "run directory" in result.stdout and str(run) in result.stdout

    scored = cli(
        "eval",
        f"checkpoint={run / 'checkpoints' / 'best.pt'}",
        "eval.episodes=50",
        "sampler.shots=5",
        "trainer.device=cpu",
    )
    assert scored.returncode == 0, scored.stderr
    report = only_report(run)
    assert report["metric"] == "mse" and report["episodes"] == 50 and report["settings"]["sampler"]["shots"] == 5
    assert report["ci95"] > 0 and report["mean"] > 0
    assert "95% CI" in scored.stdout


def test_same_seed_same_metrics(cli, tmp_path):
    a, b, c = (tmp_path / n for n in "abc")
    for run, seed in ((a, 0), (b, 0), (c, 1)):
        assert cli("train", *TINY, f"seed={seed}", f"hydra.run.dir={run}").returncode == 0
    assert stable(rows(a)) == stable(rows(b))
    assert stable(rows(a)) != stable(rows(c))


def test_resume_ends_with_the_same_parameters(cli, tmp_path):
    straight, first, second = tmp_path / "straight", tmp_path / "first", tmp_path / "second"
    assert cli("train", *TINY, f"hydra.run.dir={straight}").returncode == 0
    assert cli("train", *TINY, "trainer.steps=2", f"hydra.run.dir={first}").returncode == 0
    resumed = cli("train", *TINY, f"trainer.resume={first}", f"hydra.run.dir={second}")
    assert resumed.returncode == 0, resumed.stderr
    a, b = params(straight / "checkpoints/last.pt"), params(second / "checkpoints/last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)

    def train_rows(run):
        return [r for r in stable(rows(run)) if r["split"] == "train"]

    assert train_rows(second) == train_rows(straight)


@pytest.mark.slow
def test_sigint_saves_last_and_auto_resume_finishes_identically(cli, tmp_path):
    straight, run = tmp_path / "straight", tmp_path / "run"
    slow = [
        "trainer.steps=400",
        "trainer.log_every=1",
        "trainer.val_every=1000",
        "trainer.val_tasks=10",
        "trainer.meta_batch=5",
        "trainer.device=cpu",
    ]
    assert cli("train", *slow, f"hydra.run.dir={straight}").returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "metaexp", "train", *slow, f"hydra.run.dir={run}"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 120
    while not ((run / "metrics.jsonl").exists() and rows(run)) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    stopped = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert 0 < stopped < 400 and "trainer.resume=auto" in output
    resumed = cli("train", *slow, "trainer.resume=auto", f"hydra.run.dir={run}")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in (run / "train.log").read_text()
    a, b = params(straight / "checkpoints/last.pt"), params(run / "checkpoints/last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_option_lists_valid_ones(cli):
    result = cli("train", "algorithm=nope")
    assert result.returncode == 2
    assert "nope" in result.stdout and "maml" in result.stdout and "protonet" in result.stdout


def test_bad_checkpoints_give_clear_errors(cli, tmp_path):
    missing = cli("eval", f"checkpoint={tmp_path / 'nothing.pt'}")
    assert missing.returncode == 2 and "No checkpoint at" in missing.stdout
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x02not a checkpoint at all")
    result = cli("eval", f"checkpoint={corrupt}")
    assert result.returncode == 2 and "not a readable checkpoint" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr

    run = tmp_path / "run"
    assert cli("train", *TINY, f"hydra.run.dir={run}").returncode == 0
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    state["config"]["backbone"]["_target_"] = "metaexp.backbones.nowhere.Missing"
    broken = tmp_path / "broken.pt"
    torch.save(state, broken)
    result = cli("eval", f"checkpoint={broken}")
    assert result.returncode == 2 and "cannot be rebuilt" in result.stdout


def test_nan_loss_stops_without_touching_good_checkpoints(cli, tmp_path):
    run = tmp_path / "run"
    assert cli("train", *TINY, f"hydra.run.dir={run}").returncode == 0
    before = {n: (run / "checkpoints" / n).read_bytes() for n in ("last.pt", "best.pt")}
    result = cli("train", *TINY, "trainer.steps=12", "optim.lr=1e30", "trainer.resume=auto", f"hydra.run.dir={run}")
    assert result.returncode == 2 and "loss became" in result.stdout
    assert before == {n: (run / "checkpoints" / n).read_bytes() for n in ("last.pt", "best.pt")}


@pytest.mark.slow
def test_module_entrypoint_matches_console_script():
    script = ROOT / ".venv" / "bin" / "metaexp"
    if script.exists():
        result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
        assert result.returncode == 0 and "summarize" in result.stdout


def test_mismatched_algorithm_backbone_and_tasks_fail_before_training(cli, tmp_path):
    no_head = cli("train", "algorithm=anil", "backbone.out_features=null", *TINY, f"hydra.run.dir={tmp_path / 'a'}")
    assert no_head.returncode == 2 and "has none" in no_head.stdout
    root = make_layout(tmp_path / "omniglot")
    wrong_ways = cli(
        "train",
        "algorithm=maml",
        *OMNIGLOT_LAKE,
        f"dataset.root={root}",
        "sampler.ways=5",
        "sampler.queries=1",
        "backbone.out_features=3",
        *TINY,
        f"hydra.run.dir={tmp_path / 'b'}",
    )
    assert wrong_ways.returncode == 2 and "head has 3 outputs but the tasks need 5" in wrong_ways.stdout
    regression = cli("train", "algorithm=protonet", *TINY, f"hydra.run.dir={tmp_path / 'c'}")
    assert regression.returncode == 2 and "cannot learn mse regression" in regression.stdout
    for name in "abc":
        assert not (tmp_path / name / "checkpoints").exists()
