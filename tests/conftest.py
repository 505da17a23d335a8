import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
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
