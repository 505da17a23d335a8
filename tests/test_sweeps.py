"""Sweeps on the real Hydra launchers and sweeper, loggers, and `metaexp summarize` over their runs."""
import csv
import io
import json

import pytest
import yaml

TINY = ["trainer.steps=6", "trainer.log_every=3", "trainer.val_every=3", "trainer.val_tasks=10",
        "trainer.meta_batch=5", "trainer.device=cpu"]


def sweep_dir(base):
    return next((base / "outputs" / "multirun").glob("*/*"))


def test_joblib_grid_then_summarize_by_run_and_config_with_plot(cli, tmp_path):
    result = cli("train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "algorithm=maml,metasgd",
                 "seed=0,1", *TINY, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    runs = sweep_dir(tmp_path)
    assert sorted(p.name for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["0", "1", "2", "3"]
    table = cli("summarize", str(runs), "--csv")
    rows = list(csv.DictReader(io.StringIO(table.stdout)))
    assert table.returncode == 0 and len(rows) == 4
    assert {r["run"] for r in rows} == {f"algorithm={a} seed={s}" for a in ("maml", "metasgd") for s in (0, 1)}
    assert all(r["status"] == "done" and r["steps"] == "6" and float(r["best val"]) > 0 for r in rows)
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
    best_vals = [min(json.loads(line)["mse"] for line in (runs / job / "metrics.jsonl").read_text().splitlines()
                     if json.loads(line)["split"] == "val") for job in ("0", "1", "2")]
    assert best["best_value"] == pytest.approx(min(best_vals))


def test_failed_job_is_reported_and_others_finish(cli, tmp_path):
    result = cli("train", "-m", "algorithm.inner_lr=0.01,1e30", *TINY, timeout=600)
    assert result.returncode == 1
    runs = sweep_dir(tmp_path)
    assert "loss became nan" in (runs / "1" / "error.txt").read_text()
    assert "1 job(s) of the sweep failed" in result.stdout and str(runs / "1") in result.stdout
    assert (runs / "0" / "checkpoints" / "last.pt").is_file()
    table = cli("summarize", str(runs), "--csv")
    statuses = {r["run"]: r["status"] for r in csv.DictReader(io.StringIO(table.stdout))}
    assert statuses["algorithm.inner_lr=0.01"] == "done"
    assert statuses["algorithm.inner_lr=1e+30"].startswith("failed: The training loss became nan")


def test_killed_run_is_summarised_as_stopped(cli, tmp_path):
    run = tmp_path / "run"
    assert cli("train", *TINY, f"hydra.run.dir={run}").returncode == 0
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    config["trainer"]["steps"] = 100
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    table = cli("summarize", str(run), "--csv")
    assert next(csv.DictReader(io.StringIO(table.stdout)))["status"] == "stopped at step 6"


def test_unknown_launcher_and_empty_summarize_directory(cli, tmp_path):
    launcher = cli("train", "-m", "hydra/launcher=nope", *TINY)
    assert launcher.returncode != 0 and "joblib" in launcher.stderr and "submitit_local" in launcher.stderr
    sweeper = cli("train", "-m", "hydra/sweeper=nope", *TINY)
    assert sweeper.returncode != 0 and "optuna" in sweeper.stderr
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
    last_val = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert last_val["split"] == "val" and len(logged) == 1
    assert logged["metrics.val_mse"][0] == pytest.approx(last_val["mse"])
