"""The benchmark engine: config -> grid -> runs (Lightning) -> evaluations -> store (+ W&B)."""
