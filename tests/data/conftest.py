import pytest
import torch

from normzoo.data.synthetic import generate


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Every data test gets its own synthetic-dataset cache directory."""
    monkeypatch.setenv("NORMZOO_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def natural_images() -> torch.Tensor:
    """A fixed small batch of synthetic images as float in [0, 1] (N=24, 3, 32, 32)."""
    images, _ = generate(24, seed=123)
    return images.float() / 255
