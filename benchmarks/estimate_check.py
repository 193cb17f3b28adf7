"""How close the compare command's cost estimate comes to the measured time of a grid.

python benchmarks/estimate_check.py                 # a tiny grid, 1 worker
python benchmarks/estimate_check.py --workers 2 --steps 60

Grid A (seed 0) is estimated from timed steps of the backbone (no store yet) and run; then grid B
(seed 1, same norms and batch sizes) is estimated twice, from the model and from the store's own
timings of grid A, and run. Measured is the grid's wall time as `run_grid` reports it (worker
start-up, training, evaluation and storing; not the report). Prints estimate / measured per line;
the goal is a ratio within 1/1.5 .. 1.5.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import yaml

from normzoo.bench.plan.config import load_config
from normzoo.bench.plan.cost import estimate_seconds
from normzoo.bench.record.timings import stored_timings
from normzoo.bench.run import run_grid


def tiny(steps: int, seed: int) -> dict:
    """2 norms x train batch 8 and 32, one seed, a few test conditions on 16x16 images."""
    return {
        "experiment": {"name": "estimate_check"},
        "data": {
            "dataset": "synthetic",
            "options": {"train_size": 1024, "test_size": 512, "image_size": 16},
        },
        "norms": ["batch", {"name": "group", "options": {"groups": 8}}],
        "train": {"batch_sizes": [8, 32], "max_steps": steps, "seeds": [seed]},
        "eval": {"test_batch_sizes": [8, 128], "stats_modes": ["running", "batch"]},
        "execution": {"wandb": "disabled"},
    }


def _config(folder: Path, steps: int, seed: int):
    path = folder / f"seed{seed}.yaml"
    path.write_text(yaml.safe_dump(tiny(steps, seed)))
    return load_config(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--steps", type=int, default=40, help="training steps per run")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder, out = Path(tmp), Path(tmp) / "out"
        for seed in (0, 1):
            config = _config(folder, args.steps, seed)
            model = estimate_seconds(config, args.workers)["wall_seconds"]
            calibrated = estimate_seconds(config, args.workers, stored_timings(config, out))
            summary = run_grid(config, out, args.workers, show_progress=False)
            assert summary.exit_status == 0, summary.errors
            rows.append((f"grid {'AB'[seed]}", "model", model, summary.seconds))
            if seed == 1:
                rows.append(("grid B", "store", calibrated["wall_seconds"], summary.seconds))
    print(f"{'grid':8} {'basis':6} {'estimate s':>10} {'measured s':>10} {'ratio':>6}")
    for grid, basis, estimate, measured in rows:
        print(f"{grid:8} {basis:6} {estimate:10.1f} {measured:10.1f} {estimate / measured:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
