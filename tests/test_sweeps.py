"""Sweeps on the real Hydra launchers and sweeper, loggers, and `metaexp summarize` over their runs."""

import csv
import io
import json

import pytest
import yaml

from conftest import TINY, metrics

pytestmark = pytest.mark.slow


def sweep_dir(base):
    return next((base / "outputs" / "multirun").glob("*/*"))


def test_joblib_grid_then_summarize_by_run_and_config_with_plot(cli, tmp_path):
    result = cli(
        "train",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "algorithm=maml,metasgd",
        "seed=0,1",
        *TINY,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    runs = sweep_dir(tmp_path)
    assert sorted(p.name for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["0", "1", "2", "3"]
    table = cli("summarize", str(runs), "--csv")
    rows = list(csv.DictReader(io.StringIO(table.stdout)))
    assert table.returncode == 0 and len(rows) == 4
    assert {r["label"] for r in rows} == {f"algorithm={a} seed={s}" for a in ("maml", "metasgd") for s in (0, 1)}
    assert all(r["status"] == "done" and r["steps"] == "4" and float(r["best_val"]) > 0 for r in rows)
    grouped = cli("summarize", str(runs), "--by", "config", "--markdown", "--plot", str(tmp_path / "curves.png"))
    assert grouped.returncode == 0
    assert "| algorithm=maml (n=2) |" in grouped.stdout and "| algorithm=metasgd (n=2) |" in grouped.stdout
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_submitit_local_launcher_runs_jobs(cli, tmp_path):
    result = cli("train", "-m", "hydra/launcher=submitit_local", "seed=0,1", *TINY, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    runs = sweep_dir(tmp_path)
    assert all((runs / job / "checkpoints" / "last.pt").is_file() for job in ("0", "1"))
    assert list((runs / ".submitit").glob("*/*_log.out"))


def test_optuna_sweeper_minimises_the_returned_validation_metric(cli, tmp_path):
    result = cli("train", "-m", "hparams_search=sinusoid_optuna", "hydra.sweeper.n_trials=3", *TINY, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    runs = sweep_dir(tmp_path)
    best = yaml.safe_load((runs / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"algorithm.inner_lr", "optim.lr"}
    best_vals = [min(row["mse"] for row in metrics(runs / job) if row["split"] == "val") for job in ("0", "1", "2")]
    assert best["best_value"] == pytest.approx(min(best_vals))


def test_failed_job_is_reported_and_others_finish(cli, tmp_path):
    result = cli("train", "-m", "algorithm.inner_lr=0.01,1e30", *TINY, timeout=600)
    assert result.returncode == 1
    runs = sweep_dir(tmp_path)
    assert "loss became nan" in (runs / "1" / "error.txt").read_text()
    assert "1 job(s) of the sweep failed" in result.stdout and str(runs / "1") in result.stdout
    assert (runs / "0" / "checkpoints" / "last.pt").is_file()
    table = cli("summarize", str(runs), "--csv")
    statuses = {r["label"]: r["status"] for r in csv.DictReader(io.StringIO(table.stdout))}
    assert statuses["algorithm.inner_lr=0.01"] == "done"
    assert statuses["algorithm.inner_lr=1e+30"].startswith("failed: The training loss became nan")


def test_killed_run_is_summarised_as_stopped(cli, tmp_path):
    run = tmp_path / "run"
    assert cli("train", *TINY, f"hydra.run.dir={run}").returncode == 0
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    config["trainer"]["steps"] = 100
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    table = cli("summarize", str(run), "--csv")
    assert next(csv.DictReader(io.StringIO(table.stdout)))["status"] == "stopped at step 4"


def test_unknown_launcher_and_empty_summarize_directory(cli, tmp_path):
    launcher = cli("train", "-m", "hydra/launcher=nope", *TINY)
    assert launcher.returncode == 2 and "joblib" in launcher.stdout and "submitit_local" in launcher.stdout
    sweeper = cli("train", "-m", "hydra/sweeper=nope", *TINY)
    assert sweeper.returncode == 2 and "hydra/sweeper has no option 'nope'" in sweeper.stdout
    assert "optuna" in sweeper.stdout
    (tmp_path / "empty").mkdir()
    empty = cli("summarize", str(tmp_path / "empty"))
    assert empty.returncode == 2 and "No runs under" in empty.stdout


def test_tensorboard_logger_writes_event_files(cli, tmp_path):
    run = tmp_path / "run"
    assert cli("train", "logger=tensorboard", *TINY, f"hydra.run.dir={run}").returncode == 0
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 100
    assert (run / "metrics.jsonl").is_file()


def test_wandb_logger_writes_an_offline_run(cli, tmp_path):
    run = tmp_path / "run"
    result = cli("train", "logger=wandb", *TINY, f"hydra.run.dir={run}", env={"WANDB_SILENT": "true"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    records = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert records and records[0].stat().st_size > 0


def test_mlflow_logger_records_the_metrics(cli, tmp_path):
    import mlflow

    run = tmp_path / "outputs" / "run"
    result = cli("train", "logger=mlflow", *TINY, f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    logged = mlflow.search_runs(experiment_names=["metaexp"])
    last_val = metrics(run)[-1]
    assert last_val["split"] == "val" and len(logged) == 1
    assert logged["metrics.val_mse"][0] == pytest.approx(last_val["mse"])


def fake_run(directory, seed, accuracy, steps=(100, 200), extra=()):
    """A run directory as `metaexp train` + `metaexp eval` leave it, without training."""
    (directory / ".hydra").mkdir(parents=True)
    config = {"sampler": {"ways": 5, "shots": 1}, "trainer": {"steps": steps[-1]}}
    (directory / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    overrides = [f"seed={seed}", "dataset.root=/data/x/omniglot", *extra]
    (directory / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    rows = [
        {
            "step": s,
            "split": "train",
            "loss": 1.0,
            "accuracy": 0.5,
            "tasks_per_sec": 10.0 * (i + 1),
            "elapsed_s": float(s),
        }
        for i, s in enumerate(steps)
    ]
    rows += [
        {"step": s, "split": "val", "loss": 1.0, "accuracy": accuracy, "tasks_per_sec": None, "elapsed_s": 1.0}
        for s in steps
    ]
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {"setting": "5w1s", "metric": "accuracy", "higher_is_better": True, "tasks": "5-way 1-shot"}
    (directory / "task.json").write_text(json.dumps(task))
    report = {
        "metric": "accuracy",
        "mean": accuracy,
        "ci95": 0.01,
        "episodes": 600,
        "loss": 1.0,
        "step": 200,
        "settings": {"sampler": {"ways": 5, "shots": 1, "queries": 15}, "label": "5w1s", "standard_label": "5w1s"},
    }
    (directory / "eval-test-5w1s15q-600ep.json").write_text(json.dumps(report))


def test_summarize_gives_numbers_json_and_a_t_interval_over_seeds(cli, tmp_path):
    for seed, accuracy in ((0, 0.90), (1, 0.92), (2, 0.97)):
        # Seed 0 ran through `metaexp reproduce`, which adds a resume and a time budget: still the same config.
        extra = ("trainer.resume=auto", "trainer.minutes=24.8") if seed == 0 else ()
        fake_run(tmp_path / "runs" / str(seed), seed, accuracy, extra=extra)
    table = cli("summarize", str(tmp_path / "runs"), "--csv")
    rows = list(csv.DictReader(io.StringIO(table.stdout)))
    assert [float(r["test_mean"]) for r in rows] == [0.90, 0.92, 0.97]
    assert {r["metric"] for r in rows} == {"accuracy"} and {r["episodes"] for r in rows} == {"600"}
    assert {float(r["tasks_per_sec"]) for r in rows} == {15.0}, "the median lap, as the train summary prints"
    assert all("/data/" not in r["label"] for r in rows), "path values are shortened in labels"
    grouped = json.loads(cli("summarize", str(tmp_path / "runs"), "--by", "config", "--json").stdout)
    assert len(grouped) == 1 and grouped[0]["n_seeds"] == 3
    values = [0.90, 0.92, 0.97]
    mean = sum(values) / 3
    std = (sum((v - mean) ** 2 for v in values) / 2) ** 0.5
    assert grouped[0]["test_ci95"] == pytest.approx(4.303 * std / 3**0.5)
    assert grouped[0]["ci"] == "95% t interval over 3 seeds"
    wide = cli("summarize", str(tmp_path / "runs"), env={"COLUMNS": "80"})
    assert all(len(line) > 80 for line in wide.stdout.splitlines() if "seed=" in line), "rows are not folded"
    fake_run(tmp_path / "one", 0, 0.5, steps=(7,))
    assert cli("summarize", str(tmp_path / "one"), "--plot", str(tmp_path / "one.png")).returncode == 0
    assert (tmp_path / "one.png").stat().st_size > 1000
