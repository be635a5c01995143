"""Webdataset shard writer in the video2dataset layout, written atomically.

A shard NNNNN is finished when `NNNNN.tar` and `NNNNN_stats.json` both exist. Everything is written under
temporary names first; the tar is renamed last, so a killed ingest never leaves a partial shard visible.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds

from ..files import atomic_open, atomic_write_json

# Fixed member mtime: shards built twice from the same inputs are byte-identical.
MEMBER_MTIME = 0.0


def shard_name(index: int) -> str:
    return f"{index:05d}"


def sample_key(shard_index: int, position: int) -> str:
    """Keys never contain dots (webdataset splits member names at the first dot)."""
    return f"{shard_index:05d}_{position:04d}"


def shard_is_finished(out_dir: str | os.PathLike, index: int) -> bool:
    base = Path(out_dir) / shard_name(index)
    return base.with_suffix(".tar").exists() and Path(f"{base}_stats.json").exists()


def read_shard_stats(out_dir: str | os.PathLike, index: int) -> dict:
    return json.loads(Path(out_dir, f"{shard_name(index)}_stats.json").read_text())


class ShardWriter:
    """Collects samples of one shard; `close()` publishes tar, parquet and stats."""

    def __init__(self, out_dir: str | os.PathLike, index: int):
        self.out_dir = Path(out_dir)
        self.index = index
        self.base = self.out_dir / shard_name(index)
        self.rows: list[dict[str, Any]] = []
        self._tar_ctx = atomic_open(self.base.with_suffix(".tar"), "wb")
        self._fh = self._tar_ctx.__enter__()
        self._tar = wds.TarWriter(self._fh, mtime=MEMBER_MTIME, user="hdvila", group="hdvila")
        self.bytes_written = 0

    def write(self, key: str, files: dict[str, bytes | str], row: dict[str, Any]) -> None:
        if "." in key:
            raise ValueError(f"sample key {key!r} contains a dot")
        sample = {"__key__": key}
        for ext, payload in files.items():
            sample[ext] = payload.encode("utf-8") if isinstance(payload, str) else payload
        self.bytes_written += self._tar.write(sample)
        self.rows.append({"key": key, **row})

    def close(self, stats: dict[str, Any]) -> None:
        """Publish: parquet and stats first, then the tar (the tar's presence marks completion)."""
        self._tar.tarstream.close()  # closes the tar stream but leaves our file handle open
        with atomic_open(self.base.with_suffix(".parquet"), "wb") as fh:
            table = pa.Table.from_pylist(self.rows) if self.rows else pa.table({"key": pa.array([], pa.string())})
            pq.write_table(table, fh)
        atomic_write_json(f"{self.base}_stats.json", {**stats, "count": len(self.rows), "bytes": self.bytes_written})
        self._tar_ctx.__exit__(None, None, None)

    def abort(self) -> None:
        self._tar_ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)
