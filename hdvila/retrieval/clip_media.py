"""What a search page needs beside the index: where each clip's video lies inside its shard, and a thumbnail.

Written into the index folder when it is built, so serving reads no video to show results and plays a clip
straight out of its tar with HTTP range requests, without unpacking anything:

    media.npy         int64 [N, 3]: shard number (into info.json's "shard_files"), byte offset, byte size of the
                      clip's .mp4 member; -1 where the clip cannot be played in place (a compressed shard)
    thumbnails.bin    the JPEG thumbnails of all clips, one after the other
    thumbnails.npy    int64 [N + 1] offsets into thumbnails.bin; an empty slice = no thumbnail (undecodable)

Two files per kind, not one per clip: a folder of a hundred million small files is slow to write, copy and
list. Nothing here takes a path from outside: the reader maps an index id to a row, and a row to a shard named
in the folder's own info.json.
"""
from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from data_tools.decoders import DecodeError, open_video
from data_tools.loading.pipeline import LoaderConfig, ShardMetadataError, check_dims
from data_tools.logs import get_logger

log = get_logger(__name__)

MEDIA_FILE = "media.npy"
THUMBS_FILE = "thumbnails.bin"
THUMB_OFFSETS_FILE = "thumbnails.npy"
THUMB_BOX = (320, 180)  # (width, height) a thumbnail fits inside
THUMB_QUALITY = 85
VIDEO_MEMBER = "mp4"
PROXY_MEMBER = "proxy.mp4"  # the ingest's small copy: the cheap source of a thumbnail
MAX_MEMBER_BYTES = LoaderConfig.max_video_member_bytes  # a shard is untrusted: no bigger read than the loader's


def _split_member(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is everything before the first dot of the base name."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext if dot else "")


def thumbnail_jpeg(video: bytes, backend: str = "pyav", box: tuple[int, int] = THUMB_BOX) -> bytes:
    """The middle frame of an encoded clip as a JPEG that fits inside `box` (aspect kept)."""
    from PIL import Image

    with open_video(video, backend=backend) as reader:
        # the loader's limits on what a stream header may declare, before a frame is decoded at that size
        count, _, _ = check_dims(reader.num_frames, reader.height, reader.width)
        frame = reader.get_frames([count // 2])[0]
    image = Image.fromarray(np.ascontiguousarray(frame))
    image.thumbnail(box, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=THUMB_QUALITY, optimize=True)
    return out.getvalue()


@dataclass
class _Found:
    shard: int
    offset: int  # -1: the member cannot be read in place
    size: int


def write_clip_media(folder: str | os.PathLike, shard_files: Sequence[str], keys: Sequence[str],
                     backend: str = "pyav", progress: bool = True) -> dict:
    """Locate every key's video member in `shard_files` (first occurrence wins, as in the gallery) and write
    media.npy and the thumbnails into `folder`. Returns counts for info.json."""
    folder = Path(folder)
    wanted = {key: row for row, key in enumerate(keys)}
    if len(wanted) != len(keys):
        raise ValueError("index records repeat a sample key")
    media = np.full((len(keys), 3), -1, np.int64)
    thumbs: list[bytes] = [b""] * len(keys)
    found: dict[str, _Found] = {}
    failures: dict[str, str] = {}
    bar = tqdm(total=len(keys), desc="thumbnails", unit="clip", disable=not progress, leave=False)

    def thumbnail_of(key: str, members: dict[str, bytes]) -> None:
        if thumbs[wanted[key]] or not members:
            return
        try:
            thumbs[wanted[key]] = thumbnail_jpeg(members.get(PROXY_MEMBER) or members[VIDEO_MEMBER], backend)
        except (DecodeError, ShardMetadataError, OSError, ValueError) as exc:
            failures[key] = str(exc)[:200]
        bar.update(1)

    for shard_number, shard in enumerate(shard_files):
        # a sample's members lie next to each other in its tar: only the current one's bytes are held
        current, members = None, {}
        try:
            in_place = _is_plain_tar(shard)
            with tarfile.open(shard, "r:*") as tar:
                for member in tar:
                    key, ext = _split_member(member.name)
                    if key != current:
                        if current is not None:
                            thumbnail_of(current, members)
                        current, members = key, {}
                    if not member.isfile() or key not in wanted or ext not in (VIDEO_MEMBER, PROXY_MEMBER):
                        continue
                    if key in found and found[key].shard != shard_number:
                        continue  # a second copy in a later shard: the gallery kept the first
                    if ext == VIDEO_MEMBER:
                        found[key] = _Found(shard_number, member.offset_data if in_place else -1, member.size)
                    if member.size > MAX_MEMBER_BYTES:
                        failures[key] = f"{ext} member of {member.size} bytes is over the loader's limit"
                        continue
                    handle = tar.extractfile(member)
                    if handle is not None:
                        members[ext] = handle.read()
        except (OSError, tarfile.TarError) as exc:
            log.warning("cannot read %s for clip media: %s", shard, exc)
        if current is not None:
            thumbnail_of(current, members)
    bar.close()
    for key, where in found.items():
        media[wanted[key]] = (where.shard, where.offset, where.size)
    offsets = np.zeros(len(keys) + 1, np.int64)
    offsets[1:] = np.cumsum([len(t) for t in thumbs])
    with open(folder / THUMBS_FILE, "wb") as fh:
        for thumb in thumbs:
            fh.write(thumb)
    np.save(folder / THUMB_OFFSETS_FILE, offsets)
    np.save(folder / MEDIA_FILE, media)
    missing = [k for k in keys if k not in found]
    if missing or failures:
        log.warning("clip media: %d clips without a video member, %d thumbnails failed (e.g. %s)",
                    len(missing), len(failures), next(iter(failures.items()), None))
    return {"playable": int((media[:, 1] >= 0).sum()), "thumbnails": int(sum(1 for t in thumbs if t)),
            "missing_video": len(missing), "thumbnail_failures": len(failures)}


def _is_plain_tar(path: str | os.PathLike) -> bool:
    """Only an uncompressed tar has its members' bytes at fixed file offsets."""
    try:
        with tarfile.open(path, "r:"):
            return True
    except tarfile.TarError:
        return False


class ClipMedia:
    """Reads the clip media of an index folder: video byte ranges and thumbnails by index id."""

    def __init__(self, folder: str | os.PathLike, shard_files: Sequence[str] | None, count: int):
        folder = Path(folder)
        self.count = int(count)
        self.shard_files = [Path(s) for s in shard_files or []]
        self.media: np.ndarray | None = None
        self.thumb_offsets: np.ndarray | None = None
        self.thumbs_path = folder / THUMBS_FILE
        if (folder / MEDIA_FILE).is_file() and self.shard_files:
            media = np.load(folder / MEDIA_FILE, allow_pickle=False)
            if media.shape != (self.count, 3) or media.dtype != np.int64:
                raise ValueError(f"{folder / MEDIA_FILE}: expected int64 [{self.count}, 3], got "
                                 f"{media.dtype} {list(media.shape)}")
            playable = media[:, 1] >= 0
            if (playable & ((media[:, 0] < 0) | (media[:, 0] >= len(self.shard_files)) | (media[:, 2] < 0))).any():
                raise ValueError(f"{folder / MEDIA_FILE} names shards that info.json does not list")
            self.media = media
        if (folder / THUMB_OFFSETS_FILE).is_file() and self.thumbs_path.is_file():
            offsets = np.load(folder / THUMB_OFFSETS_FILE, allow_pickle=False)
            size = self.thumbs_path.stat().st_size
            if (offsets.shape != (self.count + 1,) or offsets[0] != 0 or (np.diff(offsets) < 0).any()
                    or offsets[-1] != size):
                raise ValueError(f"{folder / THUMB_OFFSETS_FILE} does not describe {self.thumbs_path}")
            self.thumb_offsets = offsets

    @property
    def has_video(self) -> bool:
        return self.media is not None

    @property
    def has_thumbnails(self) -> bool:
        return self.thumb_offsets is not None

    def _row(self, clip: int) -> int:
        if not 0 <= clip < self.count:
            raise KeyError(clip)
        return int(clip)

    def thumbnail(self, clip: int) -> bytes | None:
        """The clip's JPEG, or None when the index has none for it."""
        row = self._row(clip)
        if self.thumb_offsets is None:
            return None
        start, end = int(self.thumb_offsets[row]), int(self.thumb_offsets[row + 1])
        if end == start:
            return None
        with open(self.thumbs_path, "rb") as fh:
            return os.pread(fh.fileno(), end - start, start)

    def video_location(self, clip: int) -> tuple[Path, int, int] | None:
        """(shard file, offset, size) of the clip's .mp4 inside its tar, or None when it cannot be played in
        place. The range is checked against the shard's current size, so a replaced shard is not misread."""
        row = self._row(clip)
        if self.media is None:
            return None
        shard, offset, size = (int(v) for v in self.media[row])
        if offset < 0:
            return None
        path = self.shard_files[shard]
        try:
            if offset + size > path.stat().st_size:
                log.warning("%s is shorter than the index expects; rebuild the index", path)
                return None
        except OSError:
            return None
        return path, offset, size


def iter_file_range(path: str | os.PathLike, start: int, length: int, chunk: int = 256 << 10) -> Iterable[bytes]:
    """The bytes [start, start + length) of a file, in chunks (a video is never read whole into memory)."""
    with open(path, "rb") as fh:
        fd = fh.fileno()
        end = start + length
        while start < end:
            data = os.pread(fd, min(chunk, end - start), start)
            if not data:
                raise OSError(f"{path} ended early")
            start += len(data)
            yield data
