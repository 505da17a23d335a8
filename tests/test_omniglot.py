"""The Omniglot loader on a small fixture in the official layout (folders and zips), and on the real data."""

import zipfile
from pathlib import Path

import pytest
import torch

from conftest import ALPHABETS, make_layout, only_report
from metaexp.datasets.omniglot import Omniglot
from metaexp.errors import MetaexpError


def zip_layout(folders: Path, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for archive in ALPHABETS:
        with zipfile.ZipFile(target / f"{archive}.zip", "w") as z:
            for path in sorted((folders / archive).rglob("*")):
                z.write(path, path.relative_to(folders).as_posix())
    return target


def test_folders_and_zips_load_the_same_tensors_in_canonical_order(tmp_path):
    folders = make_layout(tmp_path / "folders")
    zips = zip_layout(folders, tmp_path / "zips")
    a = Omniglot(folders, download=False).load()
    b = Omniglot(zips, download=False).load()
    assert a.class_names == b.class_names and torch.equal(a.images, b.images)
    assert a.class_names[0] == "images_background/Hebrew/character01"
    assert a.class_names[-1] == "images_evaluation/Tengwar/character02"
    assert a.images.shape == (40, 1, 28, 28) and a.images.dtype == torch.uint8
    assert a.images.float().mean() < 100 and a.images.max() == 255, "ink should be bright on a dark background"


def test_lake_split_and_image_size(tmp_path):
    root = make_layout(tmp_path / "data")
    data = Omniglot(root, split_scheme="lake", image_size=20, download=False)
    train, val, test = (data.split(s) for s in ("train", "val", "test"))
    assert [n.split("/")[1] for n in val.class_names] == ["Hebrew", "Hebrew"]
    assert {n.split("/")[1] for n in train.class_names} == {"Latin", "Korean"}
    assert {n.split("/")[0] for n in test.class_names} == {"images_evaluation"}
    assert train.images.shape[1:] == (1, 20, 20) and train.class_offsets.tolist() == [0, 4, 8, 12, 16]


def test_cache_is_used_then_rebuilt_when_corrupt_and_nothing_else_is_written(tmp_path):
    root = zip_layout(make_layout(tmp_path / "folders"), tmp_path / "zips")
    before = {p.name for p in root.iterdir()}
    first = Omniglot(root, download=False).load()
    cache = root / ".metaexp" / "omniglot-28px.pt"
    assert cache.is_file() and {p.name for p in root.iterdir()} == before | {".metaexp"}
    stamp = cache.stat().st_mtime_ns
    assert torch.equal(Omniglot(root, download=False).load().images, first.images)
    assert cache.stat().st_mtime_ns == stamp
    data = bytearray(cache.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cache.write_bytes(bytes(data))
    assert torch.equal(Omniglot(root, download=False).load().images, first.images)
    assert cache.stat().st_mtime_ns != stamp


def test_read_only_root_caches_in_user_cache_dir(tmp_path, monkeypatch):
    root = make_layout(tmp_path / "data")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr("os.access", lambda path, mode: False)
    Omniglot(root, download=False).load()
    assert not (root / ".metaexp").exists() and list((tmp_path / "cache" / "metaexp").glob("*/omniglot-28px.pt"))


def test_missing_root_names_the_layout(tmp_path):
    with pytest.raises(MetaexpError, match="images_background/<Alphabet>/characterNN"):
        Omniglot(tmp_path / "nowhere", download=False).load()


def test_truncated_zip_is_a_clear_error(tmp_path):
    root = zip_layout(make_layout(tmp_path / "folders"), tmp_path / "zips")
    archive = root / "images_background.zip"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(MetaexpError, match="images_background.zip is damaged"):
        Omniglot(root, download=False).load()


def test_unreadable_image_is_named(tmp_path):
    root = make_layout(tmp_path / "data")
    broken = next((root / "images_evaluation" / "Angelic" / "character01").glob("*.png"))
    broken.write_bytes(b"not a png")
    with pytest.raises(MetaexpError, match=f"Cannot read the image .*{broken.name}"):
        Omniglot(root, download=False).load()


@pytest.mark.slow  # decodes the real archives
def test_vinyals_split_matches_the_published_class_lists(omniglot_root, tmp_path):
    root = tmp_path / "omniglot"
    root.mkdir()
    for name in ("images_background.zip", "images_evaluation.zip"):
        (root / name).symlink_to(omniglot_root / name)
    data = Omniglot(root, download=False)
    for split in ("train", "val", "test"):
        published = {
            line.rsplit("/", 1)[0]
            for line in (omniglot_root / "splits" / "vinyals" / f"{split}.txt").read_text().split()
        }
        ours = data.split(split)
        assert {n.split("/", 1)[1] for n in ours.class_names} == published
        assert len(ours.images) == 20 * len(published)


@pytest.mark.slow
def test_protonet_trains_and_evaluates_on_real_omniglot(omniglot_root, cli, tmp_path):
    run = tmp_path / "run"
    trained = cli(
        "train",
        "algorithm=protonet",
        "dataset=omniglot",
        f"dataset.root={omniglot_root}",
        "dataset.download=false",
        "sampler.ways=20",  # its paper trains 60-way; 20-way episodes train three times as many steps a second
        "trainer.steps=30",
        "trainer.meta_batch=2",
        "trainer.log_every=10",
        "trainer.val_every=30",
        "trainer.val_tasks=20",
        "trainer.device=cpu",
        f"hydra.run.dir={run}",
        timeout=600,
    )
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    scored = cli("eval", f"checkpoint={run / 'checkpoints' / 'last.pt'}", "eval.episodes=100", "trainer.device=cpu")
    report = only_report(run)
    assert scored.returncode == 0 and report["episodes"] == 100
    assert report["mean"] > 0.5, "60 ProtoNet episodes on Omniglot already beat chance (0.2) by far"


def test_failed_download_leaves_no_folders_behind(tmp_path):
    from metaexp.datasets.store import try_download

    def fails_half_way(root):
        def download():
            (root / "omniglot-py" / "images_background").mkdir(parents=True)
            (root / "omniglot-py" / "partial.zip").write_bytes(b"half")
            raise RuntimeError("File not found or corrupted.")

        return download

    fresh = tmp_path / "new" / "omniglot"
    try_download(fails_half_way(fresh), fresh, "Omniglot")
    assert not (tmp_path / "new").exists(), "the folders it created are gone"
    existing = tmp_path / "mine"
    (existing / "notes.txt").parent.mkdir()
    (existing / "notes.txt").write_text("keep")
    try_download(fails_half_way(existing), existing, "Omniglot")
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"]
    with pytest.raises(MetaexpError, match="Omniglot is not at"):
        Omniglot(tmp_path / "absent", download=False).load()
    assert not (tmp_path / "absent").exists()
