"""Compare normalization layers: config -> runs -> store -> statistics -> report (+ W&B).

python benchmarks/compare.py                       # configs/quick.yaml, a few minutes on CPU
python benchmarks/compare.py configs/shift.yaml --set train.epochs=5 --workers 8
python benchmarks/compare.py --help                # every option and the exit statuses

A thin door to the ``normzoo`` command (`normzoo.cli`): no subcommand means ``compare``, and
``python benchmarks/compare.py report DIR`` and the others work as ``normzoo report DIR`` does.
"""

import sys

from normzoo.cli import main as _main


def main(argv: list[str] | None = None) -> int:
    """``normzoo compare ...`` when ``argv`` names no other subcommand."""
    return _main(argv, prog="python benchmarks/compare.py", default_command="compare")


if __name__ == "__main__":
    sys.exit(main())
