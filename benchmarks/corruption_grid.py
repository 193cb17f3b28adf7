"""Grid image of the 15 CIFAR-10-C corruptions at severities 1, 3 and 5 on synthetic images.

Usage: python benchmarks/corruption_grid.py [--out reports/corruptions.png] [--images 3] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from normzoo.data import CORRUPTIONS, SYNTHETIC_CLASS_NAMES, corrupt  # noqa: E402
from normzoo.data.synthetic import generate  # noqa: E402

SEVERITIES = (1, 3, 5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports/corruptions.png"))
    parser.add_argument("--images", type=int, default=3, help="synthetic images per severity")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    images, labels = generate(args.images, seed=args.seed + 1000)
    clean = images.float() / 255
    columns = 1 + len(SEVERITIES) * args.images
    fig, axes = plt.subplots(
        len(CORRUPTIONS) + 1, columns, figsize=(columns * 0.9, (len(CORRUPTIONS) + 1) * 0.95)
    )
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for i in range(args.images):
        for s in range(len(SEVERITIES)):
            ax = axes[0, 1 + s * args.images + i]
            ax.imshow(clean[i].permute(1, 2, 0).numpy())
            ax.set_title(SYNTHETIC_CLASS_NAMES[labels[i]], fontsize=6)
    axes[0, 0].text(0.5, 0.5, "clean", ha="center", va="center", fontsize=7)
    for row, name in enumerate(CORRUPTIONS, start=1):
        axes[row, 0].text(0.5, 0.5, name.replace("_", "\n"), ha="center", va="center", fontsize=7)
        for s, severity in enumerate(SEVERITIES):
            out = corrupt(clean, name, severity, seed=args.seed)
            for i in range(args.images):
                ax = axes[row, 1 + s * args.images + i]
                ax.imshow(out[i].permute(1, 2, 0).numpy())
                if row == 1 and i == 0:
                    ax.set_xlabel("")
                if row == len(CORRUPTIONS):
                    ax.set_xlabel(f"severity {severity}", fontsize=6)
    for ax in axes[:, 0]:
        ax.axis("off")
    fig.suptitle("CIFAR-10-C corruptions (normzoo.data.corrupt) at severities 1, 3, 5", fontsize=9)
    fig.tight_layout(pad=0.2, rect=(0, 0, 1, 0.975))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
