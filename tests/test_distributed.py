"""Global-batch statistics across 2 gloo processes equal one process on the whole batch."""

import copy
import math
import os
import socket
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import normzoo
from normzoo.distributed import (
    SyncBatchNorm,
    SyncBatchRenorm,
    SyncEvoNormB0,
    sync_batch_stats,
    unsync_batch_stats,
)

C = 6
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    opts = {"rmax": 1.5, "dmax": 0.5} if name == "batch_renorm" else {}
    model = nn.Sequential(
        nn.Conv2d(3, C, 3),
        normzoo.create(name, C, dtype=torch.float64, **opts),
        nn.ReLU(),
        nn.Conv2d(C, C, 3),
        nn.BatchNorm2d(C).double(),
    )
    return model.double()


def batches():
    g = torch.Generator().manual_seed(1)
    return [
        torch.randn(8, 3, 7, 7, generator=g, dtype=torch.float64) * (i + 1) + i for i in range(3)
    ]


# torch 2.14 deprecates torch.distributed.nn.functional's collectives: the sync layers must not
# use them (a FutureWarning in a worker fails the test)
DEPRECATED_COLLECTIVE = "torch.distributed.nn.functional"


def _nonfinite_step(model: nn.Module, rank: int) -> dict:
    """A batch with one NaN on rank 0 only: every rank must raise (same verdict from the merged
    statistics), leaving all buffers (running stats, step counters) as they were; then with
    ``check_finite = False`` the NaN reaches the running statistics on every rank."""
    x = batches()[0].chunk(WORLD)[rank].clone()
    if rank == 0:
        x[0, 0, 0, 0] = math.nan
    before = {k: b.clone() for k, b in model.named_buffers()}
    try:
        model(x)
        error = None
    except ValueError as err:
        error = str(err)
    kept = all(torch.equal(b, before[k]) for k, b in model.named_buffers())
    for m in model.modules():
        if hasattr(m, "check_finite"):
            m.check_finite = False
    model(x)
    return {"error": error, "kept": kept, "poisoned": torch.isnan(model[1].running_var).any()}


def _worker(rank: int, port: int, name: str, out: str) -> None:
    warnings.filterwarnings("error", DEPRECATED_COLLECTIVE, FutureWarning)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    model = sync_batch_stats(make_model(name))
    results = []
    for x in batches():
        part = x.chunk(WORLD)[rank].clone().requires_grad_()
        model.zero_grad()
        y = model(part)
        (y.square().sum()).backward()
        # parameter grads of the summed loss: all-reduce like DDP would (without averaging)
        grads = [p.grad.clone() for p in model.parameters()]
        for g in grads:
            dist.all_reduce(g)
        results.append((y.detach(), part.grad, grads))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    counts = [int(m.num_batches_tracked) for m in (model[1], model[4])]
    layers = [type(model[1]).__name__, type(model[4]).__name__]
    nonfinite = _nonfinite_step(model, rank)
    torch.save(
        {
            "results": results,
            "state": state,
            "counts": counts,
            "layers": layers,
            "nonfinite": nonfinite,
        },
        f"{out}.{rank}",
    )
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "sync_class"), [("batch_renorm", "SyncBatchRenorm"), ("evonorm_b0", "SyncEvoNormB0")]
)
def test_two_processes_match_one_process_on_the_whole_batch(tmp_path, name, sync_class):
    """One model holds a zoo layer and a torch BatchNorm2d: both are synced. EvoNorm-B0 gets
    the variance of the global batch (torch's convert_sync_batchnorm would make it batch norm).
    A NaN on one rank makes every rank raise with buffers kept (check_finite)."""
    out = str(tmp_path / "res")
    mp.start_processes(_worker, args=(_free_port(), name, out), nprocs=WORLD, start_method="spawn")
    ranks = [torch.load(f"{out}.{r}", weights_only=False) for r in range(WORLD)]
    ref = make_model(name)
    for step, x in enumerate(batches()):
        x = x.clone().requires_grad_()
        ref.zero_grad()
        y = ref(x)
        y.square().sum().backward()
        ys = torch.cat([ranks[r]["results"][step][0] for r in range(WORLD)])
        gx = torch.cat([ranks[r]["results"][step][1] for r in range(WORLD)])
        torch.testing.assert_close(ys, y.detach(), atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(gx, x.grad, atol=1e-9, rtol=1e-9)
        for g, p in zip(ranks[0]["results"][step][2], ref.parameters(), strict=True):
            torch.testing.assert_close(g, p.grad, atol=1e-8, rtol=1e-8)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(ranks[0]["state"][k], v, atol=1e-10, rtol=1e-10, msg=k)
        torch.testing.assert_close(ranks[1]["state"][k], v, atol=1e-10, rtol=1e-10, msg=k)
    steps = len(batches())
    for rank in ranks:
        assert rank["layers"] == [sync_class, "SyncBatchNorm"]
        assert rank["counts"] == [steps, steps]
        nonfinite = rank["nonfinite"]
        assert nonfinite["error"] is not None and "check_finite = False" in nonfinite["error"]
        assert sync_class in nonfinite["error"]
        assert nonfinite["kept"] and nonfinite["poisoned"]


def test_sync_layers_without_process_group_are_the_plain_layers():
    model = make_model("batch_renorm")
    ref = make_model("batch_renorm")
    sync_batch_stats(model)
    assert isinstance(model[1], SyncBatchRenorm) and isinstance(model[4], SyncBatchNorm)
    for x in batches():
        torch.testing.assert_close(model(x), ref(x))
    unsync_batch_stats(model)
    assert (
        type(model[1]) is normzoo.layers.BatchRenorm and type(model[4]) is normzoo.layers.BatchNorm
    )


def test_sync_keeps_timm_activation():
    from timm.layers import BatchNormAct2d

    model = nn.Sequential(BatchNormAct2d(4, act_layer=nn.SiLU))
    sync_batch_stats(model)
    assert isinstance(model[0], SyncBatchNorm) and isinstance(model[0].act, nn.SiLU)
    x = torch.randn(3, 4, 2, 2)
    torch.testing.assert_close(model[0](x), nn.functional.silu(nn.BatchNorm2d(4)(x)))


def test_lightning_layer_sync_plugin():
    from normzoo.distributed import ZooLayerSync

    model = make_model("batch")
    plugin = ZooLayerSync()
    plugin.apply(model)
    assert isinstance(model[1], SyncBatchNorm)
    plugin.revert(model)
    assert type(model[1]) is normzoo.layers.BatchNorm


def test_sync_layers_share_parameters_and_buffers():
    """Built as their class, like nn.SyncBatchNorm.convert_sync_batchnorm: an optimizer made
    before syncing keeps training the same tensors."""
    model = make_model("batch_renorm")
    before = dict(model[1].named_parameters()), dict(model[1].named_buffers())
    sync_batch_stats(model)
    assert type(model[1]) is SyncBatchRenorm and model[1].rmax == 1.5
    for name, p in model[1].named_parameters():
        assert p is before[0][name]
    for name, b in model[1].named_buffers():
        assert b is before[1][name]


def test_sync_rejects_batch_norm_subclasses_with_code_of_their_own():
    class Doubled(normzoo.layers.BatchNorm):
        def forward(self, x):
            return 2 * super().forward(x)

    class TorchDoubled(nn.BatchNorm2d):
        def forward(self, x):
            return 2 * super().forward(x)

    for layer in (Doubled(4), TorchDoubled(4)):
        with pytest.raises(TypeError, match=r"no sync layer for .*Doubled.*silently change"):
            sync_batch_stats(nn.Sequential(layer))


def test_sync_leaves_ghost_batch_alone():
    model = nn.Sequential(normzoo.create("ghost_batch", 4, virtual_batch_size=2))
    kinds = [type(m) for m in model]
    sync_batch_stats(model)
    assert [type(m) for m in model] == kinds


def test_evonorm_b0_syncs_as_evonorm_not_as_batch_norm():
    """torch's convert_sync_batchnorm takes EvoNorm-B0 (a _BatchNorm) for batch norm and
    replaces it by nn.SyncBatchNorm, a different function; normzoo's conversion keeps it."""
    from normzoo.layers import EvoNormB0
    from normzoo.layers.act import EvoNormB0Act

    layer = normzoo.create("evonorm_b0", 4, momentum=None)
    layer.check_finite = False
    torch_synced = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(layer))
    assert type(torch_synced[0]) is nn.SyncBatchNorm  # the trap the docstring warns about
    model = nn.Sequential(
        normzoo.create("evonorm_b0", 4, momentum=None),
        EvoNormB0Act(4, drop_layer=nn.Dropout(0.0)),
        normzoo.create("evonorm_b0", 4, apply_act=False),
    )
    model[0].check_finite = False
    ref = [copy.deepcopy(m) for m in model]
    sync_batch_stats(model)
    sync_act = normzoo.distributed.SyncEvoNormB0Act
    assert [type(m) for m in model] == [SyncEvoNormB0, sync_act, SyncEvoNormB0]
    assert model[0].momentum is None and model[0].check_finite is False
    assert isinstance(model[1].drop, nn.Dropout) and model[2].v is None
    for x in (torch.randn(3, 4, 2, 2), torch.randn(5, 4, 3)):
        for synced, plain in zip(model, ref, strict=True):
            torch.testing.assert_close(synced(x), plain(x))
    unsync_batch_stats(model)
    assert [type(m) for m in model] == [EvoNormB0, EvoNormB0Act, EvoNormB0]
