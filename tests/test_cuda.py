"""CUDA paths of every layer against torch's own modules on the same device.

Skipped on machines without a GPU (CI has none); run on a GPU machine with
``pytest tests/test_cuda.py``.
"""

import pytest
import torch
from torch import nn

import normzoo

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
C = 16


def pairs():
    return {
        "batch": (normzoo.create("batch", C), nn.BatchNorm2d(C)),
        "batch_renorm": (  # in warmup with batch norm's update of the running statistics
            normzoo.create("batch_renorm", C, warmup=100, sigma_update="variance_ema"),
            nn.BatchNorm2d(C),
        ),
        "group": (normzoo.create("group", C, groups=4), nn.GroupNorm(4, C)),
        "layer": (normzoo.create("layer", C), nn.GroupNorm(1, C)),
        "instance": (normzoo.create("instance", C), nn.GroupNorm(C, C)),
    }


@pytest.mark.parametrize("name", ["batch", "batch_renorm", "group", "layer", "instance"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_matches_torch(name, dtype, channels_last):
    ours, ref = pairs()[name]
    ours, ref = ours.cuda().to(dtype), ref.cuda().to(dtype)
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    for _ in range(3):
        x = torch.randn(8, C, 7, 7, device="cuda", dtype=dtype) * 3 + 1
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), ref(xb)
        torch.testing.assert_close(ya, yb, atol=tol, rtol=tol)
        g = torch.randn_like(ya)
        ya.backward(g)
        yb.backward(g)
        torch.testing.assert_close(xa.grad, xb.grad, atol=tol, rtol=tol)
        torch.testing.assert_close(ours.weight.grad, ref.weight.grad, atol=tol * 10, rtol=tol)
    for (k, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items(), strict=True):
        torch.testing.assert_close(a.float(), b.float(), atol=tol, rtol=tol, msg=k)
    ours.eval(), ref.eval()
    x = torch.randn(4, C, 5, 5, device="cuda", dtype=dtype)
    torch.testing.assert_close(ours(x), ref(x), atol=tol, rtol=tol)


def test_cuda_batch_renorm_matches_cpu():
    opts = {"rmax": 1.5, "dmax": 0.5, "warmup": 0, "r_ramp": 0, "d_ramp": 0}
    cpu = normzoo.create("batch_renorm", C, dtype=torch.float64, **opts)
    gpu = normzoo.create("batch_renorm", C, dtype=torch.float64, **opts).cuda()
    for t in range(4):
        x = torch.randn(8, C, 5, 5, dtype=torch.float64) * (t + 1) + 3 * t
        torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu(x), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(gpu.running_var.cpu(), cpu.running_var, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("name", ["batch", "batch_renorm", "group"])
def test_cuda_torch_compile_inductor(name):
    torch._dynamo.reset()
    layer = pairs()[name][0].cuda()
    eager = pairs()[name][0].cuda()
    eager.load_state_dict(layer.state_dict())
    compiled = torch.compile(layer)
    for _ in range(3):
        x = torch.randn(8, C, 6, 6, device="cuda")
        torch.testing.assert_close(compiled(x), eager(x), atol=1e-4, rtol=1e-4)


def test_cuda_timm_model_with_zoo_layers():
    timm = pytest.importorskip("timm")
    model = timm.create_model(
        "resnet18", pretrained=False, num_classes=10, norm_layer=normzoo.norm_layer("batch_renorm")
    ).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(torch.randn(4, 3, 64, 64, device="cuda"))
    out.float().sum().backward()
    assert torch.isfinite(out.float()).all()
