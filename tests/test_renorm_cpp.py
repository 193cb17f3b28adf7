"""Batch renorm's C++ training step (normzoo/functional/csrc/batch_renorm.cpp) against its
pure-PyTorch/NumPy path, which the other renorm tests check against Algorithm 1 and Keras:
the same bits for outputs, gradients and running averages."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import normzoo
from normzoo.functional import _cpp


def _kernels():
    module = _cpp.kernels()
    assert module is not None, "the C++ kernels did not build on this machine (see the warning)"
    return module


def _grad_fn_name(y: torch.Tensor) -> str:
    return type(y.grad_fn).__name__ if not hasattr(y.grad_fn, "name") else y.grad_fn.name()


def test_the_kernels_build_and_the_layer_uses_them():
    _kernels()
    layer = normzoo.create("batch_renorm", 3).train()
    y = layer(torch.randn(4, 3, 2, 2, requires_grad=True))
    assert "BatchRenormFunction" in _grad_fn_name(y)


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("NORMZOO_CPP", "0")
    assert _cpp.kernels() is None
    layer = normzoo.create("batch_renorm", 3).train()
    y = layer(torch.randn(4, 3, 2, 2, requires_grad=True))
    assert "RenormAffine" in _grad_fn_name(y)


def _run(steps, dtype, memory_format, affine, shape, renorm_momentum, use_cpp, monkeypatch):
    """Train one layer ``steps`` steps on fixed batches; every output, gradient and buffer."""
    monkeypatch.setenv("NORMZOO_CPP", "1" if use_cpp else "0")
    c = shape[1]
    layer = normzoo.create(
        "batch_renorm",
        c,
        warmup=1,
        r_ramp=2,
        d_ramp=2,
        rmax=1.3,
        dmax=0.4,
        renorm_momentum=renorm_momentum,
        affine=affine != "none",
    ).to(dtype)
    if affine == "weight":
        layer.bias = None
    elif affine == "bias":
        layer.weight = None
    if layer.weight is not None:
        with torch.no_grad():
            layer.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(7)
    seen = []
    for t in range(steps):
        x = torch.randn(shape, generator=gen, dtype=dtype) * (4.0 if t % 2 else 0.25) + 2 * t
        if memory_format is not None:
            x = x.contiguous(memory_format=memory_format)
        x.requires_grad_()
        g = torch.randn(shape, generator=gen, dtype=dtype)
        y = layer(x)
        assert ("BatchRenormFunction" in _grad_fn_name(y)) == use_cpp
        y.backward(g)
        params = [p.grad.clone() for p in layer.parameters()]
        layer.zero_grad(set_to_none=True)
        seen.append((y.detach(), x.grad, *params, *[b.clone() for b in layer.buffers()]))
    return seen


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("shape", "memory_format"),
    [
        ((4, 6, 3, 3), None),
        ((4, 6, 3, 3), torch.channels_last),
        ((5, 6), None),
        ((2, 6, 3, 2, 2), None),
    ],
)
@pytest.mark.parametrize("affine", ["both", "weight", "bias", "none"])
@pytest.mark.parametrize("renorm_momentum", [0.01, 0.7, None])
def test_cpp_path_equals_the_python_path_bit_for_bit(
    dtype, shape, memory_format, affine, renorm_momentum, monkeypatch
):
    """r and d clipped at both ends (the batch scale alternates x4/x0.25 and the mean moves);
    both forms of the moving average (rate below and from 0.5; None: the cumulative rates 1,
    1/2, 1/3, ...)."""
    args = (6, dtype, memory_format, affine, shape, renorm_momentum)
    cpp = _run(*args, True, monkeypatch)
    python = _run(*args, False, monkeypatch)
    for step, (a, b) in enumerate(zip(cpp, python, strict=True)):
        assert len(a) == len(b)
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            assert u.dtype == v.dtype and u.shape == v.shape, (step, i)
            assert torch.equal(u, v), (step, i, (u - v).abs().max())
            assert u.stride() == v.stride(), (step, i)


def test_non_finite_batch_raises_the_layers_error_and_keeps_the_averages():
    _kernels()
    layer = normzoo.create("batch_renorm", 3).train()
    layer(torch.randn(4, 3, 2, 2))
    before = [b.clone() for b in layer.buffers()]
    x = torch.randn(4, 3, 2, 2)
    x[1, 2, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="holds NaN or inf.*check_finite = False"):
        layer(x)
    assert all(torch.equal(a, b) for a, b in zip(before, layer.buffers(), strict=True))


def test_unchecked_non_finite_batch_propagates_as_the_python_path(monkeypatch):
    """``check_finite=False``: NaN/inf go through, to the same values on both paths."""
    seen = []
    for use_cpp in ("1", "0"):
        monkeypatch.setenv("NORMZOO_CPP", use_cpp)
        layer = normzoo.create("batch_renorm", 3).train()
        layer.check_finite = False
        x = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(0))
        x[:, 1] = float("inf")
        x[0, 2, 0, 0] = float("nan")
        seen.append((layer(x), *layer.buffers()))
    y = seen[0][0]
    assert y[:, 1:].isnan().all() and y[:, 0].isfinite().all()
    for a, b in zip(*seen, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def test_double_backward_is_refused_with_a_clear_error():
    _kernels()
    layer = normzoo.create("batch_renorm", 3).train()
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    with pytest.raises(RuntimeError, match="differentiable once.*NORMZOO_CPP=0"):
        torch.autograd.grad(layer(x).pow(2).sum(), x, create_graph=True)


def test_no_grad_training_step_updates_the_averages_as_with_grad(monkeypatch):
    _kernels()
    x = torch.randn(8, 3, 4, 4) * 3 + 1
    layers = [normzoo.create("batch_renorm", 3, warmup=0, r_ramp=0, d_ramp=0) for _ in range(2)]
    with torch.no_grad():
        y0 = layers[0](x)
    y1 = layers[1](x.requires_grad_())
    assert torch.equal(y0, y1.detach())
    for a, b in zip(layers[0].buffers(), layers[1].buffers(), strict=True):
        assert torch.equal(a, b)


def test_a_failed_build_warns_once_and_falls_back(tmp_path, monkeypatch):
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(_cpp, "SOURCES", (broken,))
    monkeypatch.setattr(_cpp, "_loaded", {})
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "builds"))
    with pytest.warns(RuntimeWarning, match="could not build its C.. kernels.*NORMZOO_CPP=0"):
        assert _cpp.kernels() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process: no second warning
        assert _cpp.kernels() is None
        layer = normzoo.create("batch_renorm", 3).train()
        y = layer(torch.randn(4, 3, 2, 2, requires_grad=True))
    assert "RenormAffine" in _grad_fn_name(y)


def test_the_build_is_keyed_by_its_source(tmp_path, monkeypatch):
    name = _cpp.module_name()
    edited = tmp_path / "batch_renorm.cpp"
    edited.write_text(_cpp.SOURCES[0].read_text() + "\n// edited\n")
    monkeypatch.setattr(_cpp, "SOURCES", (edited,))
    assert _cpp.module_name() != name


def test_the_paper_update_only_and_python_path_for_other_tensors():
    """``sigma_update="variance_ema"`` (batch norm's update), bfloat16, float64 input to a
    float32 layer and non-contiguous buffers stay on the Python path."""
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    ema = normzoo.create("batch_renorm", 3, sigma_update="variance_ema").train()
    assert "RenormAffine" in _grad_fn_name(ema(x))
    assert "BatchRenormFunction" in _grad_fn_name(normzoo.create("batch_renorm", 3)(x))
    half = normzoo.create("batch_renorm", 3).to(torch.bfloat16)
    assert "RenormAffine" in _grad_fn_name(half(x.detach().bfloat16().requires_grad_()))
    strided = normzoo.create("batch_renorm", 3)
    strided.running_mean = torch.zeros(3, 2)[:, 0]
    assert not strided.running_mean.is_contiguous()
    assert "RenormAffine" in _grad_fn_name(strided(x))
    kernels = _kernels()
    layer = normzoo.create("batch_renorm", 3)
    args = (layer.running_mean, layer.running_var, layer.num_batches_tracked, 0.01, 1e-3)
    limits = (3.0, 5.0, 0, 0, 0, True)
    assert kernels.batch_renorm_layer_step(x.double(), None, None, *args, False, *limits) is None
    assert int(layer.num_batches_tracked) == 0  # nothing ran


def test_functional_batch_renorm_uses_the_kernels_with_the_same_bits(monkeypatch):
    results = []
    for use_cpp in ("1", "0"):
        monkeypatch.setenv("NORMZOO_CPP", use_cpp)
        gen = torch.Generator().manual_seed(5)
        x = (torch.randn(6, 4, 3, 3, generator=gen) * 3 + 1).requires_grad_()
        w = torch.rand(4, generator=gen).requires_grad_()
        b = torch.randn(4, generator=gen).requires_grad_()
        rm, rv = torch.randn(4, generator=gen), torch.rand(4, generator=gen) + 0.5
        y = normzoo.functional.batch_renorm(x, rm, rv, w, b, 0.3, 1e-3, 1.2, 0.1)
        assert ("BatchRenormFunction" in _grad_fn_name(y)) == (use_cpp == "1")
        y.backward(torch.randn(x.shape, generator=gen))
        results.append((y, x.grad, w.grad, b.grad, rm, rv))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@settings(max_examples=300, deadline=None)
@given(
    step=st.integers(0, 10**6),
    warmup=st.integers(0, 1000),
    r_ramp=st.integers(0, 1000),
    d_ramp=st.integers(0, 1000),
    rmax=st.floats(1.0, 1e6),
    dmax=st.floats(0.0, 1e6),
)
def test_schedule_equals_renorm_limits_bit_for_bit(step, warmup, r_ramp, d_ramp, rmax, dmax):
    expected = normzoo.functional.renorm_limits(step, rmax, dmax, warmup, r_ramp, d_ramp)
    assert _kernels().renorm_limits(step, rmax, dmax, warmup, r_ramp, d_ramp) == expected


def test_counter_and_limits_follow_the_schedule_across_the_ramp(monkeypatch):
    """Trained through warmup and ramps, the layer's C++ steps give the Python path's steps
    bit for bit (r and d change with the counter the C++ step reads and advances), also when
    the counter was loaded from a checkpoint mid-ramp."""
    seen = []
    for use_cpp in ("1", "0"):
        monkeypatch.setenv("NORMZOO_CPP", use_cpp)
        layer = normzoo.create("batch_renorm", 3, warmup=2, r_ramp=5, d_ramp=3, rmax=2.0, dmax=1.0)
        layer.num_batches_tracked.fill_(1)  # resumed
        gen = torch.Generator().manual_seed(11)
        ys = [layer(torch.randn(5, 3, 2, 2, generator=gen) * 5 + 3 * t) for t in range(9)]
        seen.append((*ys, *layer.buffers()))
    for a, b in zip(*seen, strict=True):
        assert torch.equal(a, b)
    assert int(seen[0][-1]) == 10
