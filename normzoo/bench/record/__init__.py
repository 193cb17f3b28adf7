"""Record: the SQLite store, the output dir, W&B tracking and the dashboard."""
