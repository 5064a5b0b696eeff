"""Read an offline W&B run file (`run-*.wandb`) back, for tests.

wandb >= 0.2x no longer ships a Python reader. The file is a 7-byte header
(`:W&B`, magic, version) followed by LevelDB-log records (crc32, length, type, data)
in 32 KiB blocks; each record's data is a `wandb_internal_pb2.Record` protobuf.
"""

from __future__ import annotations

import struct
from pathlib import Path

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B run file"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def _settled(path: Path, timeout: float = 20.0) -> Path:
    """Wait until the wandb service has stopped writing the run file (it flushes asynchronously)."""
    import time

    deadline, last = time.monotonic() + timeout, -1
    while time.monotonic() < deadline:
        size = path.stat().st_size
        if size == last:
            return path
        last = size
        time.sleep(0.5)
    return path


def _items(items) -> dict:
    import json

    return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items}


def read_run(folder: Path) -> dict:
    """{'history': [{key: value}], 'run': RunRecord, 'artifacts': [names], 'dir': run folder,
    'config': {key: value} (top level), 'summary': {key: value}, 'metrics': {name or glob: step metric}}"""
    run_file = _settled(next(Path(folder).glob("wandb/offline-run-*/run-*.wandb")))
    out: dict = {"history": [], "run": None, "artifacts": [], "dir": run_file.parent, "config": {}, "summary": {},
                 "metrics": {}}
    for rec in records(run_file):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            out["history"].append(_items(rec.history.item))
        elif kind == "run":
            out["run"] = rec.run
            out["config"].update(_items(rec.run.config.update))
        elif kind == "config":
            out["config"].update(_items(rec.config.update))
        elif kind == "summary":
            out["summary"].update(_items(rec.summary.update))
        elif kind == "metric":
            out["metrics"][rec.metric.name or rec.metric.glob_name] = rec.metric.step_metric
        elif kind == "artifact":
            out["artifacts"].append(rec.artifact.name)
    # W&B stores each config entry as {"value": ...}; unwrap it
    out["config"] = {k: v.get("value", v) if isinstance(v, dict) else v for k, v in out["config"].items()}
    return out
