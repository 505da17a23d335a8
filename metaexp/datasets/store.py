"""What every image data set shares: class-indexed uint8 tensors, image decoding, and a checked cache."""

import hashlib
import io
import logging
import os
import shutil
import time
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image

from metaexp import checkpoint
from metaexp.errors import MetaexpError

log = logging.getLogger("metaexp.datasets")
CACHE_VERSION = 1


class ClassSplit(NamedTuple):
    """Images `uint8 [N, C, H, W]`; class c owns rows `class_offsets[c]:class_offsets[c+1]`. `rotations`: the
    data set counts quarter turns of its images as new classes (Omniglot's characters, after Vinyals et al.
    2016; a turned photograph is the same class, so natural-image data sets do not)."""

    images: torch.Tensor
    class_offsets: torch.Tensor
    class_names: list
    rotations: bool = False

    def select(self, names) -> "ClassSplit":
        """The sub-split of the named classes, in the given order."""
        index = {n: i for i, n in enumerate(self.class_names)}
        missing = [n for n in names if n not in index]
        if missing:
            raise MetaexpError(f"Classes {missing[:3]} are not in the data set; check the split definition.")
        picks = [index[n] for n in names]
        rows = [torch.arange(self.class_offsets[c], self.class_offsets[c + 1]) for c in picks]
        counts = torch.tensor([0] + [len(r) for r in rows])
        images = self.images[torch.cat(rows)] if rows else self.images[:0]
        return ClassSplit(images, counts.cumsum(0), list(names))


def from_classes(images_per_class: list, names: list) -> ClassSplit:
    """Stack per-class uint8 tensors `[n_c, C, H, W]` into one ClassSplit."""
    counts = torch.tensor([0] + [len(x) for x in images_per_class])
    return ClassSplit(torch.cat(images_per_class), counts.cumsum(0), list(names))


def decode(blob: bytes, name: str, size: int, channels: int, invert: bool = False) -> torch.Tensor:
    """One encoded image as uint8 `[channels, size, size]`, resized with Lanczos filtering."""
    try:
        with Image.open(io.BytesIO(blob)) as image:
            image = image.convert("L" if channels == 1 else "RGB").resize((size, size), Image.LANCZOS)
    except Exception as error:
        raise MetaexpError(
            f"Cannot read the image {name} ({type(error).__name__}: {error}). The file is damaged "
            f"or not an image: restore it from the original data set, or remove it."
        ) from error
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size, size, channels)
    pixels = pixels.permute(2, 0, 1).contiguous()
    return 255 - pixels if invert else pixels


def load_image(path: Path, size: int, channels: int, invert: bool = False) -> torch.Tensor:
    """An image file as uint8 `[channels, size, size]`, preprocessed like the data set it joins."""
    try:
        blob = Path(path).read_bytes()
    except OSError as error:
        raise MetaexpError(f"Cannot open the image {path} ({error.strerror}).") from error
    return decode(blob, str(path), size, channels, invert)


def open_zip(path: Path) -> zipfile.ZipFile:
    try:
        archive = zipfile.ZipFile(path)
        broken = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise MetaexpError(
            f"{path} is damaged ({type(error).__name__}: {error}). Delete it and download it "
            f"again, or unzip a good copy next to it."
        ) from error
    if broken is not None:
        raise MetaexpError(
            f"{path} is damaged: its member {broken} fails its CRC check. Delete it and download "
            f"it again, or unzip a good copy next to it."
        )
    return archive


def fixed_channels(name: str, channels: int, expected: int) -> None:
    """Refuse a `dataset.channels` the data set does not have (the key exists for the backbone's in_channels)."""
    if channels != expected:
        raise MetaexpError(
            f"dataset.channels={channels}, but {name} images have {expected} channel"
            f"{'s' if expected > 1 else ''}; leave dataset.channels at {expected}."
        )


def try_download(download, root: Path, what: str) -> None:
    """Run a torchvision download into `root`; if it fails (no network, a checksum), warn and remove whatever it
    created, so that a failed download leaves no folders behind under a path nobody chose to fill."""
    root = Path(root)
    created = [p for p in (root, *root.parents) if not p.exists()]
    before = set(root.rglob("*")) if root.exists() else set()
    try:
        download()
    except Exception as error:
        log.warning("downloading %s failed: %s", what, error)
        if created:
            shutil.rmtree(created[-1], ignore_errors=True)
            return
        for path in sorted(set(root.rglob("*")) - before, reverse=True):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def cache_path(root: Path, name: str) -> Path:
    """`<root>/.metaexp/<name>` when the root is writable, else the user cache dir keyed by the root's path."""
    if os.access(root, os.W_OK):
        return root / ".metaexp" / name
    key = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "metaexp"
    return base / f"{root.name}-{key}" / name


def load_cache(path: Path, fingerprint: dict) -> ClassSplit | None:
    """The cached tensors if the file is intact and was built from the same sources and settings."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, weights_only=True)
        images = payload["images"]
        intact = (
            payload["fingerprint"] == {**fingerprint, "version": CACHE_VERSION}
            and zlib.crc32(images.numpy().tobytes()) == payload["crc32"]
        )
    except Exception as error:
        log.warning("cache %s is unreadable (%s); rebuilding it", path, type(error).__name__)
        return None
    if not intact:
        log.warning("cache %s does not match its sources or fails its checksum; rebuilding it", path)
        return None
    return ClassSplit(images, payload["class_offsets"], payload["class_names"])


def cached(path: Path, fingerprint: dict, build, what: str) -> ClassSplit:
    """The checked cache at `path`, or `build()` saved there when it is missing, stale or corrupt."""
    started = time.perf_counter()
    data = load_cache(path, fingerprint)
    if data is None:
        data = build()
        save_cache(path, data, fingerprint)
        log.info(
            "decoded %s (%d images) in %.1fs; cached at %s", what, len(data.images), time.perf_counter() - started, path
        )
    else:
        log.info("loaded %s from cache %s in %.2fs", what, path, time.perf_counter() - started)
    return data


def save_cache(path: Path, data: ClassSplit, fingerprint: dict) -> None:
    checkpoint.save(
        path,
        {
            "images": data.images,
            "class_offsets": data.class_offsets,
            "class_names": data.class_names,
            "fingerprint": {**fingerprint, "version": CACHE_VERSION},
            "crc32": zlib.crc32(data.images.numpy().tobytes()),
        },
    )
