"""Create the W&B Report (dashboard) of an experiment: its standard panels over its W&B runs.

python benchmarks/dashboard.py                         # configs/quick.yaml
python benchmarks/dashboard.py configs/study_shift.yaml --out runs/study_shift
python benchmarks/dashboard.py --dry-run               # build it and list the panels; save nothing

Needs W&B online (a login) to save; the project and entity are those the runs were logged to
(``execution.wandb_project``/``wandb_entity``, else ``WANDB_PROJECT``/``WANDB_ENTITY``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?", default=str(ROOT / "configs" / "quick.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--out", default=None, help="the experiment's output dir: picks its significance table"
    )
    parser.add_argument("--table", default=None, help="significance table of the summary run")
    parser.add_argument("--dry-run", action="store_true", help="list the panels; save nothing")
    args = parser.parse_args(argv)

    from normzoo.bench.plan.config import load_config
    from normzoo.bench.record.dashboard import (
        build_dashboard,
        pick_significance_table,
        save_dashboard,
    )
    from normzoo.bench.record.track import Tracker

    try:
        config = load_config(args.config, args.set)
        out = Path(args.out) if args.out else Path("runs") / config.experiment.name
        names = [p.stem for p in sorted(out.glob("significance*.csv"))]
        table = args.table or pick_significance_table(names)
        tracker = Tracker.from_config(config, out)
        if args.dry_run:
            report = build_dashboard(config, tracker.project, tracker.entity or "-", table)
            for block in report.blocks:
                for panel in getattr(block, "panels", []):
                    print(f"{type(panel).__name__}: {getattr(panel, 'title', None) or panel}")
            return 0
        print(f"W&B Report: {save_dashboard(config, tracker, table)}")
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
