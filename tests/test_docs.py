"""The documentation site builds strictly (mkdocs: a missing page, a broken link or anchor fails it), every
page of docs/ is in its navigation, and every page of the navigation comes out as HTML; the concepts table
names every option of the config groups that make a run."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


class Config(yaml.SafeLoader):
    """mkdocs.yml as data: its `!!python/name:` tags (a Mermaid fence's formatter) read as None."""


Config.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def test_the_site_builds_strictly_with_every_page(tmp_path):
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Config)
    listed = {page for entry in config["nav"] for page in entry.values()}
    assert listed == {p.name for p in (ROOT / "docs").glob("*.md")}, "every docs/ page is in mkdocs.yml's nav"
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    for page in listed:
        html = tmp_path / "site" / ("index.html" if page == "index.md" else f"{Path(page).stem}/index.html")
        assert html.is_file() and "<h1" in html.read_text(), page
    assert (tmp_path / "site" / "results_curves.png").stat().st_size > 0
    shutil.rmtree(tmp_path / "site")


def test_the_concepts_table_names_every_option_of_the_groups_that_make_a_run():
    page = (ROOT / "docs" / "concepts.md").read_text()
    table = "\n".join(line for line in page.splitlines() if line.startswith("| "))
    named = {token.split("=")[-1] for token in re.findall(r"`([^`]+)`", table)}
    said = {token.split("=")[-1] for token in re.findall(r"`([^`]+)`", page)}
    for group in ("dataset", "sampler", "backbone", "algorithm", "optim", "scheduler", "logger"):
        options = {p.stem for p in (ROOT / "conf" / group).glob("*.yaml")}
        # The run's loggers sit under the table: they are neither task distribution, learner nor meta-learner.
        missing = options - (said if group == "logger" else named)
        assert not missing, f"docs/concepts.md's table does not name {group}={sorted(missing)}"
