"""Inference latency per norm in the default model, batch norm and batch renorm folded
(`normzoo.fold`) and unfolded, against the norms that cannot fold, side by side in one process.

The model is quick.yaml's: small_cnn widths 16-32-64-64, 16x16 images, 10 classes, in eval mode
after a few training-mode forwards (non-trivial running statistics). Each variant runs the
forward under ``torch.inference_mode`` on one thread (``torch.utils.benchmark.Timer``,
``blocked_autorange``, timing process CPU time: on a shared machine wall time also counts the
waits for a core); the variants alternate within each repetition (the order rotates every
repetition) so machine load hits all alike. Latency: the median over repetitions of each block
median; ratio: the median over repetitions of the per-repetition ratio to the folded batch norm
model. Folded outputs are checked against the unfolded model before timing. Folded batch renorm
is the same network as folded batch norm (convolutions with a bias, ReLU): its ratio is the
A/A noise floor the other ratios are read against.

    OMP_NUM_THREADS=1 python benchmarks/inference.py --repeats 21 --min-run 0.1 \
        --markdown reports/perf.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from torch.utils.benchmark import Timer

import normzoo
from normzoo.bench.record.provenance import command_line, machine, versions
from normzoo.models import build_model
from normzoo.report import write_block

WIDTHS, IMAGE, CLASSES = (16, 32, 64, 64), 16, 10
START, END = "<!-- inference:start -->", "<!-- inference:end -->"
FOLDABLE = ("batch", "batch_renorm")
NORMS = ("batch", "batch_renorm", "group", "layer", "instance", "filter_response", "evonorm_b0",
         "evonorm_s0", "rms", "none")  # fmt: skip
# quick.yaml's group options (evonorm_s0's as study_zoo.yaml); renorm leaves warmup at once so
# that the training forwards move its mu and sigma the paper's way
OPTIONS = {
    "group": {"groups": 8},
    "evonorm_s0": {"groups": 8},
    "batch_renorm": {"warmup": 0, "r_ramp": 10, "d_ramp": 10, "renorm_momentum": 0.3},
}
BASELINE = "batch folded"


def eval_model(norm: str, seed: int = 0) -> torch.nn.Module:
    """The default model with ``norm``, after 5 training-mode forwards on shifted random data."""
    torch.manual_seed(seed)
    model = build_model("small_cnn", norm, CLASSES, 3, OPTIONS.get(norm, {}), widths=WIDTHS)
    with torch.no_grad():
        for _ in range(5):
            model(torch.randn(32, 3, IMAGE, IMAGE) * 2 + 0.5)
    return model.eval()


def variants(norms: list[str]) -> dict[str, torch.nn.Module]:
    """Label -> eval model: every norm unfolded, and the foldable ones folded too (checked)."""
    models = {}
    x = torch.randn(8, 3, IMAGE, IMAGE)
    for norm in norms:
        model = eval_model(norm)
        models[norm] = model
        if norm in FOLDABLE:
            folded = normzoo.fold(model)
            with torch.inference_mode():
                torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
            models[f"{norm} folded"] = folded
    return models


@torch.inference_mode()
def infer(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def measure(models: dict[str, torch.nn.Module], batch: int, args) -> list[dict]:
    """Per variant: the median block latency (s) and the median ratio to ``BASELINE``."""
    x = torch.randn(batch, 3, IMAGE, IMAGE)
    labels = list(models)
    times: dict[str, list[float]] = {label: [] for label in labels}
    for repeat in range(args.repeats):
        shift = repeat % len(labels)
        for label in labels[shift:] + labels[:shift]:
            timer = Timer("infer(model, x)", globals={"infer": infer, "model": models[label],
                          "x": x}, num_threads=1, timer=time.process_time)  # fmt: skip
            times[label].append(timer.blocked_autorange(min_run_time=args.min_run).median)
    base = times.get(BASELINE)
    rows = []
    for label in labels:
        ratio = (
            statistics.median(t / b for t, b in zip(times[label], base, strict=True))
            if base
            else float("nan")
        )
        rows.append(dict(label=label, batch=batch, seconds=statistics.median(times[label]),
                         ratio=ratio))  # fmt: skip
        print(f"batch {batch} {label}: {rows[-1]['seconds'] * 1e3:.3f} ms ({ratio:.2f}x)")
    return rows


def _command() -> str:
    env = [f"{k}={os.environ[k]}" for k in ("PYTHONPATH", "OMP_NUM_THREADS") if k in os.environ]
    return " ".join([*env, "python", command_line()])


def markdown(rows: list[dict], args, load: tuple, load_end: tuple) -> str:
    v = versions()
    batches = sorted({r["batch"] for r in rows})
    by = {(r["label"], r["batch"]): r for r in rows}
    labels = list(dict.fromkeys(r["label"] for r in rows))
    lines = [
        START,
        "# Inference latency per norm: batch norm folded vs the norms that cannot fold",
        "",
        f"Generated by `{_command()}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        f"- Versions: {', '.join(f'{k} {x}' for k, x in v.items())}.",
        f"- Machine: {machine()}; torch threads: 1 (`Timer(num_threads=1)`).",
        f"- Load average (1/5/15 min) {'/'.join(f'{x:.1f}' for x in load)} at the start,"
        f" {'/'.join(f'{x:.1f}' for x in load_end)} at the end (other jobs share the cores:"
        " read the ratios, which come from interleaved runs in one process).",
        f"- Model: small_cnn widths {'-'.join(map(str, WIDTHS))}, {IMAGE}x{IMAGE} images,"
        f" {CLASSES} classes, eval mode, forward under `torch.inference_mode`, float32, CPU."
        " `folded`: `normzoo.fold(model)` (each conv -> batch norm pair folded into the conv;"
        " outputs checked equal to the unfolded model). Group and EvoNorm-S0: 8 groups.",
        f"- ms: process CPU time per forward, median over {args.repeats} interleaved"
        " repetitions (order rotated each time) of"
        f" `Timer.blocked_autorange(min_run_time={args.min_run}, timer=time.process_time)`"
        f" medians; ratio: median of the per-repetition ratios to `{BASELINE}`."
        " `batch_renorm folded` is the same network as `batch folded` (convolutions with a"
        " bias, ReLU), so its ratio is the A/A noise floor; `none` is that network too"
        " (a conv bias, no norm).",
        "",
        "| norm | " + " | ".join(f"batch {b} ms | batch {b} ratio" for b in batches) + " |",
        "|---|" + "---:|---:|" * len(batches),
    ]
    for label in labels:
        cells = []
        for b in batches:
            r = by[(label, b)]
            cells += [f"{r['seconds'] * 1e3:.3f}", f"{r['ratio']:.2f}x"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join([*lines, END, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--norms", nargs="+", default=list(NORMS), choices=NORMS)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 128])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-run", type=float, default=0.2, help="seconds per timed block")
    parser.add_argument("--markdown", type=Path, help="write the table into this report")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    models = variants(args.norms)
    rows = [row for batch in args.batch_sizes for row in measure(models, batch, args)]
    section = markdown(rows, args, load, os.getloadavg())
    print(section)
    if args.markdown:
        write_block(args.markdown, START, END, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
