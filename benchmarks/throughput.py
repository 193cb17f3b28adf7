"""Training throughput of the default grid's model: today's per-run Lightning step against stacked
training (K seeds of one cell stepped as one, `normzoo.bench.execute.train.stack`), side by side.

For each train batch size both paths train for a fixed number of steps on random 16x16 images
(quick.yaml's small_cnn widths 16-32-64-64, 10 classes, AdamW; K = 3, quick.yaml's seeds, and
K = 8), alternating in one process so that machine load hits both alike; samples/s are medians
over the repetitions. Model FLOPs (forward+backward, FlopCounterMode) per sample times samples/s
give the achieved FLOP/s, read against the peak of the same convolutions at batch 256.

    OMP_NUM_THREADS=1 python benchmarks/throughput.py --markdown reports/perf.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from normzoo.bench.execute.train.module import (
    Classifier,
    quiet_lightning,
    skip_nvml_cuda_check,
)
from normzoo.bench.execute.train.stack import _slot_losses, stacked_optimizer
from normzoo.bench.execute.train.stacked_model import StackedModel
from normzoo.bench.plan.config import parse_config
from normzoo.bench.plan.grid import expand_runs
from normzoo.bench.record.provenance import benchmark_command, machine, versions
from normzoo.models import build_model
from normzoo.report import write_block

WIDTHS, IMAGE, CLASSES, WARMUP = (16, 32, 64, 64), 16, 10, 10
START, END = "<!-- throughput:start -->", "<!-- throughput:end -->"
OPTIONS = {"group": {"groups": 8}}  # quick.yaml's


def _config(norm: str, batch_size: int):
    return parse_config(
        {
            "model": {"backbone": "small_cnn", "options": {"widths": list(WIDTHS)}},
            "norms": [{"name": norm, "options": OPTIONS.get(norm, {})}],
            "train": {"batch_sizes": [batch_size], "optimizer": "adamw", "lr": 2e-3},
            "execution": {"wandb": "disabled"},
        }
    )


def _model(norm: str) -> torch.nn.Module:
    return build_model("small_cnn", norm, CLASSES, 3, OPTIONS.get(norm, {}), widths=WIDTHS)


class _Clock(L.Callback):
    """Seconds and optimizer steps from the first call of Lightning's loop that starts at or
    after step WARMUP to the end of training (the Classifier takes several batches per call)."""

    start: tuple[float, int] | None = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self.start is None and trainer.global_step >= WARMUP:
            self.start = (time.perf_counter(), trainer.global_step)

    def on_train_end(self, trainer, module) -> None:
        self.seconds = time.perf_counter() - self.start[0]
        self.steps = trainer.global_step - self.start[1]


def lightning_samples_per_second(norm: str, batch_size: int, steps: int) -> float:
    """Today's path: one run's `Classifier` step in a Lightning fit (as `train_run` builds it)."""
    x = torch.randn(batch_size * (steps + WARMUP), 3, IMAGE, IMAGE)
    y = torch.randint(0, CLASSES, (len(x),))
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True)
    module = Classifier(_model(norm), _config(norm, batch_size).train, batch_size)
    clock = _Clock()
    trainer = L.Trainer(
        max_steps=steps + WARMUP,
        accelerator="cpu",
        logger=False,
        callbacks=[clock],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        log_every_n_steps=10,
    )
    trainer.fit(module, train_dataloaders=loader)
    return clock.steps * batch_size / clock.seconds


def stacked_samples_per_second(norm: str, batch_size: int, steps: int, stack: int) -> float:
    """The stacked path: ``stack`` models stepped as one (the loop of `train_stack`)."""
    config = _config(norm, batch_size)
    model = StackedModel([_model(norm) for _ in range(stack)]).train()
    optimizer, scheduler = stacked_optimizer(model, config, expand_runs(config)[0], steps)
    for step in range(steps + WARMUP):
        if step == WARMUP:
            start = time.perf_counter()
        x = torch.randn(batch_size, 3 * stack, IMAGE, IMAGE)
        y = torch.randint(0, CLASSES, (batch_size, stack))
        losses = _slot_losses(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        optimizer.step()
        scheduler.step()
    return steps * batch_size * stack / (time.perf_counter() - start)


def flops_per_sample(model: torch.nn.Module, x: torch.Tensor, samples: int) -> float:
    """Forward+backward FLOPs of one training step, per sample."""
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        out.float().sum().backward()
    return counter.get_total_flops() / samples


def peak_flops(batch_size: int = 256, repeats: int = 10) -> float:
    """FLOP/s of the model's convolutions (the model without norms, ``none``) forward+backward
    at a large batch: the fastest of ``repeats`` steps, the one least slowed by other jobs."""
    model = _model("none").train()
    x = torch.randn(batch_size, 3, IMAGE, IMAGE)
    flops = flops_per_sample(model, x, batch_size) * batch_size
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        F.cross_entropy(model(x), torch.zeros(batch_size, dtype=torch.long)).backward()
        times.append(time.perf_counter() - start)
    return flops / min(times[1:])


def measure(args) -> list[dict]:
    rows = []
    for norm in args.norms:
        per_sample = flops_per_sample(_model(norm).train(), torch.randn(8, 3, IMAGE, IMAGE), 8)
        peak = peak_flops()
        for batch_size in args.batch_sizes:
            today, stacked = [], {k: [] for k in args.stack}
            for _ in range(args.repeats):  # interleaved: the load hits both paths alike
                today.append(lightning_samples_per_second(norm, batch_size, args.steps))
                for k in args.stack:
                    stacked[k].append(stacked_samples_per_second(norm, batch_size, args.steps, k))
            a = statistics.median(today)
            for k, values in stacked.items():
                b = statistics.median(values)
                # the ratio of each interleaved pair, then the median: a burst of load on one
                # repetition moves one pair, not the ratio of two separately taken medians
                ratio = statistics.median(v / t for v, t in zip(values, today, strict=True))
                rows.append(dict(norm=norm, batch=batch_size, stack=k, today=a, stacked=b,
                                 ratio=ratio, flops=per_sample, peak=peak))  # fmt: skip
                print(f"{norm} batch {batch_size} K={k}: {a:.0f} vs {b:.0f} ({ratio:.2f}x)")
    return rows


def markdown(rows: list[dict], args, load: tuple, load_end: tuple) -> str:
    v = versions()
    lines = [
        START,
        "# Training throughput: today's Lightning step vs stacked training",
        "",
        f"Generated by `{benchmark_command()}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        f"- Versions: {', '.join(f'{k} {x}' for k, x in v.items())}.",
        f"- Machine: {machine()}; torch threads: {torch.get_num_threads()}.",
        f"- Load average (1/5/15 min) {'/'.join(f'{x:.1f}' for x in load)} at the start,"
        f" {'/'.join(f'{x:.1f}' for x in load_end)} at the end (other jobs share the cores:"
        " read the ratios, which come from interleaved runs in one process).",
        f"- Model: small_cnn widths {'-'.join(map(str, WIDTHS))}, {IMAGE}x{IMAGE} images,"
        f" {CLASSES} classes, AdamW; {args.steps} timed steps after {WARMUP} warm-up steps,"
        f" median of {args.repeats} interleaved repetitions. Today: one run's `Classifier` step"
        f" in a Lightning fit. Stacked: K runs stepped as one"
        " (`normzoo.bench.execute.train.stack`, fused AdamW); samples/s count all runs' samples.",
        "- samples/s: medians over the repetitions; stacked/today: the median of the"
        " per-repetition ratios (the two paths alternate, so each pair shares the load).",
        "- FLOP/s = forward+backward FLOPs per sample (FlopCounterMode) x samples/s; peak ="
        " the same convolutions (the model with norm `none`) forward+backward at batch 256 on this"
        " machine, the fastest of 10 steps."
        " Under this load the peak itself is uncertain; fractions of it are indicative.",
        "",
        "| norm | train batch | K | today samples/s | stacked samples/s | stacked/today |"
        " today GFLOP/s (of peak) | stacked GFLOP/s (of peak) | peak GFLOP/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        a, b = r["today"] * r["flops"], r["stacked"] * r["flops"]
        lines.append(
            f"| {r['norm']} | {r['batch']} | {r['stack']} | {r['today']:.0f} | {r['stacked']:.0f} |"
            f" {r['ratio']:.2f}x | {a / 1e9:.2f} ({a / r['peak']:.0%}) |"
            f" {b / 1e9:.2f} ({b / r['peak']:.0%}) | {r['peak'] / 1e9:.2f} |"
        )
    return "\n".join([*lines, END, ""])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--norms", nargs="+", default=["batch", "group"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[2, 8, 32])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--stack", nargs="+", type=int, default=[3, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--markdown", type=Path, help="write the table into this report")
    args = parser.parse_args(argv)
    quiet_lightning()
    skip_nvml_cuda_check()  # as a benchmark worker does, for every side alike
    load = os.getloadavg()
    rows = measure(args)
    section = markdown(rows, args, load, os.getloadavg())
    print(section)
    if args.markdown:
        write_block(args.markdown, START, END, section)


if __name__ == "__main__":
    main()
