"""Demo: one small BatchNorm CNN, evaluated under every test-time statistics choice.

Trains a 3-block BN CNN on the embedded synthetic dataset, then reports test accuracy on the
clean and on a corrupted test set for: running statistics, batch statistics at test batch sizes
1/16/256, mix (prior 16), online EMA, PreciseBN recomputation, AdaBN and TENT (online, as
the paper scores it, and offline two-pass); plus test batches
of 16 with one outlier each.

    python benchmarks/teststats_demo.py [--epochs 6] [--train-size 10000] [--severity 5]
"""

from __future__ import annotations

import argparse
import copy
import logging
import time

import torch
from torch import nn

import normzoo.data
from normzoo.testtime import Tent, adapt, recompute_stats, stats_mode


def load(args: argparse.Namespace) -> tuple[torch.Tensor, ...]:
    """(train_x, train_y, clean test_x, corrupted test_x, test_y), normalized with train stats."""
    splits = normzoo.data.load(
        "synthetic", train_size=args.train_size, test_size=args.test_size, seed=args.seed
    )
    mean = torch.tensor(splits.mean).view(1, -1, 1, 1)
    std = torch.tensor(splits.std).view(1, -1, 1, 1)
    test_x = splits.test_images.float() / 255
    shifted_x = normzoo.data.corrupt(test_x, args.corruption, args.severity, seed=args.seed)
    train_x = (splits.train_images.float() / 255 - mean) / std
    return (
        train_x,
        splits.train_labels,
        (test_x - mean) / std,
        (shifted_x - mean) / std,
        splits.test_labels,
    )


def make_model(num_classes: int) -> nn.Module:
    def block(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    return nn.Sequential(
        *block(3, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2), *block(64, 64),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
    )  # fmt: skip


def batches(x: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple[torch.Tensor, ...]]:
    return list(zip(x.split(size), y.split(size), strict=True))


def accuracy(model: nn.Module, x, y, size: int, mode: str | None = None, **opts) -> float:
    """Accuracy over test batches of ``size``; ``mode`` None = the model as it is (eval)."""
    model.eval()
    correct = 0
    with torch.no_grad():
        if mode is None:
            for xb, yb in batches(x, y, size):
                correct += int((model(xb).argmax(1) == yb).sum())
        else:
            with stats_mode(model, mode, **opts):
                for xb, yb in batches(x, y, size):
                    correct += int((model(xb).argmax(1) == yb).sum())
    return correct / len(y)


def tent_online_accuracy(model: nn.Module, x, y, size: int) -> float:
    """TENT scored as the paper does: each batch by the outputs of the pass that adapts on it."""
    tent = Tent(copy.deepcopy(model))
    correct = 0
    with torch.no_grad():
        for xb, yb in batches(x, y, size):
            correct += int((tent(xb).argmax(1) == yb).sum())
    return correct / len(y)


def outlier_accuracy(model: nn.Module, x, y, size: int, mode: str, **opts) -> float:
    """Accuracy on the clean samples of test batches of ``size`` that each hold one outlier."""
    model.eval()
    correct = total = 0
    with torch.no_grad(), stats_mode(model, mode, **opts):
        for index, (xb, yb) in enumerate(batches(x, y, size)):
            dirty = normzoo.data.inject_outliers(xb, None, k=1, seed=index)
            clean = ~(dirty != xb).flatten(1).any(1)
            correct += int((model(dirty).argmax(1) == yb)[clean].sum())
            total += int(clean.sum())
    return correct / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--corruption", default="gaussian_noise")
    parser.add_argument("--severity", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    train_x, train_y, test_x, shifted_x, test_y = load(args)
    num_classes = int(train_y.max()) + 1

    model = make_model(num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_y))
        for xb, yb in batches(train_x[order], train_y[order], args.batch_size):
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(
            f"epoch {epoch + 1}: last loss {loss.item():.3f} ({time.perf_counter() - start:.0f}s)"
        )

    rows = [
        ("running, bs 256", lambda x: accuracy(model, x, test_y, 256, "running")),
        ("batch, bs 1", lambda x: accuracy(model, x, test_y, 1, "batch")),
        ("batch, bs 16", lambda x: accuracy(model, x, test_y, 16, "batch")),
        ("batch, bs 256", lambda x: accuracy(model, x, test_y, 256, "batch")),
        ("mix prior 16, bs 1", lambda x: accuracy(model, x, test_y, 1, "mix", prior=16)),
        ("mix prior 16, bs 16", lambda x: accuracy(model, x, test_y, 16, "mix", prior=16)),
        ("online (momentum 0.1), bs 16", lambda x: accuracy(model, x, test_y, 16, "online")),
        (
            "PreciseBN on train data, then running",
            lambda x: accuracy(
                recompute_stats(_copy(model), batches(train_x, train_y, 256)), x, test_y, 256
            ),
        ),  # fmt: skip
        (
            "AdaBN on this test set, then running",
            lambda x: accuracy(adapt(model, batches(x, test_y, 256), "adabn"), x, test_y, 256),
        ),
        (
            "TENT online (Adam 1e-3, bs 64)",
            lambda x: tent_online_accuracy(model, x, test_y, 64),
        ),
        (
            "TENT offline: adapt (Adam 1e-3, bs 64, 1 pass), then score again, batch bs 256",
            lambda x: accuracy(adapt(model, batches(x, test_y, 64), "tent"), x, test_y, 256),
        ),
    ]
    print(f"\nsynthetic: {len(train_y)} train / {len(test_y)} test images, {args.epochs} epochs")
    print(f"| test-time statistics | clean | {args.corruption} s{args.severity} |")
    print("|---|---|---|")
    for name, evaluate in rows:
        print(f"| {name} | {evaluate(test_x):.3f} | {evaluate(shifted_x):.3f} |")
    print("\nclean test batches of 16, one sample each replaced by a 10-sigma outlier")
    print("| stats mode | accuracy on the 15 clean samples of each batch |\n|---|---|")
    for mode, opts in [("running", {}), ("batch", {}), ("mix", {"prior": 16})]:
        acc = outlier_accuracy(model, test_x, test_y, 16, mode, **opts)
        print(f"| {mode} {opts or ''} | {acc:.3f} |")


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


if __name__ == "__main__":
    main()
