"""Compare normalization layers: config -> runs -> store -> statistics -> report (+ W&B).

python benchmarks/compare.py                       # configs/quick.yaml, a few minutes on CPU
python benchmarks/compare.py configs/shift.yaml --set train.epochs=5 --workers 8
python benchmarks/compare.py --help                # every option and the exit statuses

The command itself lives in `normzoo.cli` (also installed as ``normzoo compare``).
"""

import sys

from normzoo.cli import main

if __name__ == "__main__":
    sys.exit(main())
