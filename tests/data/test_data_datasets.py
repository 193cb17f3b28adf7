"""The dataset table: shapes, sizes and options known without loading, checked against loads."""

import subprocess
import sys
from dataclasses import astuple

import pytest

from normzoo.data import DATASET_OPTIONS, check_options, dataset_info, load


def test_synthetic_info_matches_what_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMZOO_CACHE", str(tmp_path))
    options = {"train_size": 60, "test_size": 20, "image_size": 12, "num_classes": 4}
    info = dataset_info("synthetic", options)
    splits = load("synthetic", **options)
    assert splits.train_images.shape == (info.train_size, info.channels, 12, 12)
    assert len(splits.test_labels) == info.test_size and splits.num_classes == info.num_classes
    defaults = dataset_info("synthetic")
    assert (defaults.train_size, defaults.test_size, defaults.image_size) == (
        DATASET_OPTIONS["synthetic"]["train_size"].default,
        DATASET_OPTIONS["synthetic"]["test_size"].default,
        DATASET_OPTIONS["synthetic"]["image_size"].default,
    )


def test_real_dataset_facts():
    cifar, mnist = dataset_info("cifar10"), dataset_info("MNIST")
    assert astuple(cifar)[1:] == (3, 32, 50_000, 10_000, 10, None)  # no own val split
    assert astuple(mnist)[1:] == (1, 28, 60_000, 10_000, 10, None)


@pytest.mark.parametrize(
    "name, options, expected",
    [
        ("synthetic", {"trainsize": 100}, "did you mean 'train_size'"),
        ("synthetic", {"trainsize": 100}, "accepted: train_size, test_size"),
        ("synthetic", {"image_size": 7}, "image_size=7 not allowed; use an integer >= 8"),
        ("synthetic", {"difficulty": "medium"}, "use one of easy, hard"),
        ("synthetic", {"num_classes": 11}, "1..10"),
        ("synthetic", {"cache": "yes"}, "true or false"),
        ("cifar10", {"train_size": 3}, "takes no options"),
    ],
)
def test_options_are_checked_against_the_table(name, options, expected):
    problems = check_options(name, options)
    assert len(problems) == 1 and expected in problems[0], problems
    with pytest.raises(ValueError, match="not allowed|unknown"):
        load(name, **options)


def test_import_without_lightning():
    """Loaders, corruptions and shifts need no Lightning; only NormzooDataModule does."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'lightning':\n"
        "            raise ImportError('lightning is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import normzoo.data\n"
        "from normzoo.data import corrupt, load, LabelSkewedBatchSampler, dataset_info\n"
        "assert 'lightning' not in sys.modules\n"
        "try:\n"
        "    normzoo.data.NormzooDataModule\n"
        "except ImportError as error:\n"
        "    assert 'lightning' in str(error)\n"
        "else:\n"
        "    raise AssertionError('NormzooDataModule imported without lightning')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
