"""Image data sets beside Omniglot: mini-ImageNet, CIFAR-FS, FC100 (from CIFAR-100) and any image folder."""

import csv
import pickle
import random
from pathlib import Path

import numpy as np
import torch

from metaexp.datasets.store import ClassSplit, cache_path, cached, decode, from_classes, load_image
from metaexp.datasets.store import fixed_channels, try_download
from metaexp.errors import MetaexpError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}

CIFAR_FS = {  # Bertinetto et al. (2019), R2-D2 repository splits
    "train": [
        "train",
        "skyscraper",
        "turtle",
        "raccoon",
        "spider",
        "orange",
        "castle",
        "keyboard",
        "clock",
        "pear",
        "girl",
        "seal",
        "elephant",
        "apple",
        "aquarium_fish",
        "bus",
        "mushroom",
        "possum",
        "squirrel",
        "chair",
        "tank",
        "plate",
        "wolf",
        "road",
        "mouse",
        "boy",
        "shrew",
        "couch",
        "sunflower",
        "tiger",
        "caterpillar",
        "lion",
        "streetcar",
        "lawn_mower",
        "tulip",
        "forest",
        "dolphin",
        "cockroach",
        "bear",
        "porcupine",
        "bee",
        "hamster",
        "lobster",
        "bowl",
        "can",
        "bottle",
        "trout",
        "snake",
        "bridge",
        "pine_tree",
        "skunk",
        "lizard",
        "cup",
        "kangaroo",
        "oak_tree",
        "dinosaur",
        "rabbit",
        "orchid",
        "willow_tree",
        "ray",
        "palm_tree",
        "mountain",
        "house",
        "cloud",
    ],
    "val": [
        "otter",
        "motorcycle",
        "television",
        "lamp",
        "crocodile",
        "shark",
        "butterfly",
        "beaver",
        "beetle",
        "tractor",
        "flatfish",
        "maple_tree",
        "camel",
        "crab",
        "sea",
        "cattle",
    ],
    "test": [
        "baby",
        "bed",
        "bicycle",
        "chimpanzee",
        "fox",
        "leopard",
        "man",
        "pickup_truck",
        "plain",
        "poppy",
        "rocket",
        "rose",
        "snail",
        "sweet_pepper",
        "table",
        "telephone",
        "wardrobe",
        "whale",
        "woman",
        "worm",
    ],
}
FC100 = {  # Oreshkin et al. (2018): CIFAR-100 superclasses per split
    "train": [
        "fish",
        "flowers",
        "food_containers",
        "fruit_and_vegetables",
        "household_electrical_devices",
        "household_furniture",
        "large_man-made_outdoor_things",
        "large_natural_outdoor_scenes",
        "reptiles",
        "trees",
        "vehicles_1",
        "vehicles_2",
    ],
    "val": ["large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates", "small_mammals"],
    "test": ["aquatic_mammals", "insects", "medium_mammals", "people"],
}


def missing(name: str, root: Path, layout: str) -> MetaexpError:
    return MetaexpError(
        f"{name} is not at {root}: expected {layout}. Put the data there, or point dataset.root "
        f"(or METAEXP_DATA) at a folder that has it."
    )


class CIFAR100Splits:
    """CIFAR-FS or FC100 from torchvision's on-disk CIFAR-100 (`<root>/cifar-100-python/{train,test,meta}`),
    all 600 images per class."""

    LAYOUT = "torchvision's CIFAR-100 layout, cifar-100-python/{train,test,meta}"

    def __init__(self, root, scheme: str, image_size: int = 32, channels: int = 3, download: bool = True):
        if scheme not in ("cifar_fs", "fc100"):
            raise MetaexpError(f"dataset.scheme={scheme} is not one of cifar_fs, fc100.")
        fixed_channels("CIFAR-100", channels, 3)
        self.root, self.scheme, self.image_size, self.download = Path(root).expanduser(), scheme, image_size, download
        self._classes = None

    def preprocess(self, path: Path) -> torch.Tensor:
        return load_image(path, self.image_size, 3)

    def split(self, name: str) -> ClassSplit:
        images, fine, coarse = self.load()
        if self.scheme == "cifar_fs":
            names = CIFAR_FS[name]
        else:
            names = [f for f in fine if coarse[f] in FC100[name]]
        return from_classes([images[n] for n in names], names)

    def load(self):
        if self._classes is None:
            folder = self.root / "cifar-100-python"
            if not folder.is_dir() and self.download:
                from torchvision.datasets import CIFAR100

                try_download(lambda: CIFAR100(str(self.root), download=True), self.root, "CIFAR-100")
            if not all((folder / f).is_file() for f in ("train", "test", "meta")):
                raise missing("CIFAR-100", self.root, self.LAYOUT)
            meta = unpickle(folder / "meta")
            fine_names = [text(n) for n in meta_field(meta, "fine_label_names")]
            coarse_names = [text(n) for n in meta_field(meta, "coarse_label_names")]
            per_class, coarse_of = {n: [] for n in fine_names}, {}
            for part in ("train", "test"):
                batch = unpickle(folder / part)
                data = np.asarray(meta_field(batch, "data"), dtype=np.uint8).reshape(-1, 3, 32, 32)
                labels = zip(meta_field(batch, "fine_labels"), meta_field(batch, "coarse_labels"))
                for (fine, coarse), image in zip(labels, data):
                    per_class[fine_names[fine]].append(image)
                    coarse_of[fine_names[fine]] = coarse_names[coarse]
            images = {n: resize(torch.from_numpy(np.stack(v)), self.image_size) for n, v in per_class.items()}
            self._classes = (images, fine_names, coarse_of)
        return self._classes


def unpickle(path: Path):
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except Exception as error:
        raise MetaexpError(
            f"Cannot read {path} ({type(error).__name__}: {error}); the file is damaged. "
            f"Delete it and download the data set again."
        ) from error


def meta_field(mapping: dict, key: str):
    return mapping[key.encode()] if key.encode() in mapping else mapping[key]


def text(name) -> str:
    """A pickled name as str (CIFAR's and mini-ImageNet's pickles hold bytes or str)."""
    return name.decode() if isinstance(name, bytes) else name


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, C, H, W] resized to size x size (bilinear, antialiased); unchanged if already that size."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    resized = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
    return resized.round().clamp(0, 255).to(torch.uint8)


class MiniImageNet:
    """mini-ImageNet (Vinyals et al. 2016 / Ravi & Larochelle 2017 split) from either the common pickle caches
    (`mini-imagenet-cache-{split}.pkl` with `image_data` and `class_dict`) or the Ravi layout (`images/` and
    `{split}.csv` with `filename,label`)."""

    LAYOUT = "mini-imagenet-cache-{train,val,test}.pkl, or images/*.jpg with train.csv, val.csv, test.csv"

    def __init__(self, root, image_size: int = 84, channels: int = 3):
        fixed_channels("mini-ImageNet", channels, 3)
        self.root, self.image_size = Path(root).expanduser(), image_size

    def preprocess(self, path: Path) -> torch.Tensor:
        return load_image(path, self.image_size, 3)

    def split(self, name: str) -> ClassSplit:
        pickled = self.root / f"mini-imagenet-cache-{name}.pkl"
        if pickled.is_file():
            payload = unpickle(pickled)
            data = np.asarray(meta_field(payload, "image_data"), dtype=np.uint8)
            classes = meta_field(payload, "class_dict")
            lookup = {text(n): v for n, v in classes.items()}
            names = sorted(lookup)
            images = torch.from_numpy(data).permute(0, 3, 1, 2)
            return from_classes([resize(images[list(lookup[n])], self.image_size) for n in names], names)
        table = self.root / f"{name}.csv"
        if table.is_file() and (self.root / "images").is_dir():
            with table.open() as f:
                rows = [r for r in csv.DictReader(f)]
            by_class = {}
            for row in rows:
                by_class.setdefault(row["label"], []).append(self.root / "images" / row["filename"])
            return cached_decode(
                self.root,
                f"mini_imagenet-{name}-{self.image_size}px.pt",
                by_class,
                self.image_size,
                3,
                {"table": table.stat().st_size},
            )
        raise missing("mini-ImageNet", self.root, self.LAYOUT)


class ImageFolder:
    """Any data set with one folder per class. Split by class lists (`classes: {train: [...], ...}`) or, if
    none are given, by `ratios` of the sorted classes shuffled with `split_seed`."""

    def __init__(
        self,
        root,
        image_size: int = 84,
        channels: int = 3,
        classes: dict | None = None,
        ratios=(0.64, 0.16, 0.20),
        split_seed: int = 0,
    ):
        self.root, self.image_size, self.channels = Path(root).expanduser(), image_size, channels
        self.classes, self.ratios, self.split_seed = classes, tuple(ratios), split_seed

    def preprocess(self, path: Path) -> torch.Tensor:
        return load_image(path, self.image_size, self.channels)

    def class_lists(self, available: list) -> dict:
        if self.classes:
            unknown = sorted({c for names in self.classes.values() for c in names} - set(available))
            if unknown:
                raise MetaexpError(f"dataset.classes names folders that are not under {self.root}: {unknown[:5]}.")
            return {k: list(v) for k, v in self.classes.items()}
        if abs(sum(self.ratios) - 1.0) > 1e-6:
            raise MetaexpError(f"dataset.ratios={list(self.ratios)} must sum to 1 (train, val, test).")
        order = sorted(available)
        random.Random(self.split_seed).shuffle(order)
        cut1 = round(self.ratios[0] * len(order))
        cut2 = cut1 + round(self.ratios[1] * len(order))
        return {"train": order[:cut1], "val": order[cut1:cut2], "test": order[cut2:]}

    def split(self, name: str) -> ClassSplit:
        if not self.root.is_dir():
            raise missing("The image folder", self.root, "<root>/<class name>/<image files>")
        folders = {p.name: p for p in sorted(self.root.iterdir()) if p.is_dir() and not p.name.startswith(".")}
        names = self.class_lists(list(folders))[name]
        if not names:
            raise MetaexpError(
                f"The {name} split of {self.root} has no classes: {len(folders)} class folders split by "
                f"{'dataset.classes' if self.classes else f'dataset.ratios={list(self.ratios)}'} leave it empty. "
                f"Add class folders, or give the {name} split some classes."
            )
        files = {n: sorted(f for f in folders[n].iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) for n in names}
        empty = [n for n, f in files.items() if not f]
        if empty:
            raise MetaexpError(f"Class folders with no images under {self.root}: {empty[:5]}.")
        return cached_decode(
            self.root,
            f"image_folder-{name}-{self.image_size}px.pt",
            files,
            self.image_size,
            self.channels,
            {"classes": names},
        )


def cached_decode(root: Path, cache_name: str, files: dict, size: int, channels: int, extra: dict) -> ClassSplit:
    """Decode `files` (class -> image paths) once; later loads read the checked cache."""
    fingerprint = {
        "size": size,
        "channels": channels,
        **extra,
        "files": sum(len(v) for v in files.values()),
        "bytes": sum(p.stat().st_size for v in files.values() for p in v),
    }

    def build():
        return from_classes(
            [torch.stack([decode(p.read_bytes(), str(p), size, channels) for p in files[n]]) for n in files],
            list(files),
        )

    return cached(cache_path(root, cache_name), fingerprint, build, cache_name)
