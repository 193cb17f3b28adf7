"""Execute: plan the invocation against the store, run tasks on executors (pool, submitit), the
worker, evaluation, and the parent's writer; training itself lives in `train/`."""
