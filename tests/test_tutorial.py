"""The tutorial (docs/tutorial.py, a jupytext script) runs as printed, and its page (docs/tutorial.md) shows
its code cells verbatim: a changed script with a stale page fails here."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def code_cells() -> list:
    cells = re.split(r"^# %%", (DOCS / "tutorial.py").read_text(), flags=re.M)[1:]
    return [c.strip("\n") for c in cells if not c.startswith(" [markdown]")]


def test_the_page_shows_every_code_cell_of_the_script():
    page = (DOCS / "tutorial.md").read_text()
    cells = code_cells()
    assert len(cells) >= 6
    for cell in cells:
        assert f"```python\n{cell}\n```" in page, cell.splitlines()[0]


@pytest.mark.slow  # the tutorial itself calls metaexp eval and summarize in subprocesses
def test_the_tutorial_runs_and_every_learner_adapts(tmp_path, omniglot_root):
    """MAML beats pretraining on sinusoids, a policy step helps, ProtoNets beats chance on an Omniglot episode and
    ACMRR's features track better than PID's (section 7 needs the real Omniglot: the fixture skips without it)."""
    env = {**os.environ, "TUTORIAL_OUT": str(tmp_path / "out"), "OMP_NUM_THREADS": "1",
           "METAEXP_DATA": str(omniglot_root.parent)}  # fmt: skip
    ran = subprocess.run([sys.executable, str(DOCS / "tutorial.py")], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=900)  # fmt: skip
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    lines = ran.stdout.splitlines()
    errors = ast.literal_eval(next(line for line in lines if line.startswith("{'MAML")))
    assert errors["MAML, 10 steps"] < errors["MAML, 1 steps"] < errors["MAML, 0 steps"]
    assert errors["MAML, 10 steps"] < errors["pretrained, 10 steps"]
    returns = dict(line.rsplit(" mean return ", 1) for line in lines if " mean return " in line)
    assert float(returns["after one step"]) > float(returns["before the step"])  # the step turns toward the goal
    right, queries = map(
        int, re.match(r"(\d+) of (\d+) queries right", next(x for x in lines if "queries right" in x)).groups()
    )
    assert right > 2 * queries / 5  # twice chance
    tracking = dict(line.rsplit(" RMS tracking error ", 1) for line in lines if " RMS tracking error " in line)
    assert float(tracking["ACMRR"]) < float(tracking["PID"])
    for picture in ("adaptation", "curves", "navigation", "omniglot", "flight"):
        assert (tmp_path / "out" / f"tutorial_{picture}.png").stat().st_size > 10_000
    assert list((tmp_path / "out" / "maml_sinusoid").glob("eval-test-10shot*.json"))
