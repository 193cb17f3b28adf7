"""Read offline W&B runs back from their ``.wandb`` transaction logs (what `wandb sync` uploads)."""

from __future__ import annotations

import json
import struct
from pathlib import Path


def read_wandb_records(path: Path) -> list:
    """Decode a ``.wandb`` transaction log (LevelDB log format: 7-byte file header, 32 KiB blocks
    of chunks with a 7-byte header: crc32 u32, length u16, type u8 = full/first/middle/last)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # trailer too small for a header: skip to the next block
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:  # zero padding
            break
        if kind in (1, 2):
            pending = chunk
        else:
            pending += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _items(items) -> dict:
    return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}


def wandb_run(run_dir: Path) -> dict:
    """One offline run: its run record (id, group, job_type, tags), config, summary, history,
    and the names of the artifacts it logged."""
    records = read_wandb_records(next(Path(run_dir).glob("run-*.wandb")))
    kinds = [(r.WhichOneof("record_type"), r) for r in records]
    run = next(r.run for kind, r in kinds if kind == "run")
    config = _items(run.config.update)
    summary = {}
    for kind, r in kinds:
        if kind == "config":
            config.update(_items(r.config.update))
        elif kind == "summary":
            summary.update(_items(r.summary.update))
    history = [_items(r.history.item) for kind, r in kinds if kind == "history"]
    artifacts = [(r.artifact.type, r.artifact.name) for kind, r in kinds if kind == "artifact"]
    config = {k: v.get("value", v) if isinstance(v, dict) else v for k, v in config.items()}
    return {
        "run": run,
        "id": run.run_id,
        "group": run.run_group,
        "job_type": run.job_type,
        "tags": list(run.tags),
        "config": config,
        "summary": summary,
        "history": history,
        "artifacts": artifacts,
        "dir": Path(run_dir),
    }


def wandb_runs(root: Path) -> list[dict]:
    """Every offline run under ``root/wandb``."""
    return [wandb_run(d) for d in sorted((Path(root) / "wandb").glob("offline-run-*"))]
