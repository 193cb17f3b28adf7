"""Where batch renorm's time over batch norm goes: the layer vs the bare kernels it runs.

python benchmarks/renorm_gap.py                                  # 64x128x8x8, NCHW, 1 thread
python benchmarks/renorm_gap.py --shape 64,128,8,8 --channels-last --threads 2

Times training forward+backward (``y.backward(dy)``), interleaved in one process over
``--repeats`` rounds, ratios of medians to torch's ``nn.BatchNorm2d``:

- ``torch BatchNorm2d``: the reference;
- ``kernels only``: the torch kernels batch renorm runs, called directly with none of its
  per-channel work: ``batch_norm_update_stats`` (statistics), an eval-mode ``native_batch_norm``
  (normalize) and ``native_batch_norm_backward``, plus the gradient accumulation autograd does.
  Its ratio is about what the C++ step reaches;
- ``kernels + N small ops``: the same with N extra operators on C-element vectors in the
  forward (``m + 1``), to show what scalar work costs next to the large kernels;
- ``kernels in autograd.Function``: the same kernels as the forward and backward of a minimal
  ``torch.autograd.Function`` (what the layer's autograd costs, without its scalar work);
- ``normzoo batch_renorm``: the layer (r, d, the moving-average update, the non-finite check),
  its training step one C++ call where normzoo's kernels are built;
- ``normzoo batch_renorm, NORMZOO_CPP=0``: the layer on its pure-PyTorch path (what runs where
  the kernels cannot be built; the environment variable is set around each call).

On a CPU the gap between the last and ``kernels only`` is the layer's per-channel scalar work,
which costs more between large kernels (caches just evicted) than in a tight loop of tiny calls.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import normzoo


def _normalize(x, weight, bias, mean, var, eps):
    """Batch renorm's forward kernel: eval-mode batch norm with the batch statistics."""
    return torch.native_batch_norm(x, weight, bias, mean, var, False, 0.0, eps)[0]


def _normalize_backward(dy, x, weight, mean, invstd, eps):
    """Batch renorm's backward kernel: batch norm's training backward -> (dx, dweight, dbias)."""
    mask = [True, True, True]
    return torch.ops.aten.native_batch_norm_backward(
        dy, x, weight, None, None, mean, invstd, True, eps, mask
    )


class _Kernels(torch.autograd.Function):
    """Batch renorm's kernels (:func:`_normalize`, :func:`_normalize_backward`) as a minimal
    autograd.Function."""

    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, invstd, eps):
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        return _normalize(x, weight, bias, mean, var, eps)

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, invstd = ctx.saved_tensors
        return *_normalize_backward(dy, x, weight, mean, invstd, ctx.eps), None, None, None, None


def _fns(shape: tuple[int, ...], channels_last: bool, small_ops: int) -> dict:
    c = shape[1]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(shape).to(memory_format=fmt).requires_grad_()
    dy = torch.randn(shape).to(memory_format=fmt)
    xd = x.detach()
    bn = torch.nn.BatchNorm2d(c)
    brn = normzoo.create("batch_renorm", c)
    w, b, eps = torch.ones(c), torch.zeros(c), brn.eps
    grad_x = torch.zeros_like(xd)  # what autograd's gradient accumulation does, by hand

    def statistics_():
        mean, var = torch.batch_norm_update_stats(xd, None, None, 0.0)
        return mean, var, (var + eps).rsqrt()

    def kernels(extra: int):
        def fn():
            mean, var, invstd = statistics_()
            for _ in range(extra):
                mean = mean + 1.0
            _normalize(xd, w, b, mean, var, eps)
            grad_x.add_(_normalize_backward(dy, xd, w, mean, invstd, eps)[0])

        return fn

    def python_path():
        os.environ["NORMZOO_CPP"] = "0"
        try:
            brn(x).backward(dy)
        finally:
            os.environ.pop("NORMZOO_CPP")

    def in_function():
        _Kernels.apply(x, brn.weight, brn.bias, *statistics_(), eps).backward(dy)

    return {
        "torch BatchNorm2d": lambda: bn(x).backward(dy),
        "kernels only": kernels(0),
        f"kernels + {small_ops} small ops": kernels(small_ops),
        "kernels in autograd.Function": in_function,
        "normzoo batch_renorm": lambda: brn(x).backward(dy),
        "normzoo batch_renorm, NORMZOO_CPP=0": python_path,
    }


def measure(fns: dict, repeats: int, min_time: float) -> dict[str, tuple[float, float]]:
    """{name: (median ms, median ratio to the first entry)} over interleaved rounds."""

    def timed(fn, n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - start) / n

    for fn in fns.values():  # warm-up
        timed(fn, 5)
    first = next(iter(fns.values()))
    n = max(3, int(min_time / timed(first, 3)))
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn, n))
    ref = times[next(iter(fns))]
    return {
        name: (
            statistics.median(ts) * 1e3,
            statistics.median(t / r for t, r in zip(ts, ref, strict=True)),
        )
        for name, ts in times.items()
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="64,128,8,8", help="N,C,H,W (default 64,128,8,8)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--min-time", type=float, default=0.1, help="seconds per timed block")
    p.add_argument("--small-ops", type=int, default=20)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = tuple(int(v) for v in args.shape.split(","))
    if len(shape) != 4:
        p.error(f"--shape needs N,C,H,W, got {args.shape!r}")
    result = measure(_fns(shape, args.channels_last, args.small_ops), args.repeats, args.min_time)
    layout = "channels_last" if args.channels_last else "NCHW"
    print(f"shape {args.shape}, {layout}, {args.threads} thread(s), torch {torch.__version__}")
    print(f"{'':36s} {'ms/call':>9s} {'ratio to BN':>12s}")
    for name, (ms, ratio) in result.items():
        print(f"{name:36s} {ms:9.3f} {ratio:12.3f}")


if __name__ == "__main__":
    main()
