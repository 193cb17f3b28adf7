"""Micro-benchmark: zoo layers vs their torch/timm references vs the memory-bandwidth floor.

For each norm, the zoo layer and its reference (torch's layer; timm's for FRN, EvoNorm and weight
standardization; ``nn.BatchNorm`` run on each chunk for ghost batch norm) run side by side in one
process on the same input, interleaved over several repetitions (forward+backward in train mode,
forward in eval mode); the table reports median times and the ratio zoo/reference.

The floor is the time to move the bytes a layer must read and write at the measured copy
bandwidth of this machine (``dst.copy_(x)`` on a tensor of the input's size and layout):
forward reads x and writes y (2 tensors), forward+backward also reads x and dy and writes dx
(5 tensors); parameters are negligible. No normalization can run faster. (Weight
standardization is a 3x3 convolution, compute-bound: its floor is listed for scale only.)

glibc's malloc is held steady first (``mallopt``: no trimming, no ``mmap`` below 1 GiB): by
default it returns freed megabyte-sized blocks to the system and maps fresh ones, so a call can
pay thousands of page faults or none depending on the process's allocation history rather than
on the layer (seen here: torch's own batch norm at 4.3 or 6.3 ms per call, 16 or 1,100 faults).
Both sides of every ratio run under the same allocator; ``--allocator-as-is`` skips this.

    python benchmarks/layers.py                       # CPU, float32, one ResNet-stage shape
    python benchmarks/layers.py --device cuda --dtype bfloat16 --shape 64,256,56,56
    python benchmarks/layers.py --markdown reports/perf.md   # the committed sweep
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import os
import platform
import shlex
import statistics
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils import benchmark

import normzoo
from normzoo._environ import scoped_environ
from normzoo.bench.record.provenance import machine
from normzoo.functional import _cpp
from normzoo.report import marked_blocks

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
MODES = {"train fwd+bwd": (True, True), "train fwd": (True, False), "eval fwd": (False, False)}
# the committed report: a few CNN shapes (ResNet stages at CIFAR and ImageNet scale)
PERF_SHAPES = ("32,64,32,32", "8,256,28,28", "64,128,8,8")
GHOST_BATCH = 8  # virtual batch size in the ghost batch norm rows
AA = "A/A torch BatchNorm"  # torch's batch norm timed against itself: the noise floor


class ChunkedBatchNorm(nn.Module):
    """Reference for ghost batch norm: one ``nn.BatchNorm`` applied to each chunk in turn."""

    def __init__(self, bn: nn.Module, virtual_batch_size: int) -> None:
        super().__init__()
        self.bn, self.virtual_batch_size = bn, virtual_batch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.bn(x)
        return torch.cat([self.bn(chunk) for chunk in x.split(self.virtual_batch_size)])


def references(shape: tuple[int, ...], groups: int) -> dict[str, tuple[nn.Module, nn.Module, str]]:
    """(zoo layer, reference, reference name) for each norm; timm's only for 4-d inputs."""
    channels, rank = shape[1], len(shape)
    bn = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[rank]
    bn_name = f"torch {bn.__name__}"
    rows = {
        "batch": (normzoo.create("batch", channels), bn(channels), bn_name),
        # batch renorm has no torch layer: compare with batch norm, the work it adds to
        "batch_renorm": (normzoo.create("batch_renorm", channels), bn(channels), bn_name),
        # the noise floor batch renorm's ratio is read against: torch's layer against itself
        AA: (bn(channels), bn(channels), bn_name),
        "ghost_batch": (
            normzoo.create("ghost_batch", channels, virtual_batch_size=GHOST_BATCH),
            ChunkedBatchNorm(bn(channels), GHOST_BATCH),
            f"{bn_name} per chunk of {GHOST_BATCH}",
        ),
        "group": (
            normzoo.create("group", channels, groups=groups),
            nn.GroupNorm(groups, channels),
            "torch GroupNorm",
        ),
        "layer": (normzoo.create("layer", channels), nn.GroupNorm(1, channels), "torch GroupNorm"),
        "instance": (
            normzoo.create("instance", channels),
            nn.GroupNorm(channels, channels),
            "torch GroupNorm",
        ),
        # torch's RMSNorm over (C, *) has a per-element gain; ours is per channel
        "rms": (normzoo.create("rms", channels), nn.RMSNorm(shape[1:]), "torch RMSNorm(C,*)"),
    }
    if rank == 4:
        from timm.layers import EvoNorm2dB0, EvoNorm2dS0, FilterResponseNormTlu2d, StdConv2d

        from normzoo.layers import WSConv2d

        rows["filter_response"] = (
            normzoo.create("filter_response", channels),
            FilterResponseNormTlu2d(channels),
            "timm FilterResponseNormTlu2d",
        )
        rows["evonorm_b0"] = (
            normzoo.create("evonorm_b0", channels),
            EvoNorm2dB0(channels),
            "timm EvoNorm2dB0",
        )
        rows["evonorm_s0"] = (
            normzoo.create("evonorm_s0", channels, groups=groups),
            EvoNorm2dS0(channels, groups=groups),
            "timm EvoNorm2dS0",
        )
        rows["ws conv3x3"] = (
            WSConv2d(channels, channels, 3, padding=1, bias=False),
            StdConv2d(channels, channels, 3, padding=1),
            "timm StdConv2d",
        )
    return rows


def steady_malloc() -> bool:
    """Keep glibc's malloc from trimming the heap and from mapping large blocks afresh (see the
    module docstring); False where that is not glibc or mallopt refused."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(
        libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, (1 << 31) - 1)
    )


def _selected(name: str, norms: list[str]) -> bool:
    """Whether ``--norms`` selects this row; the A/A row comes with batch renorm."""
    return name.split()[0] in norms or (name == AA and "batch_renorm" in norms)


def _callable(layer: nn.Module, x: torch.Tensor, train: bool, backward: bool):
    layer.train(train)
    if backward:
        x = x.detach().requires_grad_()
        grad = torch.randn_like(x)  # every timed layer keeps the input's shape

        def fn():
            layer(x).backward(grad)
    else:

        def fn():
            with torch.no_grad():
                layer(x)

    for _ in range(3):  # warm-up (allocator, lazy init)
        fn()
    return fn


def _median_time(fn, min_run: float) -> float:
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run).median


def measure_pair(
    zoo: nn.Module, ref: nn.Module, x: torch.Tensor, train: bool, backward: bool, args
) -> tuple[float, float]:
    """Median seconds per call of the zoo layer and of its reference, interleaved."""
    fns = [_callable(m, x, train, backward) for m in (zoo, ref)]
    times: list[list[float]] = [[], []]
    for _ in range(args.repeats):
        for i, fn in enumerate(fns):
            times[i].append(_median_time(fn, args.min_run / args.repeats))
    return statistics.median(times[0]), statistics.median(times[1])


def copy_bandwidth(x: torch.Tensor, min_run: float) -> float:
    """Bytes per second of ``dst.copy_(x)`` (a read and a write of x), same size and layout."""
    dst = torch.empty_like(x)
    seconds = _median_time(lambda: dst.copy_(x), min_run)
    return 2 * x.numel() * x.element_size() / seconds


def run(args: argparse.Namespace, shape: tuple[int, ...], channels_last: bool) -> list[dict]:
    torch.manual_seed(0)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    x = torch.randn(shape, device=device, dtype=dtype)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    bandwidth = copy_bandwidth(x, args.min_run)
    rows = []
    for mode in args.modes:
        train, backward = MODES[mode]
        floor = (5 if backward else 2) * x.numel() * x.element_size() / bandwidth
        for name, (zoo, ref, ref_name) in references(shape, args.groups).items():
            if args.norms and not _selected(name, args.norms):
                continue
            zoo, ref = zoo.to(device, dtype), ref.to(device, dtype)
            if channels_last and x.dim() == 4:
                zoo, ref = (m.to(memory_format=torch.channels_last) for m in (zoo, ref))
            t_zoo, t_ref = measure_pair(zoo, ref, x, train, backward, args)
            rows.append(
                {
                    "mode": mode,
                    "norm": name,
                    "reference": ref_name,
                    "zoo_ms": t_zoo * 1e3,
                    "ref_ms": t_ref * 1e3,
                    "ratio": t_zoo / t_ref,
                    "floor_ms": floor * 1e3,
                    "x_floor": t_zoo / floor,
                    "bandwidth_gbs": bandwidth / 1e9,
                }
            )
    return rows


def _short(title: str, args: argparse.Namespace) -> str:
    """'shape 32,64,32,32, NCHW, 1 thread(s)' from a section title."""
    return title.replace(f", {args.dtype}, {args.device}", "")


def renorm_target(sections: list[tuple[str, list[dict]]], args: argparse.Namespace) -> list[str]:
    """The issue's targets for batch renorm (training forward+backward: <= 1.15x batch norm in
    every configuration, median <= 1.05x), met or missed where, read against the A/A rows
    (torch's batch norm against itself in the same run), and the fixed per-call cost that
    explains a miss."""

    def rows_of(norm: str) -> list[tuple[str, dict]]:
        return [
            (title, r)
            for title, rs in sections
            for r in rs
            if r["norm"] == norm and r["mode"] == "train fwd+bwd"
        ]

    rows, aa = rows_of("batch_renorm"), rows_of(AA)
    if not rows:
        return []
    target, median_target = 1.15, 1.05
    ratios = [r["ratio"] for _, r in rows]
    missed = [(title, r) for title, r in rows if r["ratio"] > target]
    median = statistics.median(ratios)
    shape = tuple(int(v) for v in args.shape[0].split(","))
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    zoo, ref, _ = references(shape, args.groups)["batch_renorm"]
    zoo, ref = zoo.to(device, dtype), ref.to(device, dtype)
    # the fixed cost per call: the same layers on a tiny input, where the kernels do almost nothing
    tiny = torch.randn(2, shape[1], 2, 2, device=device, dtype=dtype)
    fixed_zoo, fixed_ref = measure_pair(zoo, ref, tiny, True, True, args)
    kernels = _cpp.kernels() if args.device == "cpu" else None
    if kernels is not None:  # the same on the pure-PyTorch path (what runs without a C++ compiler)
        with scoped_environ({"NORMZOO_CPP": "0"}):
            fixed_python, fixed_ref_python = measure_pair(zoo, ref, tiny, True, True, args)
    at_shape = [r for t, r in rows if t.startswith(f"shape {args.shape[0]},")]
    aa_ratios = [r["ratio"] for _, r in aa]
    aa_text = (
        f"The A/A rows (torch's batch norm against itself, timed the same way in the same run) "
        f"range {min(aa_ratios):.2f}-{max(aa_ratios):.2f}x (median "
        f"{statistics.median(aa_ratios):.2f}x): the noise a single ratio above is read against."
        if aa_ratios
        else "No A/A row in this run (select batch_renorm to get one)."
    )
    return [
        "## Target: batch renorm within 1.15x of batch norm, median 1.05x (training "
        "forward+backward)",
        "",
        f"Median {median:.2f}x over the {len(rows)} configurations above "
        f"(min {min(ratios):.2f}, max {max(ratios):.2f}): median target "
        f"{'met' if median <= median_target else 'missed'}; "
        + (
            "at or under 1.15x in every configuration."
            if not missed
            else f"over 1.15x in {len(missed)} of {len(rows)}: "
            + "; ".join(f"{_short(t, args)} {r['ratio']:.2f}x" for t, r in missed)
            + "."
        ),
        "",
        aa_text,
        "",
        "How: batch renorm runs the kernels batch norm runs (one statistics pass, one "
        "normalizing pass with r and d folded into its per-channel scale and shift, batch norm's "
        "backward), plus per-channel work (r, d, the moving averages, the non-finite check, the "
        "fold, the weight gradient). "
        + (
            "On CPU here that step is one C++ autograd function "
            "(`normzoo/functional/csrc/batch_renorm.cpp`, built with torch's extension builder "
            "on first use), its per-channel work in loops over C values. "
            if kernels is not None
            else "This run used the pure-PyTorch path (per-channel work in NumPy or torch "
            "operators, a Python autograd.Function): the C++ kernels were "
            + ("not built. " if args.device == "cpu" else f"not used on {args.device}. ")
        )
        + f"The fixed cost per call, measured on a 2x{shape[1]}x2x2 input where the kernels do "
        f"almost nothing: {fixed_zoo * 1e3:.3f} ms per call against batch norm's "
        f"{fixed_ref * 1e3:.3f} ms (+{(fixed_zoo - fixed_ref) * 1e3:.3f} ms)"
        + (
            f"; the pure-PyTorch path (`NORMZOO_CPP=0`, or no C++ compiler) "
            f"{fixed_python * 1e3:.3f} ms against {fixed_ref_python * 1e3:.3f} ms "
            f"(+{(fixed_python - fixed_ref_python) * 1e3:.3f} ms)"
            if kernels is not None
            else ""
        )
        + (
            f". Batch norm's own call takes {min(r['ref_ms'] for r in at_shape):.2f}-"
            f"{max(r['ref_ms'] for r in at_shape):.2f} ms at {args.shape[0]}."
            if at_shape
            else "."
        ),
        "",
    ]


def table(rows: list[dict], title: str) -> str:
    bandwidth = f"copy bandwidth {rows[0]['bandwidth_gbs']:.1f} GB/s" if rows else ""
    lines = [
        f"{title}, {bandwidth}",
        "",
        "| mode | norm | reference | zoo ms | ref ms | zoo/ref | floor ms | zoo/floor |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['norm']} | {r['reference']} | {r['zoo_ms']:.3f} | "
            f"{r['ref_ms']:.3f} | {r['ratio']:.2f} | {r['floor_ms']:.3f} | {r['x_floor']:.1f} |"
        )
    return "\n".join(lines)


def _versions() -> str:
    import timm

    return (
        f"normzoo {normzoo.__version__}, torch {torch.__version__}, timm {timm.__version__}, "
        f"Python {platform.python_version()}"
    )


def _load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def _load_note(load_before: str) -> str:
    """The machine's 1-minute load average when the run started; the run itself adds 1-2."""
    return (
        f"1-minute load average when this run started: {load_before.split('/')[0]} (the run "
        "itself then adds 1 to 2; more means other jobs shared the 2 cores)."
    )


def sweep(args: argparse.Namespace) -> list[tuple[str, list[dict]]]:
    args.load_before = _load()
    sections = []
    for shape_text in args.shape:
        shape = tuple(int(s) for s in shape_text.split(","))
        for channels_last in args.formats:
            if channels_last and len(shape) != 4:
                continue
            for threads in args.threads:
                torch.set_num_threads(threads)
                layout = "channels_last" if channels_last else "NCHW"
                title = (
                    f"shape {shape_text}, {layout}, {args.dtype}, {args.device}, "
                    f"{threads} thread(s)"
                )
                rows = run(args, shape, channels_last)
                print(table(rows, title) + "\n", flush=True)
                sections.append((title, rows))
    return sections


def write_markdown(
    path: Path, sections: list[tuple[str, list[dict]]], argv: list[str], args: argparse.Namespace
) -> None:
    command = "python benchmarks/layers.py " + " ".join(shlex.quote(a) for a in argv)
    ratios: dict[str, list[float]] = {}
    for _, rows in sections:
        for r in rows:
            ratios.setdefault(f"{r['norm']} ({r['mode']})", []).append(r["ratio"])
    summary = [
        "| norm (mode) | reference | zoo/ref median | min | max |",
        "|---|---|---:|---:|---:|",
    ]
    refs = {f"{r['norm']} ({r['mode']})": r["reference"] for _, rows in sections for r in rows}
    for key, values in ratios.items():
        summary.append(
            f"| {key} | {refs[key]} | {statistics.median(values):.2f} | {min(values):.2f} | "
            f"{max(values):.2f} |"
        )
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = [
        "# Layer speed: zoo vs torch/timm references vs the memory-bandwidth floor",
        "",
        f"Generated by `{command}` on {now}.",
        "",
        f"- Versions: {_versions()}.",
        f"- Machine: {machine()}.",
        "- Times are medians of interleaved repetitions (zoo and reference alternate in one "
        "process); `zoo/ref` is the ratio of the two medians. `floor` = bytes a layer must read "
        "and write (2 tensors forward, 5 forward+backward) / the measured copy bandwidth at the "
        "same size and layout; `zoo/floor` says how far a layer is from that bound.",
        "- Allocator: "
        + (
            "glibc malloc held steady (no trimming, no mmap below 1 GiB), so that page faults "
            "of freshly mapped memory, which depend on the process's allocation history rather "
            "than on the layer, stay out of the timings."
            if args.steady_malloc
            else "as is (`--allocator-as-is`, or not glibc): timings include page faults of "
            "freshly mapped memory."
        ),
        f"- {_load_note(args.load_before)} Single figures vary by 10-30% between runs on a "
        "small virtual machine, more at 2 threads and at the small shape. The run is short "
        f"({args.min_run} s per measurement in {args.repeats} interleaved repetitions). Load "
        f"average (1/5/15 min) {args.load_before} at the start, {_load()} at the end. Compare "
        "ratios, not absolute times. "
        + (
            "No GPU was available to this run."
            if not torch.cuda.is_available()
            else f"A GPU was available ({torch.cuda.get_device_name()}); this run used "
            f"{args.device}."
        ),
        "",
        "## Summary: zoo/reference over all shapes, layouts and thread counts",
        "",
        *summary,
        "",
    ]
    text += renorm_target(sections, args)
    for title, rows in sections:
        text += ["## " + title.split(", copy")[0], "", table(rows, title), ""]
    # the sections other benchmarks wrote into this report (throughput.py, inference.py) stay
    kept = marked_blocks(path.read_text()) if path.exists() else []
    for block in kept:
        text += [block, ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument(
        "--shape",
        action="append",
        help="input shape N,C,* (repeatable; default: 32,64,32,32, or a few CNN shapes with "
        "--markdown)",
    )
    parser.add_argument("--groups", type=int, default=32, help="groups for group norm/EvoNorm-S0")
    parser.add_argument(
        "--threads",
        default=None,
        help="torch CPU threads, comma list (default 1; '1,2' with --markdown)",
    )
    parser.add_argument(
        "--channels-last", action="store_true", help="channels_last memory format only (4-d)"
    )
    parser.add_argument(
        "--both-layouts",
        action="store_true",
        help="NCHW and channels_last (default with --markdown)",
    )
    parser.add_argument("--modes", default=None, help=f"comma list of {list(MODES)}")
    parser.add_argument("--norms", default=None, help="comma list of norms to time (default: all)")
    parser.add_argument(
        "--min-run", type=float, default=0.5, help="seconds per measurement (default: 0.5)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved repetitions (default 3)"
    )
    parser.add_argument("--markdown", type=Path, help="write the sweep as markdown to this path")
    parser.add_argument(
        "--allocator-as-is",
        action="store_true",
        help="leave glibc's malloc as configured (default: hold it steady, see above)",
    )
    args = parser.parse_args(argv)
    sweep_defaults = args.markdown is not None
    args.shape = args.shape or (list(PERF_SHAPES) if sweep_defaults else ["32,64,32,32"])
    threads = args.threads or ("1,2" if sweep_defaults else "1")
    args.threads = [int(t) for t in threads.split(",")]
    if args.channels_last:
        args.formats = [True]
    elif args.both_layouts or sweep_defaults:
        args.formats = [False, True]
    else:
        args.formats = [False]
    modes = args.modes or ("train fwd+bwd,eval fwd" if sweep_defaults else ",".join(MODES))
    args.modes = [m.strip() for m in modes.split(",")]
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; choose from {list(MODES)}")
    args.norms = [n.strip() for n in args.norms.split(",")] if args.norms else None
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch.cuda.is_available() is False")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.steady_malloc = not args.allocator_as_is and steady_malloc()
    sections = sweep(args)
    if args.markdown is not None:
        write_markdown(args.markdown, sections, argv, args)
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
