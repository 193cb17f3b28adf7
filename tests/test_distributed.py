"""Global-batch statistics across 2 gloo processes equal one process on the whole batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import normzoo
from normzoo.distributed import SyncBatchNorm, SyncBatchRenorm, sync_batch_stats, unsync_batch_stats

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


def _worker(rank: int, port: int, name: str, out: str) -> None:
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
    torch.save({"results": results, "state": model.state_dict()}, f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_match_one_process_on_the_whole_batch(tmp_path):
    """One model holds a zoo batch_renorm layer and a torch BatchNorm2d: both are synced."""
    name = "batch_renorm"
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


def test_sync_leaves_layers_with_local_statistics_alone():
    model = nn.Sequential(
        normzoo.create("ghost_batch", 4, virtual_batch_size=2), normzoo.create("evonorm_b0", 4)
    )
    kinds = [type(m) for m in model]
    sync_batch_stats(model)
    assert [type(m) for m in model] == kinds
