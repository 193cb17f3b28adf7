import os

import pytest
import torch

from normzoo.data import load, synthetic
from normzoo.data.synthetic import generate, load_synthetic


def test_generate_shape_dtype_balance_and_determinism():
    x, y = generate(300, seed=3)
    assert x.shape == (300, 3, 32, 32) and x.dtype == torch.uint8
    assert y.dtype == torch.int64 and torch.bincount(y, minlength=10).tolist() == [30] * 10
    x2, y2 = generate(300, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = generate(300, seed=4)
    assert not torch.equal(x, x3)


def test_image_size_option():
    x, y = generate(20, seed=0, image_size=16)
    assert x.shape == (20, 3, 16, 16)
    with pytest.raises(ValueError, match="image_size"):
        generate(4, seed=0, image_size=4)


def test_per_image_nuisance_variation_is_large():
    """Per-image brightness and contrast vary a lot, so per-sample normalization has work to do."""
    x, _ = generate(400, seed=1)
    x = x.float() / 255
    brightness = x.mean(dim=(1, 2, 3))
    contrast = x.std(dim=(1, 2, 3))
    assert brightness.std() > 0.08
    assert contrast.max() / contrast.min() > 3


def test_not_linearly_trivial():
    """Random pose and colours defeat pixel templates: nearest class mean is near chance (0.1)."""
    x, y = generate(2000, seed=5)
    xt, yt = generate(1000, seed=6)
    x, xt = x.float().flatten(1) / 255, xt.float().flatten(1) / 255
    means = torch.stack([x[y == c].mean(0) for c in range(10)])
    accuracy = (torch.cdist(xt, means).argmin(1) == yt).float().mean().item()
    assert accuracy < 0.2


def test_cache_roundtrip_and_no_rebuild(monkeypatch):
    first = load_synthetic(train_size=50, test_size=20)
    files = list(synthetic.cache_dir().iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt"

    def fail(*args, **kwargs):
        raise AssertionError("a valid cache must not be regenerated")

    monkeypatch.setattr(synthetic, "generate", fail)
    second = load_synthetic(train_size=50, test_size=20)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "tamper"])
def test_damaged_cache_is_rebuilt(damage):
    fresh = load_synthetic(train_size=40, test_size=10, cache=False)
    load_synthetic(train_size=40, test_size=10)
    (path,) = synthetic.cache_dir().glob("*.pt")
    if damage == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a torch file")
    else:
        blob = torch.load(path, weights_only=True)
        blob["test_x"][0] ^= 1
        torch.save(blob, path)
    rebuilt = load_synthetic(train_size=40, test_size=10)
    assert all(torch.equal(a, b) for a, b in zip(fresh, rebuilt, strict=True))
    again = torch.load(path, weights_only=True)  # and the file on disk was repaired
    assert torch.equal(again["test_x"], fresh[2])
    assert [p for p in os.listdir(path.parent) if p.endswith(".tmp")] == []


def test_load_synthetic_splits_and_channel_stats():
    splits = load("synthetic", train_size=120, test_size=30, image_size=16)
    assert splits.name == "synthetic" and splits.num_classes == 10
    assert splits.train_images.shape == (120, 3, 16, 16) and splits.test_images.shape[0] == 30
    reference = splits.train_images.double() / 255
    torch.testing.assert_close(
        torch.tensor(splits.mean, dtype=torch.float64), reference.mean(dim=(0, 2, 3))
    )
    torch.testing.assert_close(
        torch.tensor(splits.std, dtype=torch.float64), reference.std(dim=(0, 2, 3), unbiased=False)
    )


def test_load_errors():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        load("imagenet")
    with pytest.raises(ValueError, match="unknown synthetic options \\['size'\\]"):
        load("synthetic", size=3)
    with pytest.raises(ValueError, match="train_size"):
        load_synthetic(train_size=0)


def test_easy_preset_keeps_nuisance_and_drops_distractor():
    """'easy' is a different, deterministic dataset: same labels, cleaner images, same nuisance."""
    hard, y_hard = generate(400, seed=1, image_size=16)
    easy, y_easy = generate(400, seed=1, image_size=16, difficulty="easy")
    assert torch.equal(y_hard, y_easy) and not torch.equal(hard, easy)
    assert torch.equal(easy, generate(400, seed=1, image_size=16, difficulty="easy")[0])
    easy = easy.float() / 255
    assert easy.mean(dim=(1, 2, 3)).std() > 0.08  # per-image brightness still varies
    # without distractor and clutter, within-image detail is dominated by the object: the
    # background (image border) is flatter than in the hard preset
    border = lambda x: torch.cat([x[..., 0, :], x[..., -1, :]], dim=-1).std(dim=-1).mean()  # noqa: E731
    assert border(easy) < border(hard.float() / 255)
    with pytest.raises(ValueError, match="difficulty"):
        generate(4, seed=0, difficulty="medium")


def test_easy_preset_has_its_own_cache_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMZOO_CACHE", str(tmp_path))
    a = load("synthetic", train_size=50, test_size=20, image_size=16, difficulty="easy")
    b = load("synthetic", train_size=50, test_size=20, image_size=16)
    assert not torch.equal(a.train_images, b.train_images)
    assert len(list(tmp_path.glob("*.pt"))) == 2
