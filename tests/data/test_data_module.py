import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn

from normzoo.data import IGNORE_INDEX, NormzooDataModule, corrupt

SMALL = {"train_size": 600, "test_size": 203}


def _module(**kwargs):
    kwargs.setdefault("dataset_options", SMALL)
    module = NormzooDataModule(**kwargs)
    module.setup()
    return module


def _normalize(images01, module):
    mean = torch.tensor(module.splits.mean).reshape(1, -1, 1, 1)
    std = torch.tensor(module.splits.std).reshape(1, -1, 1, 1)
    return (images01 - mean) / std


def test_same_seed_same_first_batch_different_seed_differs():
    a, b, c = _module(seed=0), _module(seed=0), _module(seed=1)
    xa, ya = next(iter(a.train_dataloader()))
    xb, yb = next(iter(b.train_dataloader()))
    xc, _ = next(iter(c.train_dataloader()))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(xa, xc)
    assert xa.dtype == torch.float32 and ya.dtype == torch.int64 and xa.shape == (32, 3, 32, 32)


def test_worker_processes_give_the_same_batches():
    single = [b[1] for b in _module(seed=2).train_dataloader()][:3]
    workers = [b[1] for b in _module(seed=2, num_workers=1).train_dataloader()][:3]
    assert all(torch.equal(a, b) for a, b in zip(single, workers, strict=True))


def test_split_and_normalization():
    module = _module(seed=3, val_fraction=0.2, train_batch_size=50)
    assert len(module.val_index) == 120 and len(module.train_index) == 480
    assert set(module.val_index.tolist()).isdisjoint(module.train_index.tolist())
    assert torch.equal(module.val_index, _module(seed=3, val_fraction=0.2).val_index)
    x, y = next(iter(module.val_dataloader()))
    images = module.splits.train_images[module.val_index[: len(y)]].float() / 255
    torch.testing.assert_close(x, _normalize(images, module))
    assert torch.equal(y, module.splits.train_labels[module.val_index[: len(y)]])
    train = list(module.train_dataloader())
    assert len(train) == 480 // 50 and all(len(b[1]) == 50 for b in train)  # last partial dropped
    assert (module.num_classes, module.in_channels, module.image_size) == (10, 3, 32)


def test_label_skewed_training_batches():
    module = _module(train_composition="label_skew", train_alpha=0.0, train_batch_size=16)
    for _, y in module.train_dataloader():
        assert len(y) == 16 and y.unique().numel() == 1


def test_class_grouped_training_batches():
    module = _module(train_composition="classes", train_classes=4, train_batch_size=8)
    batches = list(module.train_dataloader())
    assert len(batches) > 0
    for _, y in batches:
        classes, counts = y.unique(return_counts=True)
        assert len(y) == 8 and len(classes) == 4 and counts.tolist() == [2, 2, 2, 2]
    with pytest.raises(ValueError, match="train_classes"):
        NormzooDataModule(train_composition="classes", train_classes=3, train_batch_size=8)


def _write_cifar10c(root, n_per_severity, corruption="fog"):
    folder = root / "CIFAR-10-C"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5 * n_per_severity, 32, 32, 3), dtype=np.uint8)
    labels = np.tile(np.arange(n_per_severity) % 10, 5).astype(np.uint8)
    np.save(folder / f"{corruption}.npy", images)
    np.save(folder / "labels.npy", labels)
    return images, labels


@pytest.mark.parametrize("composition", ["iid", "label_skew", "outliers"])
def test_cifar10c_is_a_source_of_the_test_loader(tmp_path, composition):
    """CIFAR-10-C files go through the same batching, normalization and outlier code."""
    images, labels = _write_cifar10c(tmp_path, 40)
    module = _module(dataset_options={"train_size": 200, "test_size": 40, "image_size": 32})
    options = {"alpha": 0.1} if composition == "label_skew" else {}
    options |= {"outliers": 2} if composition == "outliers" else {}
    batches = list(
        module.test_loader(
            16, "fog", 3, composition, source="cifar10c", source_root=tmp_path, **options
        )
    )
    rows = slice(80, 120)  # severity 3 of 40 images per severity
    expected = torch.from_numpy(images[rows]).permute(0, 3, 1, 2).float() / 255
    expected, expected_y = _normalize(expected, module), torch.from_numpy(labels[rows]).long()
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    if composition == "label_skew":  # the same samples, in the order of the sampler
        from normzoo.data import LabelSkewedBatchSampler

        order = [i for b in LabelSkewedBatchSampler(expected_y, 16, 0.1, 0) for i in b]
        expected, expected_y = expected[order], expected_y[order]
    scored = y != IGNORE_INDEX
    assert scored.sum() == (40 if composition != "outliers" else 40 - 3 * 2)
    assert torch.allclose(x[scored], expected[scored])
    assert torch.equal(y[scored], expected_y[scored])
    with pytest.raises(ValueError, match="source='generated'"):
        module.test_loader(16, "mixed", 3, "mixed_corruption", source="cifar10c")


@pytest.mark.parametrize("batch_size", [1, 64, 203, 500])
def test_iid_test_loader_covers_all_in_order(batch_size):
    module = _module()
    batches = list(module.test_loader(batch_size))
    assert len(batches) == -(-203 // batch_size)
    y = torch.cat([b[1] for b in batches])
    assert torch.equal(y, module.splits.test_labels)
    x = torch.cat([b[0] for b in batches])
    torch.testing.assert_close(x, _normalize(module.splits.test_images.float() / 255, module))


def test_corrupted_test_loader():
    module = _module()
    x = torch.cat([b[0] for b in module.test_loader(64, "fog", 4, seed=5)])
    expected = corrupt(module.splits.test_images.float() / 255, "fog", 4, seed=5)
    torch.testing.assert_close(x, _normalize(expected, module))
    again = torch.cat([b[0] for b in module.test_loader(64, "fog", 4, seed=5)])
    assert torch.equal(x, again)


def test_label_skew_test_loader():
    module = _module()
    batches = list(module.test_loader(20, composition="label_skew", alpha=0.0, seed=1))
    assert all(b[1].unique().numel() == 1 for b in batches)
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == sorted(
        module.splits.test_labels.tolist()
    )


def test_outlier_test_loader():
    module = _module()
    clean = list(module.test_loader(50))
    batches = list(module.test_loader(50, composition="outliers", outliers=3))
    for (x, y), (cx, cy) in zip(batches, clean, strict=True):
        marked = y == IGNORE_INDEX
        assert marked.sum() == min(3, len(y) - 1)
        assert torch.equal(y[~marked], cy[~marked]) and torch.equal(x[~marked], cx[~marked])
        assert x[marked].abs().mean() > 5  # ten standard deviations out
    assert len(batches[-1][1]) == 3 and (batches[-1][1] == IGNORE_INDEX).sum() == 2


def test_mixed_corruption_test_loader():
    module = _module()
    batches = list(module.test_loader(15, "mixed", 2, composition="mixed_corruption"))
    assert sum(len(b[1]) for b in batches) == 203
    clean = torch.cat([b[0] for b in module.test_loader(15)])
    assert not torch.equal(torch.cat([b[0] for b in batches]), clean)


def test_argument_errors():
    module = _module()
    with pytest.raises(ValueError, match="composition='sorted'"):
        module.test_loader(8, composition="sorted")
    with pytest.raises(ValueError, match="needs alpha"):
        module.test_loader(8, composition="label_skew")
    with pytest.raises(ValueError, match="outliers=8"):
        module.test_loader(8, composition="outliers", outliers=8)
    with pytest.raises(ValueError, match="needs composition='outliers'"):
        module.test_loader(8, outliers=2)
    with pytest.raises(ValueError, match="corruption='mixed'"):
        module.test_loader(8, "fog", 2, composition="mixed_corruption")
    with pytest.raises(ValueError, match="unknown corruption 'rain'"):
        module.test_loader(8, "rain", 2)
    with pytest.raises(ValueError, match="train_composition='sorted'"):
        NormzooDataModule(train_composition="sorted")
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        NormzooDataModule(dataset="imagenet")


class _Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 4, 3),
            nn.BatchNorm2d(4),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 10),
        )

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("composition", ["iid", "label_skew"])
def test_lightning_trainer_accepts_the_module(tmp_path, composition):
    module = NormzooDataModule(
        dataset_options=SMALL, train_composition=composition, train_alpha=0.1
    )
    trainer = pl.Trainer(
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(_Tiny(), datamodule=module)
    assert trainer.global_step == 6
