"""Validation accuracy vs learning rate per norm and train batch size, from a store's tuning runs.

    python benchmarks/lr_sensitivity.py runs/quick [--config configs/quick.yaml] [--csv F] [--png F]

Reads the tuning runs (role ``tune``) of an output dir whose config declares ``train.lr_grid``,
prints the table (`normzoo.bench.plan.tuning.tuning_table`: mean validation accuracy over the
tuning seeds per lr, failures counted as 0, the selected lr marked) and optionally writes it as
CSV and as a plot with one panel per train batch size. Test data is never read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def plot(table, path: Path) -> None:
    """One panel per train batch size: validation accuracy vs lr (log axis), a line per norm,
    the selected lr circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(table["train_batch_size"].unique())
    fig, axes = plt.subplots(1, len(sizes), figsize=(4 * len(sizes), 3.2), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        cell = table[table["train_batch_size"] == size]
        for norm, rows in cell.groupby("norm", sort=False):
            rows = rows.sort_values("lr")
            (line,) = ax.plot(rows["lr"], rows["val_accuracy"], marker="o", label=norm)
            chosen = rows[rows["selected"]]
            ax.scatter(
                chosen["lr"],
                chosen["val_accuracy"],
                s=160,
                facecolors="none",
                edgecolors=line.get_color(),
            )
        ax.set_xscale("log")
        ax.set_title(f"train batch {size}")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("validation accuracy (tuning seeds)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="an output dir holding results.sqlite")
    parser.add_argument("--config", help="config (default: the one stored with the runs)")
    parser.add_argument("--csv", type=Path, help="write the table as CSV")
    parser.add_argument("--png", type=Path, help="write the plot as PNG")
    args = parser.parse_args(argv)
    from normzoo.bench.plan.config import load_config, parse_config
    from normzoo.bench.plan.presets import resolve_config
    from normzoo.bench.plan.tuning import tuning_table
    from normzoo.bench.record.store import Store

    with Store(args.out_dir, read_only=True) as store:
        runs = store.runs_frame()
    tuned = runs[runs["role"] == "tune"]
    if tuned.empty:
        print(f"no tuning runs in {args.out_dir}; the config has no train.lr_grid", file=sys.stderr)
        return 2
    if args.config:
        config = load_config(resolve_config(args.config))
    else:
        config = parse_config(json.loads(tuned.iloc[-1]["config_json"]))
    table = tuning_table(config, runs)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if args.csv:
        table.to_csv(args.csv, index=False)
    if args.png:
        plot(table, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
