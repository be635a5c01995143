"""Discover what to ingest: folders of videos with transcripts, clip manifests, HD-VILA-100M JSONL.

Nothing here opens a video; discovery only checks that files exist. Every input that cannot be used
becomes an `InputProblem` with a plain-words reason, and the remaining inputs go on.

Inputs are untrusted: transcripts, manifests and videos must be regular files within the size caps of
`LimitsConfig` (a FIFO would hang the build, /dev/zero would fill memory); HD-VILA-100M video ids cannot
name a file outside `video_root`; captions lose terminal control characters.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import posixpath
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..media import VIDEO_EXTENSIONS
from .config import LimitsConfig, SentenceConfig
from .inputs import InputFileError, check_input_file, read_input_bytes
from .transcripts import TranscriptError, short_repr, clean_caption, cues_to_sentences, parse_timestamp, read_transcript

__all__ = [
    "VIDEO_EXTENSIONS",
    "TRANSCRIPT_EXTENSIONS",
    "ClipRequest",
    "VideoJob",
    "InputProblem",
    "discover_inputs",
    "folder_video_ids",
    "pair_videos",
    "plan_clips",
]

TRANSCRIPT_EXTENSIONS = (".srt", ".vtt", ".json")  # preference order when several sit beside a video
MANIFEST_EXTENSIONS = (".jsonl", ".csv", ".parquet")
MIN_CLIP_SECONDS = 0.5

_COLUMNS = {
    "video": ("video", "video_path", "path"),
    "start": ("start", "start_time"),
    "end": ("end", "end_time"),
    "text": ("text", "caption", "sentence"),
    "clip_id": ("clip_id",),
    "video_id": ("video_id",),
}
_REQUIRED = ("video", "start", "end", "text")


@dataclass
class ClipRequest:
    start: float
    end: float
    text: str
    clip_id: str | None = None


@dataclass
class VideoJob:
    video_path: str  # absolute
    video_id: str  # stable id (file stem, manifest id, or HD-VILA video_id)
    transcript_path: str | None = None  # folder input: spans come from cues_to_sentences later
    clips: list[ClipRequest] | None = None  # manifest / HD-VILA input: explicit spans
    transcript_source: str = ""  # "srt" | "vtt" | "json" | "manifest" | "hdvila100m"
    source: str = ""  # what shards record: the path relative to its input root (folder, manifest base, video_root)


@dataclass
class InputProblem:
    input: str  # the path, row or clip id concerned
    stage: str  # "discover" (here), "transcript" or "plan" (plan_clips)
    reason: str  # human readable


class _Problems(list):
    def add(self, input: str, reason: str, stage: str = "discover") -> None:
        self.append(InputProblem(str(input), stage, reason))


def _seconds(value: float) -> str:
    """Short human form of a time: 12, 1.5, 3.25."""
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS and not path.name.startswith(".")


def _is_video_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def _caption(text: str) -> str:
    return " ".join(clean_caption(text).split())


def _video_problem(path: str | os.PathLike, limits: LimitsConfig) -> str | None:
    """Why the video cannot be used (not a regular file, over the cap), or None."""
    try:
        check_input_file(path, limits.max_video_bytes, "video file")
    except InputFileError as exc:
        return str(exc)
    return None


def _relative_source(path: str, root: str | os.PathLike, written: str | None = None) -> str:
    """`path` relative to `root` when inside it; else the path as the manifest wrote it (else the name)."""
    relative = os.path.relpath(path, os.path.abspath(root))
    if relative != ".." and not relative.startswith(".." + os.sep):
        return Path(relative).as_posix()
    return written if written is not None else Path(path).name


# ---------------------------------------------------------------------------------------------- folders

class _Siblings:
    """The file names of one folder, indexed once so that pairing each video costs O(1) look-ups."""

    def __init__(self, names: Iterable[str]):
        names = sorted(names)
        self.names = names
        self.by_lower = {name.lower(): name for name in names}  # real names by lower-cased name
        # yt-dlp subtitles "<stem>.<language>.<ext>", by (stem, ext); a language tag never holds a dot
        self.tagged: dict[tuple[str, str], list[str]] = defaultdict(list)
        for name in names:
            base, ext = os.path.splitext(name)
            ext = ext.lower()
            if ext in (".srt", ".vtt"):
                stem, dot, tag = base.rpartition(".")
                if dot and _is_language_tag(tag):
                    self.tagged[(stem, ext)].append(name)

    def transcript_for(self, stem: str) -> str | None:
        for ext in TRANSCRIPT_EXTENSIONS:
            name = self.by_lower.get(f"{stem}{ext}".lower())
            if name is not None and name.startswith(stem):  # the stem itself must match case-sensitively
                return name
        # take a language-tagged subtitle only when no exact match exists; English first
        for ext in (".srt", ".vtt"):
            tagged = self.tagged.get((stem, ext))
            if tagged:
                english = [name for name in tagged if name[len(stem) + 1 :].lower().startswith("en")]
                return (english or tagged)[0]
        return None


def pair_videos(names: Iterable[str]) -> list[tuple[str, str | None]]:
    """(video name, transcript name or None) for each video among the file names of one folder, sorted.

    Pure name logic in linear time (discovery of a folder of a million videos must not be quadratic).
    """
    siblings = _Siblings(names)
    return [(video, siblings.transcript_for(os.path.splitext(video)[0]))
            for video in siblings.names if _is_video_name(video)]


def _is_language_tag(tag: str) -> bool:
    base, _, region = tag.partition("-")
    return 2 <= len(base) <= 3 and base.isalpha() and (not region or region.isalnum())


def folder_video_ids(relative_paths: list[str]) -> list[str]:
    """Stable ids of the videos at these POSIX paths inside a folder, in linear time.

    The id is the path without its extension, so day1/intro.mp4 and day2/intro.mp4 stay distinct; a stem
    shared by two containers (intro.mp4 next to intro.mkv) gets the extension appended.
    """
    stems = [posixpath.splitext(path)[0].replace("/", "__") for path in relative_paths]
    counts = Counter(stems)
    return [
        f"{stem}_{posixpath.splitext(path)[1].lower().lstrip('.')}" if counts[stem] > 1 else stem
        for path, stem in zip(relative_paths, stems)
    ]


def _discover_folder(folder: Path, problems: _Problems, limits: LimitsConfig) -> list[VideoJob]:
    jobs: list[VideoJob] = []
    pairs: list[tuple[Path, str | None]] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        root_path = Path(root)
        pairs.extend((root_path / video, transcript) for video, transcript in pair_videos(files))
    if not pairs:
        problems.add(folder, f"no video files ({', '.join(VIDEO_EXTENSIONS)}) found in the folder")
        return jobs
    ids = folder_video_ids([video.relative_to(folder).as_posix() for video, _ in pairs])
    for (video, transcript), video_id in zip(pairs, ids):
        job = _transcript_job(video, video_id, transcript, folder, problems, limits)
        if job is not None:
            jobs.append(job)
    return jobs


def _transcript_job(video: Path, video_id: str, transcript: str | None, root: Path, problems: _Problems,
                    limits: LimitsConfig) -> VideoJob | None:
    """`transcript` is the name of the transcript file in the video's folder."""
    if transcript is None:
        looked = ", ".join(f"{video.stem}{ext}" for ext in TRANSCRIPT_EXTENSIONS)
        problems.add(video, f"no transcript beside the video (looked for {looked})")
        return None
    reason = _video_problem(video, limits)
    if reason is not None:
        problems.add(video, reason)
        return None
    return VideoJob(
        video_path=os.path.abspath(video),
        video_id=video_id,
        transcript_path=os.path.abspath(video.parent / transcript),
        transcript_source=Path(transcript).suffix.lower().lstrip("."),
        source=_relative_source(os.path.abspath(video), root),
    )


# ---------------------------------------------------------------------------------------------- manifests

def _read_bytes(path: Path, problems: _Problems, limits: LimitsConfig) -> bytes | None:
    try:
        return read_input_bytes(path, limits.max_manifest_bytes, "manifest file")
    except InputFileError as exc:
        problems.add(path, str(exc))
        return None


def _read_text(path: Path, problems: _Problems, limits: LimitsConfig) -> str | None:
    data = _read_bytes(path, problems, limits)
    if data is None:
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        problems.add(path, f"not valid UTF-8: first bad byte at byte offset {exc.start}")
        return None


def _jsonl_records(path: Path, text: str, problems: _Problems) -> Iterator[tuple[int, Any]]:
    """(row number, parsed object) for each non-blank line; bad lines become problems."""
    row = 0
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        row += 1
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.add(f"{path} row {row}", f"invalid JSON on line {line_number}: {exc.msg}")
            continue
        except RecursionError:
            problems.add(f"{path} row {row}", f"JSON on line {line_number} is nested too deeply")
            continue
        except ValueError as exc:  # an integer of more than 4300 digits
            problems.add(f"{path} row {row}", f"invalid JSON on line {line_number}: {exc}")
            continue
        yield row, record


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (
        isinstance(value, float) and math.isnan(value)
    )


def _field(row: dict[str, Any], name: str) -> Any:
    for alias in _COLUMNS[name]:
        if alias in row and not _blank(row[alias]):
            return row[alias]
    return None


def _missing_columns(columns: list[str]) -> list[str]:
    present = {column.strip().lower() for column in columns}
    return [name for name in _REQUIRED if not present.intersection(_COLUMNS[name])]


def _manifest_rows(path: Path, problems: _Problems, limits: LimitsConfig,
                   text: str | None = None) -> Iterator[tuple[int, Any]] | None:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        data = _read_bytes(path, problems, limits)
        if data is None:
            return None
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pq.read_table(pa.BufferReader(data))
        except Exception as exc:  # pyarrow raises several types for a damaged file
            problems.add(path, f"cannot read the parquet file: {exc}")
            return None
        missing = _missing_columns(table.column_names)
        if missing:
            problems.add(path, _missing_columns_reason(missing))
            return None
        return enumerate(table.to_pylist(), start=1)
    if text is None:
        text = _read_text(path, problems, limits)
    if text is None:
        return None
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = _missing_columns(reader.fieldnames or [])
        if missing:
            problems.add(path, _missing_columns_reason(missing))
            return None
        return _csv_records(path, reader, problems)
    return _jsonl_records(path, text, problems)


def _csv_records(path: Path, reader: csv.DictReader, problems: _Problems) -> Iterator[tuple[int, Any]]:
    """(row number, row) for each CSV row; a row the csv module rejects (a field over its size limit) is a problem."""
    number = 0
    while True:
        number += 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            problems.add(f"{path} row {number}", f"unreadable CSV row: {exc}")
            continue
        yield number, row


def _missing_columns_reason(missing: list[str]) -> str:
    wanted = "; ".join(f"{name}: {' | '.join(_COLUMNS[name])}" for name in missing)
    return f"manifest lacks required column(s) ({wanted})"


def _resolve_video(raw: str, base: Path) -> str:
    path = Path(raw).expanduser()
    return os.path.abspath(path if path.is_absolute() else base / path)


def _parse_span(start_value: Any, end_value: Any) -> tuple[float, float]:
    """(start, end) in seconds; raises ValueError with the reason."""
    try:
        start = parse_timestamp(start_value)
    except TranscriptError as exc:
        raise ValueError(f"bad start time: {exc}") from None
    try:
        end = parse_timestamp(end_value)
    except TranscriptError as exc:
        raise ValueError(f"bad end time: {exc}") from None
    if end <= start:
        raise ValueError(f"end ({_seconds(end)} s) is not after start ({_seconds(start)} s)")
    return start, end


@dataclass
class _Group:
    video_id: str | None
    clips: list[ClipRequest]
    rows: int
    written: str  # the video path as the manifest wrote it


def _discover_manifest(
    path: Path, rows: Iterator[tuple[int, Any]], video_root: str | None, problems: _Problems, limits: LimitsConfig
) -> list[VideoJob]:
    base = Path(video_root).expanduser() if video_root else path.parent
    groups: dict[str, _Group] = {}
    any_rows = False
    for number, record in rows:
        any_rows = True
        where = f"{path} row {number}"
        if not isinstance(record, dict):
            problems.add(where, "row is not an object with video, start, end and text")
            continue
        row = {str(key).strip().lower(): value for key, value in record.items()}
        missing = [name for name in _REQUIRED if _field(row, name) is None]
        if missing:
            problems.add(where, f"missing {', '.join(missing)}")
            continue
        try:
            start, end = _parse_span(_field(row, "start"), _field(row, "end"))
        except ValueError as exc:
            problems.add(where, str(exc))
            continue
        text = _field(row, "text")
        if not isinstance(text, str):
            problems.add(where, f"text must be a string, got {type(text).__name__}")
            continue
        video = _field(row, "video")
        if not isinstance(video, str):
            problems.add(where, f"video path must be a string, got {type(video).__name__}")
            continue
        clip_id = _field(row, "clip_id")
        video_id = _field(row, "video_id")
        try:
            resolved = _resolve_video(video, base)
        except (ValueError, RuntimeError) as exc:  # a NUL byte in the path, an unknown ~user
            problems.add(where, f"unusable video path: {exc}")
            continue
        group = groups.setdefault(resolved, _Group(None, [], 0, video))
        if group.video_id is None and video_id is not None:
            group.video_id = str(video_id).strip()
        clip_id = None if clip_id is None else str(clip_id).strip()
        group.clips.append(ClipRequest(start, end, _caption(text), clip_id))
        group.rows += 1
    if not any_rows:
        problems.add(path, "manifest has no rows")
    jobs = []
    for video_path, group in groups.items():
        reason = _video_problem(video_path, limits)
        if reason is not None:
            problems.add(video_path, f"{reason} (used by {group.rows} row(s) of {path.name})")
            continue
        jobs.append(
            VideoJob(
                video_path=video_path,
                video_id=group.video_id or Path(video_path).stem,
                clips=sorted(group.clips, key=lambda clip: (clip.start, clip.end)),
                transcript_source="manifest",
                source=_relative_source(video_path, base, group.written),
            )
        )
    return jobs


# ---------------------------------------------------------------------------------------------- HD-VILA-100M

class _ClipTexts:
    """The optional clip_text sidecar ({"clip_id", "text"} per line), read once on first use."""

    def __init__(self, path: str | None, problems: _Problems, limits: LimitsConfig):
        self.path = path
        self.problems = problems
        self.limits = limits
        self._texts: dict[str, str] | None = None

    def get(self, clip_id: str | None) -> str | None:
        if self.path is None or clip_id is None:
            return None
        if self._texts is None:
            self._texts = self._load()
        return self._texts.get(clip_id)

    def _load(self) -> dict[str, str]:
        path = Path(self.path).expanduser()
        if not path.exists():
            self.problems.add(path, "clip_text file not found")
            return {}
        text = _read_text(path, self.problems, self.limits)
        if text is None:
            return {}
        texts: dict[str, str] = {}
        for row, record in _jsonl_records(path, text, self.problems):
            if not isinstance(record, dict):
                record = {}
            clip_id = record.get("clip_id")
            caption = _field({str(key).lower(): value for key, value in record.items()}, "text")
            if _blank(clip_id) or not isinstance(caption, str):
                self.problems.add(f"{path} row {row}", "expected an object with clip_id and text")
                continue
            texts[str(clip_id)] = _caption(caption)
        return texts


def _id_leaves_root(video_id: str) -> bool:
    """An id names a file under video_root: no absolute path, no '..', no NUL, no backslash or drive."""
    if "\x00" in video_id or "\\" in video_id or video_id.startswith(("/", "~")) or ":" in video_id[:2]:
        return True
    normal = posixpath.normpath(video_id)
    return normal == ".." or normal.startswith("../") or ".." in video_id.split("/")


def _find_video(root: Path, video_id: str) -> Path | None:
    for ext in VIDEO_EXTENSIONS:
        for candidate in (root / f"{video_id}{ext}", root / f"{video_id}{ext.upper()}"):
            if candidate.exists():  # a FIFO or device is found here and reported by the caller
                return candidate
    return None


def _discover_hdvila(
    path: Path, rows: Iterator[tuple[int, Any]], video_root: str | None, clip_texts: _ClipTexts, problems: _Problems,
    limits: LimitsConfig,
) -> list[VideoJob]:
    root = Path(video_root).expanduser() if video_root else path.parent
    entries_by_video: dict[str, list[tuple[str, Any]]] = {}
    for number, record in rows:
        where = f"{path} row {number}"
        video_id = record.get("video_id") if isinstance(record, dict) else None
        if _blank(video_id) or not isinstance(video_id, str):
            problems.add(where, "missing video_id")
            continue
        clips = record.get("clip")
        if not isinstance(clips, list):
            problems.add(where, "'clip' must be a list of {clip_id, span}")
            continue
        if _id_leaves_root(video_id.strip()):
            problems.add(where, f"video_id {short_repr(video_id)} names a file outside the video root; refused")
            continue
        entries = entries_by_video.setdefault(video_id.strip(), [])
        entries.extend((f"{where} clip {k}", entry) for k, entry in enumerate(clips, start=1))
    jobs = []
    for video_id, entries in entries_by_video.items():
        try:
            video = _find_video(root, video_id)
        except (OSError, ValueError) as exc:  # a name too long for the file system, say
            problems.add(video_id[:200], f"cannot look for the video file: {exc.strerror or exc}"
                         if isinstance(exc, OSError) else f"cannot look for the video file: {exc}")
            continue
        if video is None:
            problems.add(
                video_id,
                f"video file not found: looked for {root / video_id}{{{','.join(VIDEO_EXTENSIONS)}}}",
            )
            continue
        reason = _video_problem(video, limits)
        if reason is not None:
            problems.add(video, reason)
            continue
        clips = []
        for where, entry in entries:
            if not isinstance(entry, dict):
                problems.add(where, "clip entry must be an object with clip_id and span")
                continue
            clip_id = None if _blank(entry.get("clip_id")) else str(entry["clip_id"]).strip()
            label = clip_id or where
            span = entry.get("span")
            if not isinstance(span, (list, tuple)) or len(span) != 2:
                problems.add(label, "span must be [start, end]")
                continue
            try:
                start, end = _parse_span(*span)
            except ValueError as exc:
                problems.add(label, str(exc))
                continue
            text = entry.get("text")
            text = _caption(text) if isinstance(text, str) else ""
            text = text or clip_texts.get(clip_id) or ""
            if not text:
                problems.add(label, "no text for this clip (no 'text' key and no entry in the clip_text file)")
                continue
            clips.append(ClipRequest(start, end, text, clip_id))
        if clips:
            jobs.append(
                VideoJob(
                    video_path=os.path.abspath(video),
                    video_id=video_id,
                    clips=sorted(clips, key=lambda clip: (clip.start, clip.end)),
                    transcript_source="hdvila100m",
                    source=_relative_source(os.path.abspath(video), root),
                )
            )
    return jobs


def _is_hdvila(text: str) -> bool:
    """HD-VILA-100M lines carry a "clip" list; look at the first line that parses."""
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue
        return isinstance(record, dict) and "clip" in record
    return False


# ---------------------------------------------------------------------------------------------- entry points

def discover_inputs(
    inputs: list[str], video_root: str | None = None, clip_text: str | None = None,
    limits: LimitsConfig | None = None,
) -> tuple[list[VideoJob], list[InputProblem]]:
    """Jobs for every usable video in `inputs` (folders, manifests, HD-VILA-100M JSONL), plus problems.

    Any error while reading one input, of any type, becomes a problem of that input; the others go on.
    """
    limits = limits or LimitsConfig()
    problems = _Problems()
    clip_texts = _ClipTexts(clip_text, problems, limits)
    jobs: list[VideoJob] = []
    for raw in inputs:
        found: list[VideoJob] = []
        try:
            _discover_one(raw, video_root, clip_texts, problems, limits, found)
        except Exception as exc:  # a bug or an input nobody foresaw: report it, keep the other inputs
            problems.add(raw, f"cannot read this input: {type(exc).__name__}: {exc}")
            continue
        jobs.extend(found)
    return _unique_ids(jobs, problems), list(problems)


def _discover_one(raw: str, video_root: str | None, clip_texts: _ClipTexts, problems: _Problems,
                  limits: LimitsConfig, jobs: list[VideoJob]) -> None:
    path = Path(raw).expanduser()
    suffix = path.suffix.lower()
    if not path.exists():
        problems.add(raw, "input does not exist")
    elif path.is_dir():
        jobs.extend(_discover_folder(path, problems, limits))
    elif _is_video(path):  # a single video: same as a folder holding only it
        transcript = dict(pair_videos(os.listdir(path.parent))).get(path.name)
        job = _transcript_job(path, path.stem, transcript, path.parent, problems, limits)
        if job is not None:
            jobs.append(job)
    elif suffix in MANIFEST_EXTENSIONS:
        text = _read_text(path, problems, limits) if suffix != ".parquet" else None
        if suffix != ".parquet" and text is None:
            return
        if suffix == ".jsonl" and _is_hdvila(text):
            records = _jsonl_records(path, text, problems)
            jobs.extend(_discover_hdvila(path, records, video_root, clip_texts, problems, limits))
        else:
            rows = _manifest_rows(path, problems, limits, text)
            if rows is not None:
                jobs.extend(_discover_manifest(path, rows, video_root, problems, limits))
    else:
        problems.add(
            raw, "unsupported input: expected a folder, a video file, or a .jsonl, .csv or .parquet manifest"
        )


def _unique_ids(jobs: list[VideoJob], problems: _Problems) -> list[VideoJob]:
    """Clip ids derive from video ids, so two different videos must never share one."""
    owner: dict[str, str] = {}
    seen_paths: set[str] = set()
    unique = []
    for job in jobs:
        if job.video_path in seen_paths:
            problems.add(job.video_path, "video already listed by an earlier input; skipped this one")
            continue
        if job.video_id in owner:
            # same name in two inputs: suffix a hash of the path so the id stays stable across runs
            digest = hashlib.sha1(job.video_path.encode("utf-8")).hexdigest()[:8]
            job.video_id = f"{job.video_id}-{digest}"
        owner[job.video_id] = job.video_path
        seen_paths.add(job.video_path)
        unique.append(job)
    return unique


def plan_clips(
    job: VideoJob, info_duration: float, cfg: SentenceConfig, limits: LimitsConfig | None = None
) -> tuple[list[ClipRequest], list[InputProblem]]:
    """Final spans of a job for a video of `info_duration` seconds, each with a clip_id, plus problems."""
    limits = limits or LimitsConfig()
    problems = _Problems()
    if not info_duration or not math.isfinite(info_duration) or info_duration <= 0:
        problems.add(job.video_path, f"video duration {info_duration!r} is not positive", stage="plan")
        return [], list(problems)
    planned: list[tuple[int, ClipRequest]] = []
    if job.clips is not None:
        for index, clip in enumerate(job.clips):
            label = clip.clip_id or f"{job.video_id}_{index:04d}"
            span = f"span [{_seconds(clip.start)}, {_seconds(clip.end)}]"
            if clip.end <= clip.start:
                problems.add(label, f"{span} does not end after it starts", stage="plan")
            elif clip.end <= 0 or clip.start >= info_duration:
                problems.add(label, f"{span} is outside the video (duration {_seconds(info_duration)} s)", stage="plan")
            else:
                start, end = max(clip.start, 0.0), min(clip.end, info_duration)
                if end - start < MIN_CLIP_SECONDS:
                    problems.add(
                        label,
                        f"{span} is shorter than {MIN_CLIP_SECONDS} s once clipped to the video "
                        f"(duration {_seconds(info_duration)} s)",
                        stage="plan",
                    )
                else:
                    planned.append((index, ClipRequest(start, end, clip.text, clip.clip_id)))
    elif job.transcript_path is not None:
        try:
            cues = read_transcript(job.transcript_path, max_bytes=limits.max_transcript_bytes)
        except TranscriptError as exc:
            problems.add(job.transcript_path, str(exc), stage="transcript")
            return [], list(problems)
        sentences = cues_to_sentences(cues, cfg, video_duration=info_duration)
        if not sentences:
            problems.add(
                job.transcript_path,
                f"no sentence spans fall inside the video (duration {_seconds(info_duration)} s)",
                stage="transcript",
            )
        planned = [(i, ClipRequest(s.start, s.end, s.text)) for i, s in enumerate(sentences)]
    else:
        problems.add(job.video_path, "job has neither a transcript nor explicit clips", stage="plan")

    clips: list[ClipRequest] = []
    used: set[str] = set()
    for index, clip in planned:
        clip_id = clip.clip_id or f"{job.video_id}_{index:04d}"
        if clip_id in used:  # ids name output files; a repeat would overwrite a clip
            problems.add(clip_id, "duplicate clip id in this video; kept the first", stage="plan")
            continue
        used.add(clip_id)
        clips.append(ClipRequest(clip.start, clip.end, clip.text, clip_id))
    return clips, list(problems)
