"""`hdvila data inspect`: what is in a set of shards, plus a contact sheet of sampled frames and captions."""
from __future__ import annotations

import json
import textwrap
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np
import webdataset as wds
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from .decoders import DecodeError, open_video
from .files import atomic_open
from .loading.pipeline import expand_shards


def summarize_shards(spec, sheet_path: str | Path | None = None, max_tiles: int = 12, tile_width: int = 320,
                     backend: str = "pyav", progress: bool = True) -> dict:
    """Counts, durations and resolutions of every sample; optionally a PNG contact sheet."""
    urls = expand_shards(spec)
    durations: list[float] = []
    resolutions: Counter = Counter()
    sources: Counter = Counter()
    per_shard: dict[str, int] = {}
    proxies = 0
    tiles_pool: list[tuple[bytes, dict, str]] = []
    dataset = wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples())
    for sample in tqdm(dataset, desc="inspect", unit="clip", disable=not progress):
        meta = json.loads(sample["json"]) if "json" in sample else {}
        url = sample.get("__url__", "?")
        per_shard[url] = per_shard.get(url, 0) + 1
        rate = float(Fraction(str(meta.get("fps", "0"))))
        if rate and meta.get("num_frames"):
            durations.append(meta["num_frames"] / rate)
        resolutions[f"{meta.get('width', '?')}x{meta.get('height', '?')}"] += 1
        sources[meta.get("video_id", "?")] += 1
        proxies += "proxy.mp4" in sample
        tiles_pool.append((sample["mp4"], meta, sample.get("txt", b"").decode("utf-8", "replace")))
    count = sum(per_shard.values())
    summary = {
        "shards": len(urls),
        "samples": count,
        "samples_per_shard": per_shard,
        "source_videos": len(sources),
        "with_proxy": proxies,
        "duration_s": _describe(durations),
        "total_hours": round(sum(durations) / 3600.0, 4),
        "resolutions": dict(resolutions.most_common()),
    }
    if sheet_path is not None and tiles_pool:
        pick = np.linspace(0, len(tiles_pool) - 1, num=min(max_tiles, len(tiles_pool))).round().astype(int)
        contact_sheet([tiles_pool[i] for i in pick], sheet_path, tile_width=tile_width, backend=backend)
        summary["contact_sheet"] = str(sheet_path)
    return summary


def _describe(values: list[float]) -> dict:
    if not values:
        return {}
    arr = np.asarray(values)
    return {"mean": round(float(arr.mean()), 3), "min": round(float(arr.min()), 3),
            "median": round(float(np.median(arr)), 3), "max": round(float(arr.max()), 3)}


def contact_sheet(items: list[tuple[bytes, dict, str]], path: str | Path, tile_width: int = 320,
                  columns: int = 4, backend: str = "pyav") -> None:
    """Middle frame of each clip with its key and caption underneath, written atomically as PNG."""
    font = ImageFont.load_default()
    tiles = []
    for mp4, meta, text in items:
        try:
            with open_video(mp4, backend=backend) as reader:
                h, w = reader.height, reader.width
                size = (max(2, round(h * tile_width / w)), tile_width)
            with open_video(mp4, backend=backend, size=size) as reader:
                frame = reader.get_frames([reader.num_frames // 2])[0]
        except DecodeError as exc:
            frame = np.zeros((tile_width * 9 // 16, tile_width, 3), np.uint8)
            text = f"[undecodable: {exc}] {text}"
        lines = textwrap.wrap(f"{meta.get('key', '')}: {text}", width=max(20, tile_width // 7))[:4]
        caption_h = 14 * len(lines) + 6
        tile = Image.new("RGB", (tile_width, frame.shape[0] + caption_h), "white")
        tile.paste(Image.fromarray(frame), (0, 0))
        draw = ImageDraw.Draw(tile)
        for i, line in enumerate(lines):
            draw.text((3, frame.shape[0] + 3 + 14 * i), line, fill="black", font=font)
        tiles.append(tile)
    columns = min(columns, len(tiles))
    rows = (len(tiles) + columns - 1) // columns
    cell_h = max(t.height for t in tiles)
    sheet = Image.new("RGB", (columns * (tile_width + 4) + 4, rows * (cell_h + 4) + 4), (40, 40, 40))
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        sheet.paste(tile, (4 + c * (tile_width + 4), 4 + r * (cell_h + 4)))
    with atomic_open(path, "wb") as fh:
        sheet.save(fh, format="PNG")


def iter_shard_captions(spec) -> Iterator[tuple[str, dict, str]]:
    """(key, metadata, caption) of every sample, reading only the small .json/.txt members (tarfile seeks
    over the videos), in shard order."""
    import tarfile

    for url in expand_shards(spec):
        pending: dict[str, dict] = {}
        with tarfile.open(url) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.partition(".")
                if ext not in ("json", "txt"):
                    continue
                entry = pending.setdefault(key, {})
                raw = tar.extractfile(member).read()
                try:
                    entry[ext] = json.loads(raw) if ext == "json" else raw.decode("utf-8").strip()
                except (UnicodeDecodeError, json.JSONDecodeError):
                    entry[ext] = None
        for key, entry in pending.items():
            meta = entry.get("json")
            text = entry.get("txt")
            if isinstance(meta, dict) and isinstance(text, str):
                yield key, meta, text
