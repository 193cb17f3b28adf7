"""Execute: process pool, worker, LightningModule, evaluation, checkpoints, cluster, DDP."""
