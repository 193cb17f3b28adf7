"""Datasets users bring (issue 24): ImageFolder trees, torchvision classes, LightningDataModules.

The ImageFolder fixture is written here, PNG and JPEG files of mixed sizes and modes; decoded
batches are checked against torchvision's own ``Resize`` + ``CenterCrop`` on the Pillow images,
statistics against numpy over those references, and each bad input against its one-line error.
"""

import pickle
import sqlite3
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets as tv_datasets
from torchvision import transforms

import normzoo.data as D
from normzoo import cli
from normzoo.bench.plan.config import parse_config
from normzoo.bench.plan.config.validate import check_files
from normzoo.data import NormzooDataModule
from normzoo.data.stores import ImageStore

CLASSES = ("ant", "bee", "cat")
SIZES = [(40, 30), (32, 32), (23, 57), (64, 48), (35, 35), (50, 41)]  # (width, height)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMZOO_CACHE", str(tmp_path / "cache"))


def _write_image(path: Path, size: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    w, h = size
    # smooth gradients plus noise: JPEG has something to compress, resizing something to blur
    base = np.linspace(0, 255, w)[None, :, None] * rng.uniform(0.3, 1, (1, 1, 3))
    pixels = (base + rng.normal(0, 40, (h, w, 3))).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    if seed % 5 == 1:
        image = image.convert("L")  # a grayscale file in an RGB dataset
    elif seed % 5 == 2:
        image = image.convert("P")  # a palette PNG
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        image.convert("RGB" if image.mode == "P" else image.mode).save(path, quality=90)
    else:
        image.save(path)


def make_folder(root: Path, splits=("train", "test"), per_class=(6, 3), classes=CLASSES) -> Path:
    seed = 0
    for split, count in zip(splits, per_class, strict=True):
        for name in classes:
            for i in range(count):
                ext = ".png" if i % 2 else ".jpg"
                _write_image(root / split / name / f"img{i}{ext}", SIZES[seed % len(SIZES)], seed)
                seed += 1
    return root


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_folder(tmp_path / "images", ("train", "val", "test"), (6, 2, 3))


def reference(path: str, size: int = 32, mode: str = "RGB") -> torch.Tensor:
    """torchvision's own pipeline on the Pillow image: the independent reference."""
    pipeline = transforms.Compose(
        [transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()]
    )
    with Image.open(path) as image:
        return pipeline(image.convert(mode))


def test_imagefolder_batches_equal_pil_decoding_and_labels_name_the_folders(folder):
    splits = D.load("imagefolder", folder)
    assert isinstance(splits.train_images, ImageStore)
    assert splits.train_images.shape == (18, 3, 32, 32) and splits.num_classes == 3
    assert (len(splits.val_labels), len(splits.test_labels)) == (6, 9)
    for store, labels in (
        (splits.train_images, splits.train_labels),
        (splits.val_images, splits.val_labels),
        (splits.test_images, splits.test_labels),
    ):
        decoded = store.decode(torch.arange(len(store)))
        assert decoded.dtype == torch.uint8
        for i in range(len(store)):
            path = store.describe(i)
            assert torch.equal(decoded[i], reference(path)), path
            assert CLASSES[int(labels[i])] == Path(path).parent.name
    gray = D.load("imagefolder", folder, channels=1, image_size=16)
    path = gray.test_images.describe(4)
    assert torch.equal(gray.test_images.decode([4])[0], reference(path, 16, "L"))


def test_datamodule_streams_a_lazy_subset_per_batch(folder):
    dm = NormzooDataModule("imagefolder", folder, train_batch_size=4, val_batch_size=5)
    dm.setup()
    assert len(dm.val_index) == 0  # the val/ folder is the validation split
    mean = torch.tensor(dm.splits.mean).reshape(1, 3, 1, 1)
    std = torch.tensor(dm.splits.std).reshape(1, 3, 1, 1)
    x, y = next(iter(dm.val_dataloader()))
    refs = torch.stack([reference(dm.splits.val_images.describe(i)) for i in range(5)])
    torch.testing.assert_close(x, (refs.float() / 255 - mean) / std)
    assert torch.equal(y, dm.splits.val_labels[:5])
    batches = list(dm.train_dataloader())
    assert len(batches) == 4 and all(b[0].shape == (4, 3, 32, 32) for b in batches)


def test_store_holds_paths_not_pixels(folder):
    splits = D.load("imagefolder", folder, image_size=64)
    store = splits.train_images
    pixels = store.shape.numel()  # bytes of the decoded split, uint8
    for _ in store.decode(torch.arange(len(store))):  # decoding keeps nothing
        pass
    held = [v for v in vars(store.reader).values() if isinstance(v, torch.Tensor)]
    assert not held and store.positions.numel() == len(store)
    assert len(pickle.dumps(store)) < pixels / 20  # what a DataLoader worker receives
    subset = store[torch.tensor([5, 1])]
    assert isinstance(subset, ImageStore) and subset.describe(0) == store.describe(5)


def test_mean_std_equal_the_closed_form_over_the_train_images(folder):
    splits = D.load("imagefolder", folder)
    paths = [splits.train_images.describe(i) for i in range(len(splits.train_images))]
    values = np.stack([reference(p).numpy() for p in paths]).astype(np.float64) / 255
    np.testing.assert_allclose(splits.mean, values.mean(axis=(0, 2, 3)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(splits.std, values.std(axis=(0, 2, 3)), rtol=0, atol=1e-12)
    some = D.load("imagefolder", folder, stats_images=4, seed=3)
    chosen = torch.randperm(18, generator=torch.Generator().manual_seed(3))[:4].sort().values
    subset = values[chosen.numpy()]
    np.testing.assert_allclose(some.mean, subset.mean(axis=(0, 2, 3)), rtol=0, atol=1e-12)
    assert some.mean != splits.mean
    given = D.load("imagefolder", folder, mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.2])
    assert (given.mean, given.std) == ((0.5, 0.4, 0.3), (0.2, 0.2, 0.2))


def test_test_fraction_splits_one_tree_by_class_and_seed(tmp_path):
    root = make_folder(tmp_path / "flat", ("all",), (10,)) / "all"
    a = D.load("imagefolder", root, test_fraction=0.3, seed=1)
    b = D.load("imagefolder", root, test_fraction=0.3, seed=1)
    c = D.load("imagefolder", root, test_fraction=0.3, seed=2)

    def paths(store):
        return [store.describe(i) for i in range(len(store))]

    assert paths(a.test_images) == paths(b.test_images) != paths(c.test_images)
    assert a.test_labels.bincount().tolist() == [3, 3, 3]  # stratified: 30 % of each class
    every = sorted(str(p) for p in root.rglob("*.*"))
    assert sorted(paths(a.train_images) + paths(a.test_images)) == every
    info = D.dataset_info("imagefolder", {"test_fraction": 0.3}, root)
    assert (info.train_size, info.test_size, info.num_classes) == (21, 9, 3)


def test_corrupted_lazy_test_batches_are_deterministic_and_batch_size_free(folder):
    dm = NormzooDataModule("imagefolder", folder, train_batch_size=4)

    def stacked(batch_size, corruption="gaussian_noise", seed=5, composition="iid"):
        severity = 3
        loader = dm.test_loader(
            batch_size, corruption, severity, composition=composition, seed=seed
        )
        return torch.cat([x for x, _ in loader])

    first = stacked(4)
    assert torch.equal(first, stacked(4))
    assert torch.equal(first, stacked(3))  # image i's noise depends on (seed, i) only
    assert not torch.equal(first, stacked(4, seed=6))
    assert not torch.allclose(first, stacked(4, "none"), atol=0.05)
    mixed = stacked(4, "mixed", composition="mixed_corruption")
    assert torch.equal(mixed, stacked(2, "mixed", composition="mixed_corruption"))


def test_corruption_uses_the_constants_of_the_source_resolution(folder):
    """Brightness at severity 5 adds 0.3 in HSV value at 32x32 (CIFAR-10-C) and 0.5 at 224x224
    (ImageNet-C): the lazy source's resolution picks the table."""
    from normzoo.data.corruptions import severity_params

    dm = NormzooDataModule(
        "imagefolder", folder, train_batch_size=4, dataset_options={"image_size": 224}
    )
    table, _, _ = severity_params(224, 224)
    assert table["brightness"][4] == 0.5
    x = torch.cat([x for x, _ in dm.test_loader(9, "brightness", 5, seed=0)])
    clean = torch.cat([x for x, _ in dm.test_loader(9, "none", 0)])
    std = torch.tensor(dm.splits.std).reshape(1, 3, 1, 1)
    shift = ((x - clean) * std).amax(dim=(1, 2, 3))  # the brightest channel's largest step
    assert float(shift.max()) == pytest.approx(0.5, abs=0.02)


# ----------------------------------------------------------------------------- errors


def _config(dataset="imagefolder", root=None, **options) -> dict:
    return {
        "experiment": {"name": "mine"},
        "data": {
            "dataset": dataset,
            "root": None if root is None else str(root),
            "options": options,
        },
        "norms": ["batch"],
        "train": {"batch_sizes": [4], "max_steps": 2, "seeds": 1},
        "eval": {"test_batch_sizes": [4], "stats_modes": ["running"], "shifts": ["clean"]},
        "execution": {"workers": 1, "wandb": "disabled"},
    }


def _problem(raw: dict) -> str:
    with pytest.raises(ValueError) as error:
        parse_config(raw)
    lines = str(error.value).splitlines()
    assert len(lines) == 2, lines  # the header and one problem line
    return lines[1]


def test_missing_root_empty_class_and_class_mismatch_fail_config_validation(tmp_path, folder):
    line = _problem(_config(root=tmp_path / "nowhere"))
    assert "nowhere does not exist" in line and "set data.root" in line
    assert "needs data.root" in _problem(_config())
    flat = make_folder(tmp_path / "flat", ("x",), (2,)) / "x"
    assert "no train/ and test/ folders" in _problem(_config(root=flat))
    (folder / "train" / "dog").mkdir()
    line = _problem(_config(root=folder))
    assert f"class folder {folder / 'train' / 'dog'} holds no images" in line
    _write_image(folder / "train" / "dog" / "a.png", (20, 20), 0)
    line = _problem(_config(root=folder))
    assert "class folders differ between train and test" in line and "['dog']" in line


def test_unreadable_image_is_named_and_skipped_only_by_option(tmp_path, folder):
    bad = folder / "test" / "bee" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    config = parse_config(_config(root=folder))  # listing decodes nothing: valid
    (problem,) = check_files(config)
    assert str(bad) in problem and "on_bad_image: skip" in problem
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(_config(root=folder)))
    assert cli.main(["compare", str(path), "--out", str(tmp_path / "out")]) == 2
    skipping = parse_config(_config(root=folder, on_bad_image="skip"))
    assert check_files(skipping) == []
    splits = D.load("imagefolder", folder, on_bad_image="skip")
    paths = [splits.test_images.describe(i) for i in range(len(splits.test_images))]
    assert str(bad) not in paths and len(paths) == 9
    assert [CLASSES[int(y)] for y in splits.test_labels] == [Path(p).parent.name for p in paths]


def test_unknown_torchvision_class_and_bad_import_path_fail_validation():
    line = _problem(_config("torchvision:CIFAR1000"))
    assert "unknown torchvision dataset class 'CIFAR1000'" in line and "CIFAR100" in line
    line = _problem(_config("datamodule:no_such_package.data:Images"))
    assert "does not import" in line and "PYTHONPATH" in line
    line = _problem(_config("datamodule:test_data_sources:Missing"))
    assert "has no 'Missing'" in line
    assert "datamodule:package.module:ClassName" in _problem(_config("datamodule:nocolon"))


# ----------------------------------------------------------------------------- datamodule


class _Images(Dataset):
    def __init__(self, n: int, seed: int, labels: bool = True) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 3, 12, 12, generator=g)
        self.y = torch.randint(0, 4, (n,), generator=g)
        self.y[:4] = torch.arange(4)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return (self.x[i], int(self.y[i])) if self.labels else self.x[i]


class TinyImages(pl.LightningDataModule):
    """A user's datamodule: float images in [0, 1], integer labels."""

    def __init__(self, n: int = 20, labels: bool = True) -> None:
        super().__init__()
        self.n, self.labels = n, labels

    def setup(self, stage=None):
        self.train_set = _Images(self.n, 0, self.labels)
        self.test_set = _Images(self.n // 2, 1, self.labels)

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=4)

    def test_dataloader(self):
        return DataLoader(self.test_set, batch_size=4)


def test_lightning_datamodule_by_import_path():
    name = "datamodule:test_data_sources:TinyImages"
    splits = D.load(name, init_args={"n": 16})
    reference_set = _Images(16, 0)
    assert splits.train_images.shape == (16, 3, 12, 12) and splits.num_classes == 4
    expected = (reference_set.x * 255).round().to(torch.uint8)
    assert torch.equal(splits.train_images.decode(torch.arange(16)), expected)
    assert torch.equal(splits.train_labels, reference_set.y)
    values = expected.double() / 255
    np.testing.assert_allclose(splits.mean, values.mean(dim=(0, 2, 3)).numpy(), atol=1e-12)
    info = D.dataset_info(name, {"init_args": {"n": 16}})
    assert (info.channels, info.image_size, info.train_size, info.test_size) == (3, 12, 16, 8)


def test_datamodule_without_labels_fails_validation():
    raw = _config("datamodule:test_data_sources:TinyImages", init_args={"labels": False})
    line = _problem(raw)
    assert "carries no class label" in line and "(image, label)" in line


# ----------------------------------------------------------------------------- torchvision


def test_torchvision_fakedata_streams_its_items():
    options = {
        "test_fraction": 0.25,
        "image_size": 16,
        "init_args": {"size": 20, "image_size": [3, 40, 30], "num_classes": 4},
    }
    splits = D.load("torchvision:FakeData", **options)
    fake = tv_datasets.FakeData(size=20, image_size=(3, 40, 30), num_classes=4)
    test_index = torch.randperm(20, generator=torch.Generator().manual_seed(0))[:5].sort().values
    assert len(splits.test_labels) == 5 and len(splits.train_labels) == 15
    pipeline = transforms.Compose(
        [transforms.Resize(16), transforms.CenterCrop(16), transforms.PILToTensor()]
    )
    decoded = splits.test_images.decode(torch.arange(5))
    for row, i in enumerate(test_index.tolist()):
        image, label = fake[i]
        assert torch.equal(decoded[row], pipeline(image.convert("RGB")))
        assert int(splits.test_labels[row]) == int(label)
    with pytest.raises(ValueError, match="has no train/test argument; set data.options.test_fr"):
        D.load("torchvision:FakeData", init_args={"size": 4})


def test_torchvision_class_with_a_train_argument_reads_root_and_never_downloads(tmp_path):
    line = _problem(_config("torchvision:CIFAR100", root=tmp_path))
    assert "could not be read from root" in line and "data.download: true" in line
    assert not any(tmp_path.iterdir())  # nothing fetched


# ----------------------------------------------------------------------------- end to end


def test_the_example_config_runs_dry_on_a_users_folder(folder, tmp_path, capsys):
    example = Path(__file__).resolve().parents[1] / "configs" / "examples" / "imagefolder.yaml"
    sets = [f"data.root={folder}", "train.batch_sizes=[4]", "eval.test_batch_sizes=[1,4]"]
    argv = ["compare", str(example), *(a for s in sets for a in ("--set", s)), "--dry-run"]
    assert cli.main([*argv, "--out", str(tmp_path / "out")]) == 0
    assert "estimated cost" in capsys.readouterr().out


@pytest.mark.slow
def test_compare_runs_on_an_imagefolder_directory(tmp_path):
    root = make_folder(tmp_path / "images", ("train", "test"), (16, 4), CLASSES[:2])
    raw = _config(root=root, image_size=16)
    raw["norms"] = ["batch", {"name": "group", "options": {"groups": 4}}]
    raw["model"] = {"backbone": "small_cnn"}
    raw["eval"]["shifts"] = ["clean", "gaussian_noise"]
    raw["eval"]["severities"] = [3]
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert cli.main(["compare", str(path), "--out", str(out)]) == 0
    with sqlite3.connect(out / "results.sqlite") as db:
        runs = db.execute("select status, count(*) from runs group by status").fetchall()
        evals = db.execute("select shift, accuracy from evaluations").fetchall()
    assert runs == [("ok", 2)]
    assert sorted({s for s, _ in evals}) == ["clean", "gaussian_noise"]
    assert all(0 <= a <= 1 for _, a in evals)
