"""Save the W&B Report (dashboard) of an experiment: its standard panels over its W&B runs.

python benchmarks/dashboard.py ENTITY/PROJECT                    # configs/quick.yaml
python benchmarks/dashboard.py ENTITY/PROJECT study_shift --out runs/study_shift
python benchmarks/dashboard.py ENTITY/PROJECT --dry-run          # list the panels; save nothing

A thin door to ``normzoo dashboard`` (`normzoo.cli`), which works from an installed package too.
Saving needs a W&B login.
"""

import sys

from normzoo.cli import main as _main


def main(argv: list[str] | None = None) -> int:
    """``normzoo dashboard ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return _main(["dashboard", *argv], prog="python benchmarks/dashboard.py")


if __name__ == "__main__":
    sys.exit(main())
