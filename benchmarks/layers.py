"""Micro-benchmark: zoo layers vs torch's native layers vs the memory-bandwidth floor.

For each norm, the zoo layer and its torch reference run side by side in one process on the same
input (forward, or forward+backward, in train and eval mode); the table reports median times
and the ratio zoo/torch. The floor is an elementwise op that reads the input once and writes the
output once (``torch.mul(x, 1.0)``): no normalization can run faster than that.

    python benchmarks/layers.py                       # CPU, float32, a ResNet-stage shape
    python benchmarks/layers.py --device cuda --dtype bfloat16 --shape 64,256,56,56
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn
from torch.utils import benchmark

import normzoo

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def references(channels: int, groups: int, rank: int) -> dict[str, tuple[nn.Module, nn.Module]]:
    """(zoo layer, torch reference) for each norm with a torch counterpart."""
    bn = {3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[rank]
    return {
        "batch": (normzoo.create("batch", channels), bn(channels)),
        # batch renorm has no torch layer: compare with batch norm, the work it adds to
        "batch_renorm": (normzoo.create("batch_renorm", channels), bn(channels)),
        "group": (normzoo.create("group", channels, groups=groups), nn.GroupNorm(groups, channels)),
        "layer": (normzoo.create("layer", channels), nn.GroupNorm(1, channels)),
        "instance": (normzoo.create("instance", channels), nn.GroupNorm(channels, channels)),
    }


def _timer(fn, label: str, sub_label: str, description: str) -> benchmark.Timer:
    return benchmark.Timer(
        stmt="fn()",
        globals={"fn": fn},
        label=label,
        sub_label=sub_label,
        description=description,
        num_threads=torch.get_num_threads(),
    )


def measure(
    layer: nn.Module, x: torch.Tensor, train: bool, backward: bool, min_run: float
) -> float:
    """Median seconds per call of the layer (forward, or forward+backward)."""
    layer.train(train)
    if backward:
        x = x.detach().requires_grad_()
        grad = torch.randn_like(x)

        def fn():
            layer(x).backward(grad)
    else:

        def fn():
            with torch.no_grad():
                layer(x)

    for _ in range(3):  # warm-up (allocator, cudnn, lazy init)
        fn()
    return _timer(fn, "", "", "").blocked_autorange(min_run_time=min_run).median


def floor(x: torch.Tensor, backward: bool, min_run: float) -> float:
    """One read of the input and one write of the output (twice that with backward)."""
    if backward:
        x = x.detach().requires_grad_()
        grad = torch.randn_like(x)

        def fn():
            torch.mul(x, 1.0).backward(grad)
    else:

        def fn():
            with torch.no_grad():
                torch.mul(x, 1.0)

    for _ in range(3):
        fn()
    return _timer(fn, "", "", "").blocked_autorange(min_run_time=min_run).median


def run(args: argparse.Namespace) -> list[dict]:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    shape = tuple(int(s) for s in args.shape.split(","))
    x = torch.randn(shape, device=device, dtype=dtype)
    if args.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    rows = []
    for mode, train, backward in (
        ("train fwd+bwd", True, True),
        ("train fwd", True, False),
        ("eval fwd", False, False),
    ):
        base = floor(x, backward, args.min_run)
        for name, (zoo, ref) in references(shape[1], args.groups, x.dim()).items():
            zoo, ref = zoo.to(device, dtype), ref.to(device, dtype)
            if not train and name not in ("batch", "batch_renorm"):
                pass  # batch-independent norms compute the same in eval; measured anyway
            t_zoo = measure(zoo, x, train, backward, args.min_run)
            t_ref = measure(ref, x, train, backward, args.min_run)
            rows.append(
                {
                    "mode": mode,
                    "norm": name,
                    "zoo_ms": t_zoo * 1e3,
                    "torch_ms": t_ref * 1e3,
                    "ratio": t_zoo / t_ref,
                    "floor_ms": base * 1e3,
                    "x_floor": t_zoo / base,
                }
            )
    return rows


def to_markdown(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"shape {args.shape}, {args.dtype}, device {args.device}, threads {args.threads}"
        f"{', channels_last' if args.channels_last else ''}",
        "",
        "| mode | norm | zoo ms | torch ms | zoo/torch | floor ms | zoo/floor |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['norm']} | {r['zoo_ms']:.3f} | {r['torch_ms']:.3f} | "
            f"{r['ratio']:.2f} | {r['floor_ms']:.3f} | {r['x_floor']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument(
        "--shape", default="32,64,32,32", help="input shape N,C,*  (default: 32,64,32,32)"
    )
    parser.add_argument(
        "--groups", type=int, default=32, help="groups for group norm (default: 32)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument(
        "--channels-last", action="store_true", help="channels_last memory format (4-d)"
    )
    parser.add_argument(
        "--min-run", type=float, default=0.5, help="seconds per measurement (default: 0.5)"
    )
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch.cuda.is_available() is False")
    print(to_markdown(run(args), args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
