"""One run on two processes: Lightning DDP (gloo, CPU) with the zoo's batch layers synced.

The reference is the single-process run on the concatenated batch: with the global batch split
over the ranks, synced statistics and averaged gradients make both the same computation.
"""

import dataclasses
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from torch import nn

import normzoo
from normzoo.bench.execute.train import ddp
from normzoo.bench.plan.config import load_config
from normzoo.bench.record.store import Store
from normzoo.bench.run import run_grid

pytestmark = pytest.mark.slow
GLOBAL_BATCH = 16


class Tiny(L.LightningModule):
    """conv -> zoo batch norm -> pool -> linear, SGD; each rank trains on its batch slice."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            normzoo.create("batch", 8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 4),
        )
        self.seen = []

    def on_after_batch_transfer(self, batch, dataloader_idx):
        self.seen.append(len(batch[0]))
        if self.trainer.world_size > 1:
            return ddp.shard(batch, self.trainer.global_rank, self.trainer.world_size)
        return batch

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def _data():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3 * GLOBAL_BATCH, 3, 6, 6, generator=generator) * 2 + 1
    y = torch.randint(0, 4, (3 * GLOBAL_BATCH,), generator=generator)
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=GLOBAL_BATCH, shuffle=False
    )


def _fit(out: Path, devices: int) -> None:
    # the sync layers must not use torch.distributed.nn.functional (deprecated in torch 2.14)
    warnings.filterwarnings("error", "torch.distributed.nn.functional", FutureWarning)
    torch.set_num_threads(1)
    module = Tiny()
    trainer = L.Trainer(
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **(ddp.trainer_options(devices) or {"accelerator": "cpu"}),
    )
    trainer.fit(module, _data())
    state = {k: v.detach().clone() for k, v in module.net.state_dict().items()}
    torch.save(
        {
            "state": state,
            "world_size": trainer.world_size,
            "strategy": type(trainer.strategy).__name__,
            "layer": type(module.net[1]).__name__,
        },
        out / f"devices{devices}_rank{trainer.global_rank}.pt",
    )


def test_ddp_statistics_equal_single_process_on_the_concatenated_batch(tmp_path):
    ddp.launch(_fit, 2, tmp_path, 2)
    _fit(tmp_path, 1)
    load = lambda name: torch.load(tmp_path / name, weights_only=True)  # noqa: E731
    rank0, rank1, single = (load(f"devices{d}_rank{r}.pt") for d, r in ((2, 0), (2, 1), (1, 0)))
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["strategy"] == rank1["strategy"] == "DDPStrategy"
    assert rank0["layer"] == "BatchNorm"  # ZooLayerSync reverted the sync layer after fit
    for name, reference in single["state"].items():
        for rank in (rank0, rank1):
            torch.testing.assert_close(rank["state"][name], reference, rtol=1e-5, atol=1e-6)
    # not trivially equal: training moved the statistics, and half a batch gives others
    assert not torch.allclose(single["state"]["1.running_var"], torch.ones(8))


TINY = {
    "experiment": {"name": "ddp"},
    "data": {
        "dataset": "synthetic",
        "options": {"train_size": 192, "test_size": 64, "image_size": 8},
    },
    "model": {"backbone": "small_cnn"},
    "norms": ["batch"],
    "train": {"batch_sizes": [16], "max_steps": 3, "seeds": 1},
    "eval": {"test_batch_sizes": [32], "stats_modes": ["running", "batch"]},
    "execution": {"workers": 1, "wandb": "disabled", "ddp_devices": 2},
}


def test_a_ddp_run_lands_in_the_store_once_with_the_single_process_result(tmp_path):
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(TINY))
    config = load_config(path)
    summary = run_grid(config, tmp_path / "ddp", show_progress=False)
    single = dataclasses.replace(
        config, execution=dataclasses.replace(config.execution, ddp_devices=1)
    )
    run_grid(single, tmp_path / "single", show_progress=False)
    assert (summary.ok, summary.failed) == (1, 0)
    with Store(tmp_path / "ddp") as store, Store(tmp_path / "single") as reference:
        runs, expected = store.runs_frame(), reference.runs_frame()
        evaluations = store.evaluations_frame().set_index(["stats_mode", "test_batch_size"])
        reference_ev = reference.evaluations_frame().set_index(["stats_mode", "test_batch_size"])
    assert len(runs) == 1 and runs["run_key"].tolist() == expected["run_key"].tolist()
    assert runs["val_accuracy"].iloc[0] == pytest.approx(expected["val_accuracy"].iloc[0])
    assert evaluations["accuracy"].to_dict() == pytest.approx(reference_ev["accuracy"].to_dict())


def test_ddp_devices_is_validated(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                **TINY,
                "train": {**TINY["train"], "batch_sizes": [6, 8]},
                "execution": {"ddp_devices": 4},
            }
        )
    )
    with pytest.raises(ValueError, match=r"train.batch_sizes \[6\] cannot be split"):
        load_config(path)
