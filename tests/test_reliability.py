"""No result lost, none misreported: the CLI (in subprocesses where signals, kills and a second process are under
test, in process otherwise) under kill -9, two writers, reused directories,
changed configs on resume, sweeps stopped by a signal, and every bad value a tired researcher types."""

import hashlib
import json
import os
import random
import resource
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import OMNIGLOT_LAKE, TINY, make_layout, metrics, run_inline, wait_until
from metaexp.rundir import RunDirError


# Long enough (about 8 s of training after 6 s of start-up here) that signals and kills land mid-training;
# frequent saves make mid-save kills likely.
LONG_STEPS = 1000
LONG = [
    f"trainer.steps={LONG_STEPS}",
    "trainer.log_every=25",
    "trainer.val_every=50",
    "trainer.val_tasks=10",
    "trainer.meta_batch=5",
    "trainer.device=cpu",
]


def start(*args, cwd):
    return subprocess.Popen(
        [sys.executable, "-m", "metaexp", *map(str, args)],
        cwd=cwd,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "HYDRA_FULL_ERROR": "0", "COLUMNS": "200"},
    )


def lines(run) -> int:
    """The lines of the run's metrics.jsonl (a torn last line counts), 0 before it exists."""
    return len((run / "metrics.jsonl").read_text().splitlines()) if (run / "metrics.jsonl").is_file() else 0


def wait_for_rows(run, count=1, timeout=120, proc=None) -> bool:
    """True once the run's metrics.jsonl has `count` lines; False if `proc` (where given) exits first."""
    if not wait_until(lambda: lines(run) >= count or (proc is not None and proc.poll() is not None), timeout):
        raise AssertionError(f"{run} wrote no metrics in {timeout} s")
    return lines(run) >= count


def rows(run):
    return metrics(run)


def weights(path):
    return torch.load(path, weights_only=True)["params"]


def same_weights(a, b):
    a, b = weights(a), weights(b)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def snapshot(directory):
    """Every file under `directory` with its content hash (hidden ones too)."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def one_paragraph(result):
    """The output ends in one error paragraph (after any log lines of the run so far), with no traceback."""
    text = (result.stdout + result.stderr).strip()
    start = max(text.rfind("error:"), text.rfind("stopped:"))
    return "Traceback" not in text and start >= 0 and "\n\n" not in text[start:]


def refused_at_once(result):
    """Nothing ran: the whole output is the one error paragraph."""
    return one_paragraph(result) and (result.stdout + result.stderr).strip().startswith("error:")


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_matches_a_straight_run(tmp_path):
    straight, run = tmp_path / "straight", tmp_path / "run"
    assert run_inline("train", *LONG, f"hydra.run.dir={straight}", cwd=tmp_path).returncode == 0
    moments = random.Random(0)
    kills = 0
    for attempt in range(12):
        before = lines(run)
        proc = start("train", *LONG, "trainer.resume=auto", f"hydra.run.dir={run}", cwd=tmp_path)
        # Each kill lands after this process has trained past where the last one stopped, at a random moment in
        # a step or a save (timed from the process's start, a fast machine finished the run before any kill).
        if kills < 4 and wait_for_rows(run, count=before + 1, proc=proc):
            time.sleep(moments.uniform(0.0, 0.15))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                continue
        proc.wait(timeout=300)
        assert proc.returncode == 0, proc.stdout.read()[-2000:]
        break
    assert kills >= 3, "the kills must land while the run is going"
    assert same_weights(straight / "checkpoints/last.pt", run / "checkpoints/last.pt")
    steps = [(r["step"], r["split"]) for r in rows(run)]
    assert len(steps) == len(set(steps)), "each (step, split) once"
    stable = [{k: v for k, v in r.items() if k not in ("tasks_per_sec", "elapsed_s")} for r in rows(run)]
    assert stable == [{k: v for k, v in r.items() if k not in ("tasks_per_sec", "elapsed_s")} for r in rows(straight)]
    assert not list((run / "checkpoints").glob("*.tmp")), "no stale temporary files"


@pytest.mark.slow
def test_second_process_on_one_run_directory_is_refused_and_the_first_is_unharmed(tmp_path):
    straight, run = tmp_path / "straight", tmp_path / "run"
    assert run_inline("train", *LONG, f"hydra.run.dir={straight}", cwd=tmp_path).returncode == 0
    first = start("train", *LONG, f"hydra.run.dir={run}", cwd=tmp_path)
    wait_for_rows(run)
    # Paused, the first process keeps its lock however slowly the others start on a loaded machine.
    os.kill(first.pid, signal.SIGSTOP)
    try:
        for extra in ([], ["trainer.resume=auto"], ["seed=22"]):
            second = run_inline("train", *LONG, *extra, f"hydra.run.dir={run}", cwd=tmp_path)
            assert second.returncode == 2 and "Another metaexp process is writing" in second.stdout, second.stdout
            assert refused_at_once(second)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    output, _ = first.communicate(timeout=300)
    assert first.returncode == 0, output[-2000:]
    assert same_weights(straight / "checkpoints/last.pt", run / "checkpoints/last.pt")
    steps = [(r["step"], r["split"]) for r in rows(run)]
    assert len(steps) == len(set(steps)) and steps == [(r["step"], r["split"]) for r in rows(straight)]


def test_fresh_run_into_a_used_directory_is_refused_and_nothing_changes(tmp_path):
    run = tmp_path / "run"
    assert run_inline("train", *TINY, f"hydra.run.dir={run}", cwd=tmp_path).returncode == 0
    before = snapshot(run)
    again = run_inline("train", *TINY, "seed=3", f"hydra.run.dir={run}", cwd=tmp_path)
    assert again.returncode == 2 and "already holds a run" in again.stdout and "trainer.resume=auto" in again.stdout
    assert refused_at_once(again) and snapshot(run) == before


def test_resume_with_a_changed_learning_rate_takes_it(tmp_path):
    run = tmp_path / "run"
    assert (
        run_inline(
            "train", *TINY, "scheduler=step", "scheduler.step_size=2", f"hydra.run.dir={run}", cwd=tmp_path
        ).returncode
        == 0
    )
    resumed = run_inline(
        "train",
        *TINY,
        "scheduler=step",
        "scheduler.step_size=2",
        "trainer.steps=10",
        "optim.lr=0.0005",
        "trainer.resume=auto",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:]
    state = torch.load(run / "checkpoints/last.pt", weights_only=True)
    assert state["step"] == 10
    # StepLR halves every 2 steps: after 10 steps the rate is 0.0005 * 0.5 ** 5, from the new base rate.
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0005 * 0.5**5, rel=1e-12)
    log = (run / "train.log").read_text()
    assert "resume applies a changed setting: optim.lr 0.001 -> 0.0005" in log


def test_resume_with_a_changed_backbone_or_seed_is_refused_before_anything_is_written(tmp_path):
    run = tmp_path / "run"
    assert run_inline("train", *TINY, f"hydra.run.dir={run}", cwd=tmp_path).returncode == 0
    before = snapshot(run)
    for change, named in (
        ("backbone.hidden=[20,20]", "backbone.hidden: [40, 40] -> [20, 20]"),
        ("seed=7", "seed: 0 -> 7"),
        ("algorithm=metasgd", "algorithm._target_"),
    ):
        result = run_inline("train", *TINY, change, "trainer.resume=auto", f"hydra.run.dir={run}", cwd=tmp_path)
        assert result.returncode == 2 and "Cannot resume" in result.stdout and named in result.stdout, result.stdout
        assert refused_at_once(result)
        assert snapshot(run) == before


def test_a_setting_added_since_the_checkpoint_resumes_at_its_default_and_is_refused_at_another_value(tmp_path):
    from omegaconf import OmegaConf

    from metaexp.configs import compose
    from metaexp.resume import check_changes

    cfg = compose(["experiment=metanet_omniglot_5w1s"])
    saved = OmegaConf.to_container(cfg, resolve=False)
    del saved["algorithm"]["task_fast_weights"]  # as a checkpoint written before the option existed
    assert check_changes(saved, cfg, tmp_path) == []
    for changed in (
        compose(["experiment=metanet_omniglot_5w1s", "algorithm.task_fast_weights=false"]),
        compose(["experiment=maml_omniglot_5w1s"]),  # another algorithm: its own keys are no default of MetaNet's
    ):
        with pytest.raises(RunDirError, match="Cannot resume"):
            check_changes(saved, changed, tmp_path)


def test_a_non_finite_validation_value_is_never_saved_as_best(tmp_path):
    run = tmp_path / "run"
    result = run_inline("train", *TINY, "optim.lr=1e6", "trainer.val_every=1", f"hydra.run.dir={run}", cwd=tmp_path)
    assert result.returncode == 2 and "diverged" in result.stdout, result.stdout
    assert "became 0.0" not in result.stdout
    for path in (run / "checkpoints").glob("*.pt"):
        best = torch.load(path, weights_only=True)["best"]
        assert best is None or best == best, f"{path.name} holds best=NaN"
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"metrics.jsonl holds a bare {c}"))


def test_divergence_before_any_checkpoint_does_not_promise_one(tmp_path):
    run = tmp_path / "run"
    result = run_inline("train", *TINY, "optim.lr=1e30", "trainer.val_every=1000", f"hydra.run.dir={run}", cwd=tmp_path)
    assert result.returncode == 2 and "No checkpoint was written" in result.stdout, result.stdout
    assert not (run / "checkpoints").exists() and one_paragraph(result)
    again = run_inline("train", *TINY, "trainer.resume=auto", f"hydra.run.dir={run}", cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-2000:]
    steps = [(r["step"], r["split"]) for r in rows(run)]
    # 4 train rows and 2 val rows of the new start; those of the failed start are gone.
    assert steps == [(1, "train"), (2, "train"), (2, "val"), (3, "train"), (4, "train"), (4, "val")]


@pytest.mark.slow
def test_one_sigint_stops_a_sweep_and_its_resume_command_finishes_it_cleanly(tmp_path):
    proc = start("train", "-m", "seed=0,1,2", *LONG, cwd=tmp_path)
    wait_until(lambda: list((tmp_path / "outputs" / "multirun").glob("*/*/0/metrics.jsonl")), 120, every=0.05)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output[-3000:]
    assert "Traceback" not in output and "failed" not in output
    sweep = next((tmp_path / "outputs" / "multirun").glob("*/*"))
    assert (sweep / "0" / "checkpoints" / "last.pt").is_file() and not (sweep / "1").exists()
    command = output[output.index("Continue the whole sweep with: ") + len("Continue the whole sweep with: ") :]
    args = shlex.split(command.splitlines()[0])
    assert args[:2] == ["metaexp", "train"] and f"hydra.sweep.dir={sweep}" in args
    resumed = run_inline(*args[1:], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "failed" not in resumed.stdout and not list(sweep.glob("*/error.txt"))
    for job in "012":
        assert torch.load(sweep / job / "checkpoints/last.pt", weights_only=True)["step"] == LONG_STEPS
        steps = [(r["step"], r["split"]) for r in rows(sweep / job)]
        assert len(steps) == len(set(steps))


def test_a_finished_resume_clears_an_old_failure_record(tmp_path):
    failed = run_inline("train", "-m", "optim.lr=0.001,1e30", *TINY, "trainer.val_every=1000", cwd=tmp_path)
    assert failed.returncode == 1 and "1 job(s) of the sweep failed" in failed.stdout
    sweep = next((tmp_path / "outputs" / "multirun").glob("*/*"))
    assert (sweep / "1" / "error.txt").is_file()
    fixed = run_inline(
        "train",
        "-m",
        "optim.lr=0.001,0.002",
        *TINY,
        "trainer.val_every=1000",
        "trainer.resume=auto",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert fixed.returncode == 0, fixed.stdout[-2000:]
    assert not list(sweep.glob("*/error.txt"))


@pytest.mark.slow
def test_second_ctrl_c_still_saves_the_step_and_start_up_ctrl_c_is_quiet(tmp_path):
    run = tmp_path / "run"
    proc = start("train", *LONG, f"hydra.run.dir={run}", cwd=tmp_path)
    wait_for_rows(run)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in output, output[-3000:]
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert f"at step {saved}" in output and 0 < saved < LONG_STEPS

    early = start("train", *TINY, f"hydra.run.dir={tmp_path / 'early'}", cwd=tmp_path)
    time.sleep(1.0)  # inside the imports
    early.send_signal(signal.SIGINT)
    output, _ = early.communicate(timeout=60)
    assert early.returncode == 130 and "Traceback" not in output and "interrupted" in output.lower(), output


@pytest.mark.slow
def test_a_full_disk_leaves_the_checkpoints_intact_and_says_so(tmp_path):
    run = tmp_path / "run"
    wide = ["backbone.hidden=[300,300]"]
    assert run_inline("train", *TINY, *wide, f"hydra.run.dir={run}", cwd=tmp_path).returncode == 0
    before = {n: (run / "checkpoints" / n).read_bytes() for n in ("last.pt", "best.pt")}

    def small_files():  # writes past 200 kB fail with EFBIG, as a full disk fails them with ENOSPC
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "metaexp",
            "train",
            *TINY,
            *wide,
            "trainer.steps=12",
            "trainer.resume=auto",
            f"hydra.run.dir={run}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        preexec_fn=small_files,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 2 and "Could not write" in result.stdout and "is unchanged" in result.stdout, (
        result.stdout + result.stderr
    )
    assert one_paragraph(result)
    assert before == {n: (run / "checkpoints" / n).read_bytes() for n in ("last.pt", "best.pt")}
    assert not list((run / "checkpoints").glob("*.tmp"))


@pytest.fixture(scope="module")
def used(tmp_path_factory):
    """A finished run directory, a checkpoint, an Omniglot-layout root and an image folder for bad-value cases."""
    base = tmp_path_factory.mktemp("bad_values")
    run = base / "run"
    assert run_inline("train", *TINY, f"hydra.run.dir={run}", cwd=base).returncode == 0
    folder = base / "folder"
    for c in range(3):
        (folder / f"class{c}").mkdir(parents=True)
        for i in range(4):
            torch.manual_seed(c * 10 + i)
            from PIL import Image

            Image.fromarray((torch.rand(32, 32, 3) * 255).byte().numpy()).save(folder / f"class{c}" / f"{i}.png")
    (base / "afile").write_text("")
    omniglot = make_layout(base / "omniglot")
    navigation, metanet = base / "navigation", base / "metanet"
    assert run_inline("train", *NAVIGATION, "trainer.steps=2", f"hydra.run.dir={navigation}", cwd=base).returncode == 0
    trained = run_inline("train", *METANET, f"dataset.root={omniglot}", "trainer.steps=2", f"hydra.run.dir={metanet}",
                      cwd=base)  # fmt: skip
    assert trained.returncode == 0, trained.stdout + trained.stderr
    return {"base": base, "run": run, "omniglot": omniglot, "folder": folder, "nav": navigation, "metanet": metanet}


OMNIGLOT_1Q = [*OMNIGLOT_LAKE, "sampler.queries=1"]
# Two goals x 3 trajectories of 15 steps; MetaNet 2-way 1-shot on the tiny Omniglot layout.
NAVIGATION = ["experiment=maml_navigation2d", "trainer.device=cpu", "trainer.meta_batch=2", "trainer.val_tasks=2",
              "sampler.trajectories=3", "dataset.horizon=15", "trainer.log_every=1", "trainer.val_every=2"]  # fmt: skip
METANET = ["experiment=metanet_omniglot_5w1s", *OMNIGLOT_1Q, "sampler.ways=2", "algorithm.chunks=2",
           "trainer.device=cpu", "trainer.val_tasks=2",
           "trainer.val_every=2", "trainer.log_every=1", "trainer.meta_batch=1"]  # fmt: skip
# (arguments, words the paragraph must contain); {run}, {omniglot}, {folder}, {afile} are filled in.
TRAIN_CASES = [
    # Refused by Hydra while it composes the config: a key it lacks, a group's missing option, a syntax error.
    (["trainer.stpes=10"], "trainer.stpes is not a setting of metaexp train; check its spelling"),
    (["algorithm=nope"], "algorithm has no option 'nope'; its options are acmrr, anil,"),
    (["seed=[1"], "seed=[1 cannot be read as an override"),
    (["~trainer.stepsx"], "refused: Could not delete from config. 'trainer.stepsx' does not exist."),
    (["trainer.steps=abc"], "trainer.steps='abc' is not valid"),
    (["trainer.steps=-5"], "trainer.steps=-5 is not valid"),
    (["seed=abc"], "seed='abc' is not valid"),
    (["trainer.meta_batch=0"], "trainer.meta_batch=0 is not valid"),
    (["trainer.log_every=0"], "trainer.log_every=0 is not valid"),
    (["trainer.val_every=0"], "trainer.val_every=0 is not valid"),
    (["trainer.val_tasks=0"], "trainer.val_tasks=0 is not valid"),
    (["trainer.device=gpu"], "trainer.device='gpu' is not a device"),
    (["trainer.minutes=0"], "trainer.minutes=0.0 is not valid"),
    (["sampler.shots=-1"], "sampler.shots=-1 is not valid"),
    (["sampler.queries=0"], "sampler.queries=0 is not valid"),
    (["algorithm=protonet", *OMNIGLOT_1Q, "dataset.root={omniglot}", "sampler.ways=0"], "sampler.ways=0 is not valid"),
    (
        [
            "dataset=image_folder",
            "dataset.root={folder}",
            "dataset.image_size=32",
            "sampler.ways=2",
            "sampler.queries=1",
        ],
        "The val split of {folder} has no classes",
    ),
    # Meta-RL and MetaNet values: each a paragraph before anything is built or written.
    ([*NAVIGATION, "sampler.gamma=abc"], "sampler.gamma='abc' is not valid: it must be a number"),
    ([*NAVIGATION, "sampler.gamma=1.5"], "sampler.gamma=1.5 is not valid: it must be a number from 0 to 1"),
    ([*NAVIGATION, "sampler.gamma=-0.5"], "sampler.gamma=-0.5 is not valid"),
    ([*NAVIGATION, "sampler.gae_lambda=abc"], "sampler.gae_lambda='abc' is not valid"),
    ([*NAVIGATION, "sampler.gae_lambda=2"], "sampler.gae_lambda=2 is not valid"),
    ([*NAVIGATION, "sampler.later_rate=-1"], "sampler.later_rate=-1 is not valid: it must be a number above 0"),
    ([*NAVIGATION, "optim.max_kl=-1"], "optim.max_kl=-1 is not valid"),
    ([*NAVIGATION, "optim.cg_iters=0"], "optim.cg_iters=0 is not valid: it must be a whole number of 1 or more"),
    ([*NAVIGATION, "dataset.horizon=0"], "dataset.horizon=0 is not valid"),
    ([*NAVIGATION, "trainer.cuda_graph=true"], "optim=trpo runs a line search"),
    (["experiment=maml_halfcheetah_vel", "trainer.device=cpu", "dataset.horizon=-1"], "dataset.horizon=-1 is not"),
    (["experiment=maml_halfcheetah_vel", "trainer.device=cpu", "dataset.threads=0"], "dataset.threads=0 is not"),
    ([*METANET, "dataset.root={omniglot}", "algorithm.chunks=0"], "algorithm.chunks=0 is not valid"),
    ([*METANET, "dataset.root={omniglot}", "algorithm.chunks=-1"], "algorithm.chunks=-1 is not valid"),
    ([*METANET, "dataset.root={omniglot}", "algorithm.chunks=abc"], "algorithm.chunks='abc' is not valid"),
    ([*METANET, "dataset.root={omniglot}", "algorithm.chunks=1.5"], "algorithm.chunks=1.5 is not valid"),
    ([*METANET, "dataset.root={omniglot}", "algorithm.chunks=3"], "algorithm.chunks=3 does not divide the 2"),
]
EVAL_CASES = [
    ([], "needs a checkpoint"),
    (["checkpoint={run}/checkpoints/last.pt", "eval.out=x.json"], "eval.out is not a setting of metaexp eval"),
    (["checkpoint={run}/checkpoints/last.pt", "eval.meta_batch=0"], "eval.meta_batch=0 is not valid"),
    (["checkpoint={run}/checkpoints/last.pt", "eval.split=bogus"], "eval.split='bogus' is not valid"),
    (["checkpoint={run}/checkpoints/last.pt", "eval.episodes=-1"], "eval.episodes=-1 is not valid"),
    (["checkpoint={run}/checkpoints/last.pt", "trainer.device=gpu"], "trainer.device='gpu' is not a device"),
    (["checkpoint={run}/checkpoints/last.pt", "dataset.root=/somewhere"], "dataset.root does not apply"),
    (["checkpoint={nav}", "sampler.later_rate=abc"], "sampler.later_rate='abc' is not valid"),
    (["checkpoint={nav}", "test.norm=training"], "a policy has no batch norm"),
    (["checkpoint={nav}", "test.inner_steps=7"], "test.inner_steps=7 is past the curve"),
    (["checkpoint={metanet}", "test.norm=training"], "test.norm=training"),
]


def fill(args, used):
    names = {
        "run": used["run"],
        "omniglot": used["omniglot"],
        "folder": used["folder"],
        "afile": used["base"] / "afile",
        "nav": used["nav"],
        "metanet": used["metanet"],
    }
    return [a.format(**names) for a in args]


@pytest.mark.parametrize("args, expected", TRAIN_CASES, ids=[" ".join(a[-1:]) for a, _ in TRAIN_CASES])
def test_bad_training_value_is_one_paragraph_and_changes_nothing(used, args, expected):
    before = snapshot(used["run"])
    result = run_inline(
        "train", *TINY, *fill(args, used), "trainer.resume=auto", f"hydra.run.dir={used['run']}", cwd=used["base"]
    )
    assert result.returncode == 2 and fill([expected], used)[0] in result.stdout, result.stdout + result.stderr
    assert one_paragraph(result), result.stdout + result.stderr  # after a data set's loading line, if any
    assert snapshot(used["run"]) == before


@pytest.mark.parametrize("args, expected", EVAL_CASES, ids=[" ".join(a[-1:]) or "no checkpoint" for a, _ in EVAL_CASES])
def test_bad_evaluation_value_is_one_paragraph_and_changes_nothing(used, args, expected):
    before = snapshot(used["run"])
    result = run_inline("eval", *fill(args, used), cwd=used["base"])
    assert result.returncode == 2 and expected in result.stdout, result.stdout + result.stderr
    assert refused_at_once(result), result.stdout + result.stderr
    assert snapshot(used["run"]) == before


def test_unwritable_output_location_is_one_paragraph(used):
    for command in (["train", *TINY], ["train", "-m", "seed=0,1", *TINY]):
        result = run_inline(*command, f"paths.output_dir={used['base'] / 'afile' / 'outputs'}", cwd=used["base"])
        assert result.returncode == 2 and "afile is a file, not a folder" in result.stdout, result.stdout
        assert one_paragraph(result)


def test_eval_follows_moved_data_with_dataset_root(used, tmp_path):
    run = used["base"] / "omniglot_run"
    args = ["algorithm=protonet", *OMNIGLOT_1Q, "sampler.ways=3", "test.sampler.queries=1", "backbone.hidden=8", *TINY]
    assert (
        run_inline(
            "train", *args, f"dataset.root={used['omniglot']}", f"hydra.run.dir={run}", cwd=used["base"]
        ).returncode
        == 0
    )
    moved = tmp_path / "moved"
    used["omniglot"].rename(moved)
    try:
        lost = run_inline("eval", f"checkpoint={run}", "eval.episodes=4", "trainer.device=cpu", cwd=used["base"])
        assert lost.returncode == 2 and "dataset.root" in lost.stdout and one_paragraph(lost)
        assert not used["omniglot"].exists(), "a failed look-up creates no folders under the old path"
        found = run_inline(
            "eval",
            f"checkpoint={run}",
            "eval.episodes=4",
            "trainer.device=cpu",
            f"dataset.root={moved}",
            cwd=used["base"],
        )
        assert found.returncode == 0, found.stdout[-2000:]
    finally:
        moved.rename(used["omniglot"])


def test_evaluations_in_different_settings_are_all_kept(used):
    run = used["base"] / "kept"
    assert run_inline("train", *TINY, f"hydra.run.dir={run}", cwd=used["base"]).returncode == 0
    for extra in (["sampler.shots=5"], ["sampler.shots=10"], ["sampler.shots=5", "test.inner_steps=3"]):
        result = run_inline(
            "eval", f"checkpoint={run}", "eval.episodes=20", "trainer.device=cpu", *extra, cwd=used["base"]
        )
        assert result.returncode == 0, result.stdout[-2000:]
    best = run / "checkpoints" / "best.pt"
    result = run_inline("eval", f"checkpoint={best}", "eval.episodes=20", "trainer.device=cpu", cwd=used["base"])
    assert result.returncode == 0, result.stdout[-2000:]
    names = sorted(p.name for p in run.glob("eval-*.json"))
    assert names == [
        "eval-test-10shot10q-1steps-20ep-best.json",  # best.pt's evaluation does not replace last.pt's
        "eval-test-10shot10q-1steps-20ep.json",
        "eval-test-5shot10q-1steps-20ep.json",
        "eval-test-5shot10q-3steps-20ep.json",
    ]


def test_a_policy_tested_under_another_protocol_never_replaces_the_standard_report(used):
    run = used["nav"]
    evaluate = ["eval", f"checkpoint={run}", "eval.episodes=4", "trainer.device=cpu"]
    assert run_inline(*evaluate, cwd=used["base"]).returncode == 0
    (standard,) = run.glob("eval-*.json")
    before = standard.read_bytes()
    for variant in (["+sampler.gamma=0.5"], ["sampler.later_rate=0.1"], ["sampler.curve_steps=4"]):
        result = run_inline(*evaluate, *variant, cwd=used["base"])
        assert result.returncode == 0, result.stdout[-2000:]
    assert standard.read_bytes() == before
    names = sorted(p.name for p in run.glob("eval-*.json"))
    assert names == [
        "eval-test-40traj-1steps-4ep.json",
        "eval-test-40traj-curve_steps4-1steps-4ep.json",
        "eval-test-40traj-gamma0.5-1steps-4ep.json",
        "eval-test-40traj-later_rate0.1-1steps-4ep.json",
    ], names
    table = run_inline("summarize", run, "--csv", cwd=used["base"])
    assert "return_1steps (40traj-gamma0.5)" in table.stdout and "return_1steps," in table.stdout, table.stdout
    for path in run.glob("eval-*.json"):
        if path != standard:
            path.unlink()


def test_summarize_lists_malformed_runs_and_summarises_the_rest(used, tmp_path):
    import shutil

    good = tmp_path / "good"
    shutil.copytree(used["run"], good)
    broken = {
        "row": lambda r: (r / "metrics.jsonl").write_text("[1, 2]\n"),
        "nosplit": lambda r: (r / "metrics.jsonl").write_text('{"step": 1}\n'),
        "emptyconfig": lambda r: (r / ".hydra" / "config.yaml").write_text(""),
        "badyaml": lambda r: (r / ".hydra" / "config.yaml").write_text("a: [\n"),
        "badeval": lambda r: (r / "eval-test-x.json").write_text("{"),
        "badmachine": lambda r: (r / "machine.json").write_text("{not json"),
        "notask": lambda r: (r / "task.json").unlink(),
        "badtask": lambda r: (r / "task.json").write_text('{"setting": "5w1s"}'),
        "intoverrides": lambda r: (r / ".hydra" / "overrides.yaml").write_text("- 1\n- 2\n"),
        "badcurve": lambda r: (r / "eval-test-y.json").write_text(
            json.dumps({"mean": 1.0, "ci95": 0.0, "settings": {"sampler": {}}, "by_inner_step": [1, 2]})
        ),
    }
    for name, damage in broken.items():
        shutil.copytree(used["run"], tmp_path / name)
        damage(tmp_path / name)
    result = run_inline("summarize", str(tmp_path), "--csv", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(result.stdout.strip().splitlines()) == 2, "a header and the one good run"
    for name in broken:
        assert f"skipped {tmp_path / name}" in result.stderr.replace("\n", " ")


def test_a_time_limit_stops_cleanly_and_resume_finishes_the_run(tmp_path):
    run = tmp_path / "limited"
    args = ["train", "trainer.val_every=100000", "trainer.device=cpu", f"hydra.run.dir={run}"]
    limited = run_inline(*args, "trainer.steps=100000", "trainer.minutes=0.05", cwd=tmp_path)
    assert limited.returncode == 0, limited.stdout + limited.stderr
    stopped = torch.load(run / "checkpoints/last.pt", weights_only=False)["step"]
    assert 0 < stopped < 100000
    assert "trainer.minutes=0.05 reached at step" in " ".join(limited.stdout.split())
    assert [r["step"] for r in rows(run) if r["split"] == "val"] == [stopped]
    finished = run_inline(*args, f"trainer.steps={stopped + 3}", "trainer.resume=auto", cwd=tmp_path)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert torch.load(run / "checkpoints/last.pt", weights_only=False)["step"] == stopped + 3


# `metaexp reproduce`: the committed records and the page survive every failure, and a failure says so.
PRESET = "maml_sinusoid_5shot"
PAGE_PROSE = "# Results\n\n" + "Prose that must survive a failed write. " * 1500 + "\n"  # 60 kB: over 40 kB


def reproduce(base, *extra, runs="runs", preset=PRESET, settings=("debug=fast", "trainer.meta_batch=5")):
    return [
        "reproduce", preset, "--device", "cpu", "--runs", base / runs, "--records", base / "records",
        "--page", base / "results.md", "--eval-set", "eval.episodes=10", "--set", *settings, *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    """The records and page one finished `metaexp reproduce` wrote (once for the module)."""
    base = tmp_path_factory.mktemp("reproduced")
    (base / "results.md").write_text(PAGE_PROSE)
    first = run_inline(*reproduce(base), cwd=base)
    assert first.returncode == 0, first.stdout + first.stderr
    return base


@pytest.fixture
def recorded(reproduced, tmp_path):
    """A copy of those records and page in a folder of the test's own, and their snapshot."""
    import shutil

    shutil.copytree(reproduced / "records", tmp_path / "records")
    for name in ("results.md", "results_curves.png"):
        shutil.copy2(reproduced / name, tmp_path / name)

    def unchanged():
        return snapshot(tmp_path / "records") | {
            name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
            for name in ("results.md", "results_curves.png")
        }

    before = unchanged()
    assert any(name.endswith(".json") for name in before)
    return tmp_path, before, unchanged


LONG_RUN = ("trainer.steps=100000", "trainer.log_every=25", "trainer.val_every=100000", "trainer.meta_batch=5")


def training_child(run):
    """The pid of the `metaexp train` process writing `run` (found in /proc)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                args = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
            except OSError:
                continue
            if b"train" in args and f"hydra.run.dir={run}".encode() in args:
                return int(entry)
    return None


def wait_until_gone(run, timeout=60):
    gone = wait_until(lambda: training_child(run) is None, timeout, every=0.1)  # each check reads all of /proc
    assert gone, f"the training child of {run} outlived its parent"


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--runs", "fresh", "--set", "debug=fast", "sampler.shots=-1"], "training exited 2"),
        (["--minutes", "nan"], "--minutes nan is not valid"),
    ],
    ids=["training fails", "nan minutes"],
)
@pytest.mark.slow
def test_a_failed_reproduce_exits_non_zero_naming_the_preset_and_keeps_every_record(recorded, extra, words):
    base, before, unchanged = recorded
    result = run_inline(*reproduce(base), *extra, cwd=base)
    assert result.returncode == 2 and words in " ".join(result.stdout.split()), result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert unchanged() == before


@pytest.mark.slow
def test_a_shorter_schedule_never_replaces_a_longer_record(recorded):
    base, before, unchanged = recorded
    result = run_inline(*reproduce(base, runs="short", settings=("debug=fast", "trainer.steps=2")), cwd=base)
    assert result.returncode == 0 and "holds a longer schedule (4 steps)" in result.stdout, result.stdout
    assert unchanged() == before


def long_reproduce(base):
    """A reproduce of a long schedule started in a subprocess, and its run directory once it has a row."""
    process = start(*reproduce(base, runs="long", settings=LONG_RUN), cwd=base)
    run = base / "long" / PRESET
    try:
        wait_for_rows(run)
    except AssertionError:
        process.kill()
        raise
    return process, run


@pytest.mark.slow
def test_a_concurrent_reproduce_is_refused_and_kill_9_of_the_first_stops_its_child(recorded):
    base, before, unchanged = recorded
    first, run = long_reproduce(base)
    try:
        second = run_inline(*reproduce(base, runs="long"), cwd=base)
        assert second.returncode == 2, second.stdout + second.stderr
        assert "another metaexp reproduce is working on preset maml_sinusoid_5shot" in " ".join(second.stdout.split())
        assert unchanged() == before
    finally:
        first.kill()  # kill -9 of reproduce itself: its training child is told to stop and saves its step
        first.wait()
    wait_until_gone(run)
    assert (run / "checkpoints" / "last.pt").is_file()
    assert unchanged() == before


@pytest.mark.slow
def test_kill_9_of_the_training_child_is_a_failed_preset(recorded):
    base, before, unchanged = recorded
    first, run = long_reproduce(base)
    os.kill(training_child(run), signal.SIGKILL)  # as the out-of-memory killer would
    output, _ = first.communicate(timeout=120)
    assert first.returncode == 2 and "training was killed by SIGKILL" in " ".join(output.split()), output[-2000:]
    assert unchanged() == before


@pytest.mark.slow
def test_a_full_disk_during_the_page_write_leaves_page_and_curves_whole(recorded):
    base, before, unchanged = recorded

    def small_files():  # writes past 40 kB fail with EFBIG, as a full disk fails them with ENOSPC
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_960, 40_960))

    command = [sys.executable, "-m", "metaexp", *map(str, reproduce(base)), "--table-only"]
    result = subprocess.run(command, cwd=base, capture_output=True, text=True, preexec_fn=small_files,
                            env={**os.environ, "COLUMNS": "200"})  # fmt: skip
    assert result.returncode == 2 and "Could not write" in result.stdout + result.stderr, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr and "| preset" not in result.stdout
    assert unchanged() == before
    assert not [p for p in base.iterdir() if p.name.endswith(".tmp")]
