import os

import pytest
import torch

from normzoo.functional import _cpp

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# normzoo's C++ kernels, built by `make`, are found there by subprocesses that run with another
# HOME (the CLI tests) rather than built again
os.environ.setdefault("TORCH_EXTENSIONS_DIR", _cpp.build_root())
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
