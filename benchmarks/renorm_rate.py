"""Are batch renorm's moving averages stale at the end of a short run? (issue 23, item 6)

Trains one run of a config's ``batch_renorm`` norm (seed 0, i.i.d. batches, one train batch
size) at a given ``renorm_momentum`` and prints, per renorm layer: the mean over the last 20
training steps of ``r = sigma_B / sigma`` (before clipping; 1 when sigma is the population's),
and ``|mu - population mean| / population sigma`` averaged over channels, where the population
statistics are the exact ones of the trained model on the training split
(``normzoo.recompute_stats``).

    python benchmarks/renorm_rate.py configs/study_renorm.yaml --batch-size 32 --rate 0.01
    python benchmarks/renorm_rate.py configs/study_renorm.yaml --batch-size 32 --rate auto
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

import normzoo
from normzoo.bench.execute.train.module import build_module, build_trainer, quiet_lightning
from normzoo.bench.execute.worker import _datamodule
from normzoo.bench.plan.config import load_config
from normzoo.bench.plan.grid import expand_runs
from normzoo.layers.renorm import BatchRenorm

LAST = 20


def measure(config_path: str, batch_size: int, rate: str) -> dict:
    """Train the config's batch renorm at ``batch_size`` with ``renorm_momentum=rate``."""
    norm = next(n for n in load_config(config_path).norms if n.name == "batch_renorm")
    options = dict(norm.options)
    options["renorm_momentum"] = rate if rate == "auto" else float(rate)
    config = load_config(
        config_path,
        [
            f"train.batch_sizes=[{batch_size}]",
            "train.seeds=1",
            "train.compositions=[iid]",
            f"norms=[{{name: batch_renorm, options: {json.dumps(options)}}}]",
            "stats.primary=[]",
        ],
    )
    run = expand_runs(config)[0]
    datamodule = _datamodule(run, config)
    quiet_lightning()
    module = build_module(run, config, datamodule)
    layers = [m for m in module.model.modules() if isinstance(m, BatchRenorm)]
    ratios: dict[int, list[float]] = {i: [] for i in range(len(layers))}

    def hook(index: int):
        def record(layer: BatchRenorm, args) -> None:
            if layer.training:
                x = args[0].detach()
                dims = [0, *range(2, x.dim())]
                sigma_b = (x.var(dims, unbiased=False) + layer.eps).sqrt()
                sigma = (layer.running_var + layer.eps).sqrt()
                ratios[index].append(float((sigma_b / sigma).mean()))

        return record

    for i, layer in enumerate(layers):
        layer.register_forward_pre_hook(hook(i))
    build_trainer(config, []).fit(module, datamodule=datamodule)
    model = module.model.cpu().eval()
    population = copy.deepcopy(model)
    normzoo.recompute_stats(population, list(datamodule.train_dataloader()))
    exact = [m for m in population.modules() if isinstance(m, BatchRenorm)]
    errors = []
    for layer, pop in zip(layers, exact, strict=True):
        sigma = (pop.running_var + pop.eps).sqrt()
        errors.append(float(((layer.running_mean - pop.running_mean).abs() / sigma).mean()))
    return {
        "config": config_path,
        "train_batch_size": batch_size,
        "renorm_momentum": rate,
        "rate_used": layers[0].train()._step()[1],
        "steps": int(layers[0].num_batches_tracked),
        "mean_r_last_20_steps": [round(sum(r[-LAST:]) / LAST, 3) for r in ratios.values()],
        "abs_mu_error_over_sigma": [round(e, 3) for e in errors],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rate", default="auto", help="renorm_momentum: a number or 'auto'")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(json.dumps(measure(args.config, args.batch_size, args.rate)))


if __name__ == "__main__":
    main()
