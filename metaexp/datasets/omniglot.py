"""Omniglot (Lake et al. 2015) from the official layout, as extracted folders or the two zips in place."""

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from metaexp.datasets.store import ClassSplit, cache_path, cached, decode, from_classes, load_image, open_zip
from metaexp.datasets.store import fixed_channels, try_download
from metaexp.errors import MetaexpError

ARCHIVES = ("images_background", "images_evaluation")
VINYALS_TRAINVAL = 1200
VINYALS_VAL = ("Hebrew", "Mkhedruli_(Georgian)", "Armenian", "Early_Aramaic", "Bengali")
LAYOUT = (
    "images_background/<Alphabet>/characterNN/*.png and images_evaluation/... (extracted folders, or the "
    "official images_background.zip and images_evaluation.zip from github.com/brendenlake/omniglot/python)"
)


class Omniglot:
    """1,623 characters x 20 drawings; ink is bright (255) on a dark (0) background after loading.

    Splits: `vinyals` (first 1,200 characters in canonical order are train+val, val = the VINYALS_VAL
    alphabets, the other 423 test) or `lake` (background set minus the VINYALS_VAL alphabets for train, those
    alphabets for val, evaluation set for test).
    """

    def __init__(
        self,
        root,
        split_scheme: str = "vinyals",
        image_size: int = 28,
        channels: int = 1,
        download: bool = True,
        workers: int = 2,
    ):
        if split_scheme not in ("vinyals", "lake"):
            raise MetaexpError(f"dataset.split_scheme={split_scheme} is not one of vinyals, lake.")
        fixed_channels("Omniglot", channels, 1)
        self.root, self.split_scheme, self.image_size = Path(root).expanduser(), split_scheme, image_size
        self.download, self.workers = download, workers
        self._all = None

    def split(self, name: str) -> ClassSplit:
        data = self.load()
        canonical = data.class_names

        def alphabet(n):
            return n.split("/")[1]

        if self.split_scheme == "vinyals":
            trainval, test = canonical[:VINYALS_TRAINVAL], canonical[VINYALS_TRAINVAL:]
        else:
            trainval = [n for n in canonical if n.startswith("images_background/")]
            test = [n for n in canonical if n.startswith("images_evaluation/")]
        names = {
            "train": [n for n in trainval if alphabet(n) not in VINYALS_VAL],
            "val": [n for n in trainval if alphabet(n) in VINYALS_VAL],
            "test": test,
        }[name]
        return data.select(names)._replace(rotations=True)

    def preprocess(self, path: Path) -> torch.Tensor:
        """An image file resized and ink-inverted like the cached data set."""
        return load_image(path, self.image_size, 1, invert=True)

    def load(self) -> ClassSplit:
        """All characters in canonical order (background then evaluation, alphabets and characters sorted)."""
        if self._all is None:
            sources = self.sources()
            fingerprint = {
                "image_size": self.image_size,
                "sources": {str(p.name): (p.stat().st_size, int(p.stat().st_mtime)) for p in sources.values()},
            }
            self._all = cached(
                cache_path(self.root, f"omniglot-{self.image_size}px.pt"),
                fingerprint,
                lambda: self.decode_all(sources),
                "Omniglot",
            )
        return self._all

    def sources(self) -> dict:
        """Each archive name -> its extracted folder or zip file under the root (or torchvision's subfolder)."""
        found = self.find()
        if len(found) < len(ARCHIVES) and self.download:
            self.fetch()
            found = self.find()
        if len(found) < len(ARCHIVES):
            raise self.missing_error(found)
        return found

    def find(self) -> dict:
        found = {}
        for base in (self.root / "omniglot-py", self.root):
            for archive in ARCHIVES:
                if (base / archive).is_dir():
                    found[archive] = base / archive
                elif (base / f"{archive}.zip").is_file():
                    found[archive] = base / f"{archive}.zip"
        return found

    def fetch(self) -> None:
        from torchvision.datasets import Omniglot as TorchvisionOmniglot

        def download():
            for background in (True, False):
                TorchvisionOmniglot(str(self.root), background=background, download=True)

        try_download(download, self.root, "Omniglot")

    def missing_error(self, found: dict) -> MetaexpError:
        missing = [a for a in ARCHIVES if a not in found]
        return MetaexpError(
            f"Omniglot is not at {self.root}: {', '.join(missing)} missing. Expected the official layout "
            f"{LAYOUT}. Download it there (or let metaexp fetch it with network access, dataset.download=true), "
            f"or point dataset.root (or METAEXP_DATA) at a folder that has it."
        )

    def decode_all(self, sources: dict) -> ClassSplit:
        jobs = [(str(path), archive, self.image_size) for archive, path in sources.items()]
        with ProcessPoolExecutor(max_workers=max(1, min(self.workers, len(jobs)))) as pool:
            parts = list(pool.map(decode_archive, *zip(*jobs)))
        names = [n for part_names, _ in parts for n in part_names]
        images = [x for _, part_images in parts for x in part_images]
        return from_classes(images, names)


def decode_archive(path: str, archive: str, size: int):
    """(class names `archive/Alphabet/characterNN`, per-class uint8 tensors) of one archive, sorted."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p.relative_to(path.parent).as_posix() for p in path.glob("*/*/*.png"))

        def read(member):
            return (path.parent / member).read_bytes()

        def where(member):
            return str(path.parent / member)
    else:
        zipped = open_zip(path)
        files = sorted(m for m in zipped.namelist() if m.endswith(".png") and m.count("/") == 3)
        read = zipped.read

        def where(member):
            return f"{path} (member {member})"

    classes = {}
    for member in files:
        alphabet_dir, alphabet, character, _ = member.split("/")
        if alphabet_dir != archive:
            continue
        image = decode(read(member), where(member), size, channels=1, invert=True)
        classes.setdefault(f"{archive}/{alphabet}/{character}", []).append(image)
    if not classes:
        raise MetaexpError(f"{path} holds no images in the layout {LAYOUT}.")
    names = sorted(classes)
    return names, [torch.stack(classes[n]) for n in names]
