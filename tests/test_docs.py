"""The documentation site builds strictly (mkdocs: a missing page, a broken link or anchor fails it), every
page of docs/ is in its navigation, and every page of the navigation comes out as HTML."""

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_the_site_builds_strictly_with_every_page(tmp_path):
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
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
