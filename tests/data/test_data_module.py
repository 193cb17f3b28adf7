import lightning.pytorch as pl
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
