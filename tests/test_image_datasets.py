"""mini-ImageNet, CIFAR-FS, FC100 and image-folder loaders on fixtures in their exact on-disk formats."""

import csv
import pickle

import numpy as np
import pytest
from PIL import Image

from metaexp.datasets.images import CIFAR_FS, FC100, CIFAR100Splits, ImageFolder, MiniImageNet
from metaexp.errors import MetaexpError


def write_cifar100(root, per_class=3):
    """torchvision's cifar-100-python pickles; fine class f has pixels == f and superclass f // 5."""
    fine_names = sorted({n for names in CIFAR_FS.values() for n in names})
    coarse_names = sorted({n for names in FC100.values() for n in names})
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": fine_names, "coarse_label_names": coarse_names}, f)
    for part, count in (("train", per_class - 1), ("test", 1)):
        fine = [c for c in range(100) for _ in range(count)]
        data = np.repeat(np.array(fine, dtype=np.uint8)[:, None], 3072, axis=1)
        with open(folder / part, "wb") as f:
            pickle.dump({b"data": data, b"fine_labels": fine, b"coarse_labels": [c // 5 for c in fine]}, f)
    return fine_names, coarse_names


def test_cifar_fs_uses_the_published_class_lists(tmp_path):
    fine_names, _ = write_cifar100(tmp_path)
    data = CIFAR100Splits(tmp_path, "cifar_fs", download=False)
    sizes = {s: len(data.split(s).class_names) for s in ("train", "val", "test")}
    assert sizes == {"train": 64, "val": 16, "test": 20}
    test = data.split("test")
    assert test.class_names == CIFAR_FS["test"] and test.images.shape == (60, 3, 32, 32)
    assert int(test.images[0, 0, 0, 0]) == fine_names.index("baby")


def test_fc100_splits_by_superclass(tmp_path):
    fine_names, coarse_names = write_cifar100(tmp_path)
    data = CIFAR100Splits(tmp_path, "fc100", image_size=28, download=False)
    for split, superclasses in FC100.items():
        names = data.split(split).class_names
        assert len(names) == 5 * len(superclasses)
        assert {coarse_names[fine_names.index(n) // 5] for n in names} == set(superclasses)
    assert data.split("train").images.shape[-1] == 28


def test_cifar_missing_names_the_layout(tmp_path):
    with pytest.raises(MetaexpError, match="cifar-100-python"):
        CIFAR100Splits(tmp_path, "cifar_fs", download=False).split("train")


def write_image(path, value, size=(90, 70)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)


def test_mini_imagenet_pickle_and_ravi_layouts_agree(tmp_path):
    pickled, ravi = tmp_path / "pickled", tmp_path / "ravi"
    pickled.mkdir()
    classes = {"n01": [0, 1, 2], "n02": [3, 4, 5]}
    data = np.stack([np.full((84, 84, 3), 40 * i, np.uint8) for i in range(6)])
    with open(pickled / "mini-imagenet-cache-test.pkl", "wb") as f:
        pickle.dump({"image_data": data, "class_dict": classes}, f)
    rows = []
    for name, indices in classes.items():
        for i in indices:
            write_image(ravi / "images" / f"{name}{i:08d}.jpg", 40 * i, size=(84, 84))
            rows.append({"filename": f"{name}{i:08d}.jpg", "label": name})
    with open(ravi / "test.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["filename", "label"])
        writer.writeheader()
        writer.writerows(rows)
    a, b = MiniImageNet(pickled).split("test"), MiniImageNet(ravi).split("test")
    assert a.class_names == b.class_names == ["n01", "n02"]
    assert a.images.shape == b.images.shape == (6, 3, 84, 84)
    assert (a.images.float() - b.images.float()).abs().max() <= 3, "JPEG round-trip of flat images"
    with pytest.raises(MetaexpError, match="mini-imagenet-cache"):
        MiniImageNet(tmp_path / "nothing").split("train")


def test_image_folder_splits_by_ratio_or_lists_and_resizes(tmp_path):
    for c in range(10):
        for i in range(3):
            write_image(tmp_path / f"class{c}" / f"{i}.png", 20 * c)
    data = ImageFolder(tmp_path, image_size=16, ratios=(0.6, 0.2, 0.2))
    splits = {s: data.split(s).class_names for s in ("train", "val", "test")}
    assert [len(v) for v in splits.values()] == [6, 2, 2]
    assert sorted(sum(splits.values(), [])) == sorted(f"class{c}" for c in range(10))
    train = data.split("train")
    assert train.images.shape == (18, 3, 16, 16) and int(train.images[0, 0, 8, 8]) == 20 * int(splits["train"][0][5:])
    listed = ImageFolder(tmp_path, image_size=16, classes={"train": ["class1"], "val": ["class2"], "test": ["class3"]})
    assert listed.split("test").class_names == ["class3"]
    with pytest.raises(MetaexpError, match="not under"):
        ImageFolder(tmp_path, classes={"train": ["nope"], "val": [], "test": []}).split("train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MetaexpError, match="no images"):
        ImageFolder(tmp_path, classes={"train": ["empty"], "val": [], "test": []}).split("train")
