"""The benchmark engine: config -> grid -> runs (Lightning) -> evaluations -> SQLite store (+ W&B)."""
