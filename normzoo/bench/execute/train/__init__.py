"""Training one run (the LightningModule, checkpoints, what training reached, DDP) or a stack of
K runs folded into one model."""
