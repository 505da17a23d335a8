import contextlib
import io
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
# A few steps of anything (conf/debug/fast.yaml: 4 steps, a row each, validation every 2 on 8 tasks), on the CPU.
TINY = ["debug=fast", "trainer.meta_batch=5", "trainer.device=cpu"]
# Omniglot from a local layout (make_layout's, in a test), split into background / evaluation alphabets.
OMNIGLOT_LAKE = ["dataset=omniglot", "dataset.download=false", "dataset.split_scheme=lake"]
ALPHABETS = {"images_background": ["Hebrew", "Latin", "Korean"], "images_evaluation": ["Angelic", "Tengwar"]}
OMNIGLOT = (ROOT.parent / "shared" / "data" / "omniglot").resolve()


def run_cli(*args, cwd, timeout=300, env=None):
    """Run `python -m metaexp ARGS` in a subprocess; returns the CompletedProcess (never raises on failure)."""
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "metaexp", *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_inline(*args, cwd, env=None):
    """`metaexp ARGS` in this process, through the command's own dispatch (Hydra app, one-paragraph errors,
    exit codes), as a CompletedProcess: for tests of what a command says and writes, where no signal or
    process boundary is under test (those use run_cli). An exception that escapes is a traceback in stderr."""
    from metaexp.cli import dispatch

    out, err, code = io.StringIO(), io.StringIO(), 0
    saved = {k: os.environ.get(k) for k in ("HYDRA_FULL_ERROR", "COLUMNS", *(env or {}))}
    os.environ.update({"HYDRA_FULL_ERROR": "0", "COLUMNS": "200", **(env or {})})
    argv, here = sys.argv, os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            dispatch([str(a) for a in args])
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    except BaseException:  # noqa: BLE001 - reported as a subprocess would report it
        err.write(traceback.format_exc())
        code = 1
    finally:
        os.chdir(here)
        sys.argv = argv
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def wait_until(condition, seconds: float, every: float = 0.01) -> bool:
    """Poll `condition()` every `every` seconds until it holds (True) or `seconds` pass (False)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


def make_layout(root: Path, drawings=4) -> Path:
    """A tiny official layout: black ink (0) on white (1), 105x105 one-bit PNGs; two characters per alphabet."""
    for archive, alphabets in ALPHABETS.items():
        for a, alphabet in enumerate(alphabets):
            for c in (1, 2):
                folder = root / archive / alphabet / f"character{c:02d}"
                folder.mkdir(parents=True)
                for d in range(drawings):
                    image = Image.new("1", (105, 105), 1)
                    for x in range(10 + 5 * a + c, 60 + d * 5):
                        for y in range(40, 60):
                            image.putpixel((x, y), 0)
                    image.save(folder / f"{a:02d}{c:02d}_{d + 1:02d}.png")
    return root


def straight_and_resumed(overrides: list, tmp_path: Path) -> tuple:
    """Train `overrides` straight through (tmp_path/straight) and again stopped after 2 steps and resumed with
    trainer.resume=auto (tmp_path/resumed), in process; returns both runs' last.pt parameters."""
    for name, extra in (("straight", []), ("resumed", ["trainer.steps=2"]), ("resumed", ["trainer.resume=auto"])):
        ran = run_inline("train", *overrides, *extra, f"hydra.run.dir={tmp_path / name}", cwd=tmp_path)
        assert ran.returncode == 0, ran.stdout + ran.stderr
    return tuple(
        torch.load(tmp_path / name / "checkpoints/last.pt", weights_only=False)["params"]
        for name in ("straight", "resumed")
    )


def metrics(run_dir) -> list:
    """The rows of a run directory's metrics.jsonl."""
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def random_batch(tasks: int, ways: int, queries: int = 2, channels: int = 1, size: int = 28, seed: int = 0):
    """`tasks` random-image `ways`-way 1-shot tasks with `queries` per class, labels in order."""
    from metaexp.samplers import TaskBatch

    g = torch.Generator().manual_seed(seed)
    return TaskBatch(
        torch.rand(tasks, ways, channels, size, size, generator=g),
        torch.arange(ways).expand(tasks, ways),
        torch.rand(tasks, ways * queries, channels, size, size, generator=g),
        torch.arange(ways).repeat(queries).expand(tasks, ways * queries),
    )


def eval_reports(run_dir) -> dict:
    """The evaluation reports of a run directory, by file name."""
    return {p.name: json.loads(p.read_text()) for p in Path(run_dir).glob("eval-*.json")}


def only_report(run_dir) -> dict:
    reports = eval_reports(run_dir)
    assert len(reports) == 1, sorted(reports)
    return next(iter(reports.values()))


@pytest.fixture
def cli(tmp_path):
    """`cli(*args)` runs metaexp in process (run_inline) in a temporary working directory (outputs land under
    it); tests of signals and of the process boundary call run_cli themselves."""

    def call(*args, **kwargs):
        kwargs.pop("timeout", None)
        return run_inline(*args, cwd=kwargs.pop("cwd", tmp_path), **kwargs)

    return call


@pytest.fixture(scope="session")
def omniglot_root():
    if not (OMNIGLOT / "images_background.zip").is_file():
        pytest.skip(f"real Omniglot not found at {OMNIGLOT} (expected ../shared/data/omniglot beside the repo)")
    return OMNIGLOT
