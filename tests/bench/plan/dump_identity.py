"""Print every identity a config produces (hash, labels, run keys, evaluation keys) as JSON.

A check across versions, not a test: run it on two checkouts and diff the output, e.g.
``cd /work/main && python /path/to/dump_identity.py > main.json``; it only uses the public
loaders, so it runs on the dataclass config of main and on the pydantic config alike.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from normzoo.bench.plan.config import load_config
from normzoo.bench.plan.grid import computed_condition, expand_conditions, expand_runs

# Overrides that exercise the labels the shipped configs do not (a prior sweep, compositions).
VARIANTS = {
    "quick.yaml": [
        [],
        ["eval.mix_prior=[0, 1, 16, .inf]"],
        ["eval.mix_prior=2.5", "eval.compositions=[iid, {name: outliers, k: 2}]"],
        ["train.compositions=[iid, {name: classes, k: 2}, {name: label_skew, alpha: 0.5}]"],
    ],
}


def identity(path: Path, overrides: list[str]) -> dict:
    config = load_config(path, overrides)
    runs = expand_runs(config)
    conditions = expand_conditions(config)
    largest = max(config.eval.test_batch_sizes)
    return {
        "hash": config.hash,
        "config_json": json.dumps(config.to_dict(), sort_keys=True, default=str),
        "norm_labels": [n.label for n in config.norms],
        "train_compositions": [c.label for c in config.train.compositions],
        "test_compositions": [c.label for c in config.eval.compositions],
        "primary": list(config.stats.primary),
        "runs": [[r.key, r.name, r.columns(config.experiment.name)] for r in runs],
        "conditions": [
            [
                c.label,
                c.columns(),
                computed_condition(c, True, largest).label,
                computed_condition(c, False, largest).label,
            ]
            for c in conditions
        ],
    }


def main(root: str) -> None:
    out = {}
    for path in sorted(Path(root).glob("*.yaml")):
        for overrides in VARIANTS.get(path.name, [[]]):
            out[f"{path.name} {overrides}"] = identity(path, overrides)
    json.dump(out, sys.stdout, indent=1, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "configs")
