import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OMNIGLOT = (ROOT.parent / "shared" / "data" / "omniglot").resolve()


def run_cli(*args, cwd, timeout=300, env=None):
    """Run `python -m metaexp ARGS` in a subprocess; returns the CompletedProcess (never raises on failure)."""
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "metaexp", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def eval_reports(run_dir) -> dict:
    """The evaluation reports of a run directory, by file name."""
    return {p.name: json.loads(p.read_text()) for p in Path(run_dir).glob("eval-*.json")}


def only_report(run_dir) -> dict:
    reports = eval_reports(run_dir)
    assert len(reports) == 1, sorted(reports)
    return next(iter(reports.values()))


@pytest.fixture
def cli(tmp_path):
    """`cli(*args)` runs metaexp in a temporary working directory (outputs land under it)."""
    def call(*args, **kwargs):
        return run_cli(*args, cwd=kwargs.pop("cwd", tmp_path), **kwargs)
    return call


@pytest.fixture(scope="session")
def omniglot_root():
    if not (OMNIGLOT / "images_background.zip").is_file():
        pytest.skip(f"real Omniglot not found at {OMNIGLOT} (expected ../shared/data/omniglot beside the repo)")
    return OMNIGLOT
