"""Datasets users bring: an ImageFolder tree, a torchvision dataset class, a LightningDataModule.

Each source becomes lazy `ImageStore` splits (paths or dataset items, never pixels in memory) with
labels in memory and normalization statistics of its training split, computed by streaming
(`stream_channel_stats`) or given as options. Names (see ``normzoo.data.datasets``):

- ``imagefolder``: ``root/train/<class>/<image>``, ``root/test/<class>/<image>`` and optionally
  ``root/val/<class>/<image>``; or ``root/<class>/<image>`` with ``test_fraction`` (a stratified
  split by ``seed``). Any format Pillow reads; resized and center-cropped to ``image_size``.
- ``torchvision:<Class>``: a ``torchvision.datasets`` class under ``root``, split by its
  ``train=`` or ``split=`` argument (or ``test_fraction`` where it has neither); downloaded only
  by the benchmark's ``data.download: true`` (`download_source`).
- ``datamodule:<package.module>:<Class>``: a user's LightningDataModule built with
  ``init_args``; the map-style datasets behind its train/test (and val) loaders, items
  ``(image, label)`` with images uint8 or float in [0, 1] (C, H, W).

Errors are one line naming the problem and the fix. Statistics and the check that every image
decodes are cached on disk (``$NORMZOO_CACHE/sources``) by the files' names, sizes and times, so a
grid of runs decodes a folder once.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from normzoo.data.stores import (
    IMAGE_EXTENSIONS,
    BadImageError,
    DatasetReader,
    FileReader,
    ImageStore,
    stream_channel_stats,
)
from normzoo.data.synthetic import cache_dir


@dataclass(frozen=True)
class Source:
    """The splits of a user's dataset: lazy images, labels in memory, class names."""

    train: ImageStore
    train_labels: torch.Tensor
    test: ImageStore
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    val: ImageStore | None = None
    val_labels: torch.Tensor | None = None


# ----------------------------------------------------------------------------- imagefolder


def _class_tree(folder: Path) -> tuple[tuple[str, ...], list[list[str]]]:
    """Class names (sorted sub-folders) and each class's image paths (sorted), as ImageFolder."""
    if not folder.is_dir():
        raise FileNotFoundError(
            f"imagefolder: {folder} is not a directory; create it with one sub-folder of images "
            "per class (root/<class>/<image>)"
        )
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and e.name[0] != ".")
    if not classes:
        raise FileNotFoundError(
            f"imagefolder: {folder} has no class folders; put images in {folder}/<class>/"
        )
    paths = []
    for name in classes:
        found = []
        for base, dirs, files in os.walk(folder / name, followlinks=True):
            dirs[:] = sorted(d for d in dirs if d[0] != ".")
            found += [
                os.path.join(base, f)
                for f in sorted(files)
                if f[0] != "." and f.lower().endswith(IMAGE_EXTENSIONS)
            ]
        if not found:
            raise FileNotFoundError(
                f"imagefolder: class folder {folder / name} holds no images "
                f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder"
            )
        paths.append(found)
    return tuple(classes), paths


def _flat(paths: list[list[str]]) -> tuple[list[str], torch.Tensor]:
    labels = [label for label, group in enumerate(paths) for _ in group]
    return [p for group in paths for p in group], torch.tensor(labels, dtype=torch.long)


def _same_classes(train: tuple[str, ...], other: tuple[str, ...], name: str) -> None:
    if train != other:
        only_train = sorted(set(train) - set(other))
        only_other = sorted(set(other) - set(train))
        raise ValueError(
            f"imagefolder: class folders differ between train and {name} (only in train: "
            f"{only_train}, only in {name}: {only_other}); give {name}/ the class folders of train/"
        )


@dataclass(frozen=True)
class FolderListing:
    """The files of an ImageFolder dataset per split, before any image is decoded."""

    classes: tuple[str, ...]
    train: tuple[list[str], torch.Tensor]
    test: tuple[list[str], torch.Tensor]
    val: tuple[list[str], torch.Tensor] | None


def list_folder(root, test_fraction: float | None = None, seed: int = 0) -> FolderListing:
    """The files of an ImageFolder dataset (sub-roots, or one tree split by ``test_fraction``)."""
    if root is None:
        raise ValueError("imagefolder needs data.root: the directory of the images")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"imagefolder: root {root} does not exist; set data.root to the dataset's directory"
        )
    if test_fraction is not None:
        classes, paths = _class_tree(root)
        g = torch.Generator().manual_seed(seed)
        train, test = [], []
        for group in paths:
            order = torch.randperm(len(group), generator=g).tolist()
            n_test = int(round(test_fraction * len(group)))
            test.append(sorted(group[i] for i in order[:n_test]))
            train.append(sorted(group[i] for i in order[n_test:]))
        if not any(test) or not any(train):
            raise ValueError(
                f"imagefolder: test_fraction={test_fraction} leaves an empty split of {root}; "
                "use a fraction that leaves images on both sides"
            )
        return FolderListing(classes, _flat(train), _flat(test), None)
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise FileNotFoundError(
            f"imagefolder: {root} has no train/ and test/ folders; put images in "
            f"{root}/train/<class>/ and {root}/test/<class>/, or set data.options.test_fraction "
            f"(e.g. 0.2) to split {root}/<class>/"
        )
    classes, train = _class_tree(root / "train")
    test_classes, test = _class_tree(root / "test")
    _same_classes(classes, test_classes, "test")
    val = None
    if (root / "val").is_dir():
        val_classes, val_paths = _class_tree(root / "val")
        _same_classes(classes, val_classes, "val")
        val = _flat(val_paths)
    return FolderListing(classes, _flat(train), _flat(test), val)


def _signature(paths: list[str]) -> list:
    out = []
    for p in paths:
        stat = os.stat(p)
        out.append((p, stat.st_size, stat.st_mtime_ns))
    return out


def _cached(key: object, compute) -> dict:
    """``compute()`` (a JSON-able dict), cached on disk under the hash of ``key``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    path = cache_dir() / "sources" / f"{digest[:32]}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    value = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(value))
        os.replace(tmp, path)
    except OSError:  # a read-only cache costs time, never a result
        pass
    return value


def _bad_images(reader: FileReader) -> list[list[str]]:
    """``[path, reason]`` of every file of ``reader`` that does not decode."""
    bad = []
    for i in range(len(reader)):
        try:
            reader.read(i)
        except BadImageError as error:
            bad.append([reader.paths[i], str(error.__context__ or error)])
    return bad


def _keep(split: tuple[list[str], torch.Tensor], bad: set[str]):
    paths, labels = split
    keep = [i for i, p in enumerate(paths) if p not in bad]
    return [paths[i] for i in keep], labels[keep]


def load_imagefolder(root, options: dict) -> tuple[Source, tuple, tuple]:
    """An ImageFolder dataset's lazy splits and its train statistics (mean, std)."""
    listing = list_folder(root, options["test_fraction"], options["seed"])
    channels, size = options["channels"], options["image_size"]
    splits = [listing.train, listing.test] + ([listing.val] if listing.val else [])
    every = [p for paths, _ in splits for p in paths]
    checked = _cached(
        ["imagefolder-decodes", channels, size, _signature(every)],
        lambda: {"bad": _bad_images(FileReader(every, channels, size))},
    )
    bad = {path for path, _ in checked["bad"]}
    if bad and options["on_bad_image"] == "error":
        path, reason = checked["bad"][0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise BadImageError(
            f"imagefolder: unreadable image {path}: {reason}{more}; fix or delete it, or set "
            "data.options.on_bad_image: skip to leave such files out"
        )
    kept = [_keep(split, bad) for split in splits]
    for (_, labels), name in zip(kept, ("train", "test", "val"), strict=False):
        missing = sorted(set(range(len(listing.classes))) - set(labels.tolist()))
        if missing:
            raise ValueError(
                f"imagefolder: {name} class {listing.classes[missing[0]]!r} has no readable image "
                "left; add images or remove the class folder"
            )
    stores = [ImageStore(FileReader(paths, channels, size)) for paths, _ in kept]
    source = Source(
        stores[0],
        kept[0][1],
        stores[1],
        kept[1][1],
        listing.classes,
        stores[2] if len(stores) > 2 else None,
        kept[2][1] if len(kept) > 2 else None,
    )
    key = ["imagefolder-stats", _signature(kept[0][0])]
    mean, std = _stats(source, options, key, disk=True)
    return source, mean, std


_MEMO: dict[str, dict] = {}  # statistics of library sources, per process


def _stats(source: Source, options: dict, key: list, disk: bool) -> tuple[tuple, tuple]:
    """Given ``mean``/``std``, or streamed over the train split (``stats_images`` of them).

    ``disk``: cache by ``key`` on disk (an ImageFolder's key holds every file's size and time);
    library sources, whose transforms the key cannot see, are cached per process only."""
    if options.get("mean") is not None:
        return tuple(options["mean"]), tuple(options["std"])
    limit, seed = options.get("stats_images"), options.get("seed", 0)
    full_key = [*key, tuple(source.train.shape[1:]), limit, seed]

    def compute() -> dict:
        mean, std = stream_channel_stats(source.train, limit, seed)
        return {"mean": mean, "std": std}

    if disk:
        value = _cached(full_key, compute)
    else:
        memo = json.dumps(full_key, default=str)
        value = _MEMO[memo] = _MEMO[memo] if memo in _MEMO else compute()
    return tuple(value["mean"]), tuple(value["std"])


# ----------------------------------------------------------------------------- torchvision

# split= values (train, test) of torchvision classes whose train split is not named "train"
_SPLIT_NAMES = {"OxfordIIITPet": ("trainval", "test"), "Country211": ("train", "test")}


def torchvision_class(class_name: str):
    """The ``torchvision.datasets`` class called ``class_name``; ValueError listing the known."""
    import torchvision.datasets as tvd

    names = sorted(n for n in tvd.__all__ if n[0].isupper())
    cls = getattr(tvd, class_name, None)
    if class_name not in names or not inspect.isclass(cls):
        import difflib

        close = difflib.get_close_matches(class_name, names, n=1)
        hint = f" (did you mean 'torchvision:{close[0]}'?)" if close else ""
        raise ValueError(
            f"unknown torchvision dataset class {class_name!r}{hint}; use one of "
            f"torchvision.datasets: {', '.join(names)}"
        )
    return cls


def _split_kwargs(cls, class_name: str) -> list[dict] | None:
    """Constructor arguments of the train and test split, or None when the class has none."""
    params = inspect.signature(cls).parameters
    if "train" in params:
        return [{"train": True}, {"train": False}]
    if "split" in params:
        train, test = _SPLIT_NAMES.get(class_name, ("train", "test"))
        return [{"split": train}, {"split": test}]
    return None


def _construct(cls, class_name: str, kwargs: dict, root, download: bool):
    params = inspect.signature(cls).parameters
    if "root" in params:
        from normzoo.data.files import data_root

        kwargs = {"root": str(data_root(root)), **kwargs}
    if "download" in params:
        kwargs["download"] = download
    try:
        return cls(**kwargs)
    except (RuntimeError, OSError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FileNotFoundError(
            f"torchvision:{class_name} could not be read from root {kwargs.get('root')} "
            f"({first}); put the files there or set data.download: true"
        ) from None
    except TypeError as error:
        raise ValueError(
            f"torchvision:{class_name} rejected its arguments {kwargs}: {error}; fix "
            "data.options.init_args"
        ) from None


def dataset_labels(dataset, where: str) -> torch.Tensor:
    """Labels of a map-style dataset: its ``targets``/``labels`` attribute, else each item's
    second element, read once; ValueError when items carry no label."""
    for attribute in ("targets", "labels", "_labels", "_samples_labels"):
        values = getattr(dataset, attribute, None)
        sized = isinstance(values, (list, tuple, torch.Tensor)) or hasattr(values, "__array__")
        if sized and not isinstance(values, str) and len(values) == len(dataset):
            return torch.as_tensor([int(v) for v in values], dtype=torch.long)
    labels = []
    for i in range(len(dataset)):
        item = dataset[i]
        label = item[1] if isinstance(item, (tuple, list)) and len(item) >= 2 else None
        if isinstance(label, torch.Tensor) and label.numel() == 1:
            label = label.item()
        if isinstance(label, bool) or not isinstance(label, int):
            got = type(item).__name__ if label is None else f"label {label!r}"
            raise ValueError(
                f"{where}: item {i} carries no class label (got {got}); return (image, label) "
                "items with an integer label"
            )
        labels.append(label)
    return torch.tensor(labels, dtype=torch.long)


def _fraction_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = int(round(fraction * n))
    return order[n_test:].sort().values, order[:n_test].sort().values


@lru_cache(maxsize=4)
def _torchvision_datasets(class_name: str, root, init_args: str, test_fraction, seed: int):
    cls = torchvision_class(class_name)
    kwargs = json.loads(init_args)
    splits = _split_kwargs(cls, class_name)
    if splits is None:
        if test_fraction is None:
            raise ValueError(
                f"torchvision:{class_name} has no train/test argument; set "
                "data.options.test_fraction (e.g. 0.2) to split it by seed"
            )
        full = _construct(cls, class_name, kwargs, root, False)
        labels = dataset_labels(full, f"torchvision:{class_name}")
        train, test = _fraction_split(len(full), test_fraction, seed)
        return (full, train, labels[train]), (full, test, labels[test])
    out = []
    for split in splits:
        dataset = _construct(cls, class_name, {**kwargs, **split}, root, False)
        out.append((dataset, None, dataset_labels(dataset, f"torchvision:{class_name}")))
    return tuple(out)


def _classes(dataset, labels: torch.Tensor) -> tuple[str, ...]:
    names = getattr(dataset, "classes", None)
    if isinstance(names, (list, tuple)) and len(names) > int(labels.max()):
        return tuple(map(str, names))
    return tuple(str(i) for i in range(int(labels.max()) + 1))


def load_torchvision(class_name: str, root, options: dict) -> tuple[Source, tuple, tuple]:
    """A torchvision dataset's lazy splits (items decoded per index) and train statistics."""
    init_args = json.dumps(options["init_args"], sort_keys=True)
    parts = _torchvision_datasets(
        class_name, root, init_args, options["test_fraction"], options["seed"]
    )
    stores = []
    for dataset, positions, _ in parts:
        reader = DatasetReader(
            dataset, options["channels"], options["image_size"], f"torchvision:{class_name}"
        )
        stores.append(ImageStore(reader, positions))
    (train_set, _, train_labels), (_, _, test_labels) = parts
    classes = _classes(train_set, torch.cat([train_labels, test_labels]))
    source = Source(stores[0], train_labels, stores[1], test_labels, classes)
    key = ["torchvision", class_name, str(root), init_args, len(train_labels), len(test_labels)]
    mean, std = _stats(source, options, key, disk=False)
    return source, mean, std


def download_source(class_name: str, root, options: dict) -> None:
    """Fetch a torchvision dataset through its own downloader (``data.download: true`` only)."""
    cls = torchvision_class(class_name)
    if "download" not in inspect.signature(cls).parameters:
        return
    for split in _split_kwargs(cls, class_name) or [{}]:
        _construct(cls, class_name, {**options.get("init_args", {}), **split}, root, True)


# ----------------------------------------------------------------------------- datamodule


def import_object(path: str, what: str):
    """``package.module:Name`` -> the object; ValueError naming the path and the fix."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ValueError(
            f"{what} {path!r} is not an import path; write it as package.module:ClassName"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # any import-time failure of user code is the user's to fix
        raise ValueError(
            f"{what} {path!r} does not import ({type(error).__name__}: {error}); put "
            f"{module_name} on PYTHONPATH or fix the module"
        ) from None
    try:
        obj = module
        for part in attribute.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise ValueError(
            f"{what} {path!r}: module {module_name} has no {attribute!r}; check the class name"
        ) from None
    return obj


def _loader_dataset(datamodule, hook: str, path: str, required: bool):
    try:
        loader = getattr(datamodule, hook)()
    except Exception as error:
        if not required:
            return None
        raise ValueError(
            f"datamodule {path!r}: {hook}() failed ({type(error).__name__}: {error}); "
            f"implement {hook} returning a DataLoader over a map-style dataset"
        ) from None
    dataset = getattr(loader, "dataset", None)
    if dataset is None:
        if required:
            raise ValueError(f"datamodule {path!r}: {hook}() returned no DataLoader; return one")
        return None
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise ValueError(
            f"datamodule {path!r}: the dataset of {hook}() is not map-style (no __getitem__/"
            "__len__); use a map-style dataset (normzoo batches by index)"
        )
    return dataset


@lru_cache(maxsize=4)
def _datamodule_datasets(path: str, init_args: str):
    import lightning.pytorch as pl

    cls = import_object(path, "datamodule")
    if not (inspect.isclass(cls) and issubclass(cls, pl.LightningDataModule)):
        raise ValueError(
            f"datamodule {path!r} is {cls!r}, not a LightningDataModule subclass; name the class"
        )
    try:
        datamodule = cls(**json.loads(init_args))
        datamodule.prepare_data()
        datamodule.setup("fit")
        datamodule.setup("test")
    except Exception as error:
        raise ValueError(
            f"datamodule {path!r} failed to build with init_args {json.loads(init_args)} "
            f"({type(error).__name__}: {error}); fix data.options.init_args or the class"
        ) from None
    found = {}
    for split, required in (("train", True), ("test", True), ("val", False)):
        dataset = _loader_dataset(datamodule, f"{split}_dataloader", path, required)
        if dataset is not None:
            found[split] = (dataset, dataset_labels(dataset, f"datamodule {path!r} {split}"))
    return found


def load_datamodule(path: str, options: dict) -> tuple[Source, tuple, tuple]:
    """A user's LightningDataModule's datasets as lazy splits, and train statistics."""
    init_args = json.dumps(options["init_args"], sort_keys=True)
    found = _datamodule_datasets(path, init_args)
    stores = {
        split: ImageStore(DatasetReader(dataset, 3, None, f"datamodule {path!r} {split}"))
        for split, (dataset, _) in found.items()
    }
    labels = {split: found[split][1] for split in found}
    all_labels = torch.cat(list(labels.values()))
    source = Source(
        stores["train"],
        labels["train"],
        stores["test"],
        labels["test"],
        _classes(found["train"][0], all_labels),
        stores.get("val"),
        labels.get("val"),
    )
    key = ["datamodule", path, init_args, len(labels["train"]), len(labels["test"])]
    mean, std = _stats(source, options, key, disk=False)
    return source, mean, std
