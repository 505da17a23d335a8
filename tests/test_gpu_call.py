"""The GPU call (ci/gpu_call.sh) dry-run on the CPU with tiny settings, so that it cannot rot between the rare
GPU machines: it installs from a wheelhouse, runs every stage, and packs what `make gpu-import` unpacks."""

import json
import os
import runpy
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT

PRESET = "maml_sinusoid_5shot"


def probe_wheel(folder) -> None:
    """A pure wheel the install stage must install (nothing is fetched there)."""
    folder.mkdir()
    info = "gpu_probe-1.0.dist-info"
    with zipfile.ZipFile(folder / "gpu_probe-1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("gpu_probe/__init__.py", "")
        wheel.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: gpu_probe\nVersion: 1.0\n")
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")


def unfinished_run(runs) -> None:
    """A run directory an earlier call left mid-schedule (metrics, no evaluation): the pack carries it on."""
    run = runs / "maml_sinusoid_10shot"
    (run / ".hydra").mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"step": 5, "split": "train", "loss": 1.0}) + "\n")


@pytest.mark.slow
def test_the_gpu_call_runs_every_stage_on_a_cpu_and_its_pack_imports(tmp_path):
    probe_wheel(tmp_path / "wheels")
    unfinished_run(tmp_path / "state" / "runs")
    (tmp_path / "presets.txt").write_text(f"# the priority list\n{PRESET}\n")
    env = {
        **os.environ,
        "OUT": str(tmp_path / "out"),
        "GPU_CALL_DEVICE": "cpu",
        "GPU_CALL_PYTHON": sys.executable,
        "GPU_CALL_WHEELS": str(tmp_path / "wheels"),
        "GPU_CALL_STATE": str(tmp_path / "state"),
        "GPU_CALL_RECORDS": str(tmp_path / "records"),
        "GPU_CALL_PRESETS": str(tmp_path / "presets.txt"),
        "GPU_CALL_QUICK": "--set debug=fast trainer.meta_batch=5 --eval-set eval.episodes=20",
    }
    # A budget of 10 minutes: the stages end when done (about a minute here); a loaded machine needs the slack.
    call = subprocess.run(["bash", "ci/gpu_call.sh", "10"], cwd=ROOT, env=env, capture_output=True, text=True)
    log = (tmp_path / "out" / "gpu_call.log").read_text()
    assert call.returncode == 0, log[-3000:]
    for stage in ("== 0. install", "== 1. CUDA tests", "== 2. benchmarks on cpu", "== 3. reproduce", "== 4. pack"):
        assert stage in log, stage
    assert "installed: gpu_probe-1.0.dist-info" in log and "card: no CUDA device" in log
    assert "skipped" in log, "the CUDA tests say why they did not run"
    assert '"tasks_per_sec"' in log, "the engine benchmark printed its figures"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu_call.log", "records.tar.gz", "state.tar.gz"]

    imported = tmp_path / "imported"
    shutil.copytree(ROOT / "results" / "records" / "maml_sinusoid_20shot", imported / "maml_sinusoid_20shot")
    page = tmp_path / "results.md"
    page.write_text("# Results\n")
    gpu_import = runpy.run_path(str(ROOT / "ci" / "gpu_import.py"))  # in process: no signal is under test
    out = tmp_path / "out"
    arguments = [out / "records.tar.gz", out / "state.tar.gz", "--records", imported, "--state", tmp_path / "next"]
    assert gpu_import["main"]([str(a) for a in [*arguments, "--page", page]]) == 0
    assert (imported / PRESET / ".hydra" / "config.yaml").is_file() and list((imported / PRESET).glob("eval-*.json"))
    assert not (imported / PRESET / "checkpoints").exists(), "a record holds no checkpoints"
    assert (tmp_path / "next" / "runs" / "maml_sinusoid_10shot" / "metrics.jsonl").is_file()
    assert PRESET in page.read_text() and "maml_sinusoid_20shot" in page.read_text()
