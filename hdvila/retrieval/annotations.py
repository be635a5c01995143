"""Readers for the annotation files of the standard text-to-video retrieval benchmarks.

    ann = read_annotations("msrvtt", "MSRVTT_JSFUSION_test.csv")          # 1k-A test: 1000 captions
    ann = read_annotations("msrvtt", "MSRVTT_data.json", split="train", video_list="MSRVTT_train.9k.csv")
    ann = read_annotations("didemo", "test_data.json")                    # one paragraph per video
    ann = read_annotations("activitynet", ["val_1.json"], split="val1")   # paragraphs too
    ann = read_annotations("lsmdc", "LSMDC16_challenge_1000_publictect.csv")
    report = write_build_manifest(ann, "videos/", "manifest.jsonl")       # then: hdvila data build manifest.jsonl

Each reader turns one file into `SentenceRecord`s; `read_annotations` then cleans the text, joins a
video's sentences into one paragraph where asked, and builds a `RetrievalAnnotations`. Captions are grouped
by video (videos in first-appearance order, a video's captions in file order).
"""
from __future__ import annotations

import csv
import inspect
import io
import json
import math
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_tools.ingest.sources import MIN_CLIP_SECONDS
from data_tools.files import TextFileError, atomic_open, read_utf8_text
from data_tools.media import VIDEO_EXTENSIONS
from data_tools.logs import get_logger
from data_tools.media.probe import ProbeError, probe_video

__all__ = [
    "AnnotationError",
    "RetrievalAnnotations",
    "SentenceRecord",
    "READERS",
    "read_annotations",
    "video_file_index",
    "write_build_manifest",
]

log = get_logger(__name__)

PARAGRAPH_DATASETS = ("didemo", "activitynet")  # their benchmarks query with a whole video's description
MSRVTT_VIDEO_SPLITS = ("train", "validate", "test")
JSONL_ID_KEYS = ("video_id", "clip_name", "video", "clip_id")
JSONL_TEXT_KEYS = ("caption", "text", "sentence", "sentences")


class AnnotationError(ValueError):
    """An annotation file is unreadable or not in the expected layout; the message names the file."""


@dataclass
class RetrievalAnnotations:
    dataset: str
    split: str
    video_ids: list[str]  # unique, in first-appearance order
    captions: list[str]  # one query text per entry (a sentence, or a paragraph)
    caption_video: list[int]  # for each caption, the index into video_ids of its video

    def __post_init__(self) -> None:
        if len(self.captions) != len(self.caption_video):
            raise ValueError(f"{len(self.captions)} captions but {len(self.caption_video)} caption_video entries")
        if len(set(self.video_ids)) != len(self.video_ids):
            raise ValueError("video_ids must be unique")
        out_of_range = [i for i in self.caption_video if not 0 <= i < len(self.video_ids)]
        if out_of_range:
            raise ValueError(f"caption_video holds {out_of_range[0]}, outside 0..{len(self.video_ids) - 1}")

    def __len__(self) -> int:
        return len(self.captions)

    def captions_of(self, video_id: str) -> list[str]:
        try:
            index = self.video_ids.index(video_id)
        except ValueError:
            raise KeyError(f"video {video_id!r} is not in these {self.dataset} annotations") from None
        return [text for text, video in zip(self.captions, self.caption_video) if video == index]

    def positives_t2v(self) -> list[list[int]]:
        """Per caption: the gallery index of its video (the `positives` of text-to-video metrics)."""
        return [[video] for video in self.caption_video]

    def positives_v2t(self) -> list[list[int]]:
        """Per video: the indices of its captions (the `positives` of video-to-text metrics)."""
        positives: list[list[int]] = [[] for _ in self.video_ids]
        for caption_index, video_index in enumerate(self.caption_video):
            positives[video_index].append(caption_index)
        return positives

    def subset(self, video_ids: Iterable[str]) -> RetrievalAnnotations:
        """Only these videos (kept in this object's order) and their captions; unknown ids are a KeyError."""
        if isinstance(video_ids, str):  # a lone id would otherwise be read character by character
            raise TypeError("subset() takes a collection of video ids, not one string")
        wanted = set(video_ids)
        unknown = sorted(wanted.difference(self.video_ids))
        if unknown:
            raise KeyError(f"{len(unknown)} video id(s) not in these {self.dataset} annotations, e.g. {unknown[:3]}")
        return self._keep(wanted)

    def summary(self) -> dict:
        per_video = [len(captions) for captions in self.positives_v2t()]
        return {
            "dataset": self.dataset,
            "split": self.split,
            "videos": len(self.video_ids),
            "captions": len(self.captions),
            "captions_per_video_min": min(per_video, default=0),
            "captions_per_video_mean": sum(per_video) / len(per_video) if per_video else 0.0,
            "captions_per_video_max": max(per_video, default=0),
        }

    def _keep(self, wanted: set[str]) -> RetrievalAnnotations:
        new_index: dict[int, int] = {}
        for old_index, video_id in enumerate(self.video_ids):
            if video_id in wanted:
                new_index[old_index] = len(new_index)
        kept = [(text, new_index[video])
                for text, video in zip(self.captions, self.caption_video) if video in new_index]
        return RetrievalAnnotations(
            dataset=self.dataset,
            split=self.split,
            video_ids=[self.video_ids[old] for old in new_index],
            captions=[text for text, _ in kept],
            caption_video=[video for _, video in kept],
        )


@dataclass
class SentenceRecord:
    """One sentence as a reader found it, before cleaning and paragraph joining."""

    video_id: str
    text: str
    start: float = 0.0  # seconds or segment index; orders a video's sentences within a paragraph


# ---------------------------------------------------------------------------------------------- file helpers

def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string"}.get(type(value), type(value).__name__)


def _read_text(path: Path) -> str:
    try:
        return read_utf8_text(path)
    except TextFileError as exc:
        raise AnnotationError(str(exc)) from None


def _jsonl_objects(path: Path, text: str) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line."""
    records = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AnnotationError(f"{path}, line {line_number}: invalid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise AnnotationError(f"{path}, line {line_number}: expected a JSON object, got {_kind(record)}")
        records.append((line_number, record))
    return records


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def _json_or_jsonl(path: Path, text: str) -> tuple[str, Any]:
    """("json", parsed document) or ("jsonl", [(line, object), ...]): by extension, then by content."""
    if path.suffix.lower() == ".jsonl":
        return "jsonl", _jsonl_objects(path, text)
    try:
        return "json", json.loads(text)
    except json.JSONDecodeError as exc:
        first_line = next((line for line in text.splitlines() if line.strip()), "")
        if _is_json_object(first_line):  # JSON lines saved under a .json name
            return "jsonl", _jsonl_objects(path, text)
        raise AnnotationError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno} ({exc.msg})") from None


def _csv_rows(path: Path, text: str) -> csv.DictReader:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames:
        reader.fieldnames = [name.strip() for name in reader.fieldnames]
    return reader


def _video_id(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise AnnotationError(f"{where}: video id must be a non-empty string, got {value!r}")
    return str(value).strip()


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise AnnotationError(f"{where}: caption must be a string, got {_kind(value)}")
    return value


def _texts(value: Any, where: str) -> list[str]:
    if isinstance(value, list):
        return [_text(item, f"{where}, text[{k}]") for k, item in enumerate(value)]
    return [_text(value, where)]


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise AnnotationError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _span_start(span: Any, where: str) -> float:
    if not isinstance(span, list) or len(span) != 2:
        raise AnnotationError(f"{where}: expected a [start, end] pair, got {span!r}")
    _number(span[1], where)
    return _number(span[0], where)


# ---------------------------------------------------------------------------------------------- readers

def read_jsonl(path: Path) -> list[SentenceRecord]:
    """Generic JSON lines: an id under video_id | clip_name | video | clip_id, text under
    caption | text | sentence | sentences (a string or a list of strings)."""
    return _sentences_from_jsonl(path, _jsonl_objects(path, _read_text(path)))


def _sentences_from_jsonl(path: Path, records: list[tuple[int, dict]]) -> list[SentenceRecord]:
    sentences = []
    for line_number, record in records:
        where = f"{path}, line {line_number}"
        id_key = next((key for key in JSONL_ID_KEYS if record.get(key) is not None), None)
        text_key = next((key for key in JSONL_TEXT_KEYS if record.get(key) is not None), None)
        if id_key is None or text_key is None:
            wanted = f"an id ({' | '.join(JSONL_ID_KEYS)}) and a text ({' | '.join(JSONL_TEXT_KEYS)})"
            raise AnnotationError(f"{where}: expected {wanted}; found keys {sorted(record)}")
        video_id = _video_id(record[id_key], where)
        sentences.extend(SentenceRecord(video_id, text) for text in _texts(record[text_key], where))
    return sentences


def read_msrvtt(path: Path, *, video_split: str | None = None) -> list[SentenceRecord]:
    """MSR-VTT: the data json (MSRVTT_data.json, *_videodatainfo.json), the JSFusion 1k-A test CSV, or
    HD-VILA's JSONL. `video_split` ("train" | "validate" | "test") keeps the data json's videos of that split."""
    if video_split not in (None, *MSRVTT_VIDEO_SPLITS):
        choices = ", ".join(MSRVTT_VIDEO_SPLITS)
        raise AnnotationError(f"video_split must be one of {choices} or None, got {video_split!r}")
    text = _read_text(path)
    if path.suffix.lower() == ".csv":
        kind, content = "csv", None
    else:
        kind, content = _json_or_jsonl(path, text)
    if video_split is not None and kind != "json":
        raise AnnotationError(f"{path}: video_split needs the MSR-VTT data json; a {kind} file has no split per video")
    if kind == "csv":
        return _read_msrvtt_csv(path, text)
    if kind == "jsonl":
        return _sentences_from_jsonl(path, content)
    return _read_msrvtt_json(path, content, video_split)


def _read_msrvtt_csv(path: Path, text: str) -> list[SentenceRecord]:
    reader = _csv_rows(path, text)
    columns = reader.fieldnames or []
    if "video_id" not in columns or "sentence" not in columns:
        hint = ""
        if columns == ["video_id"]:
            hint = ("; this looks like a video list (e.g. MSRVTT_train.9k.csv): "
                    "pass it as video_list= with MSRVTT_data.json")
        raise AnnotationError(
            f"{path}: expected the JSFusion test CSV with columns key,vid_key,video_id,sentence; found {columns}{hint}"
        )
    sentences = []
    for row in reader:
        where = f"{path}, line {reader.line_num}"
        if row.get("sentence") is None:
            raise AnnotationError(f"{where}: row has fewer columns than the header")
        sentences.append(SentenceRecord(_video_id(row["video_id"], where), row["sentence"]))
    return sentences


def _read_msrvtt_json(path: Path, data: Any, video_split: str | None) -> list[SentenceRecord]:
    if not (isinstance(data, dict) and isinstance(data.get("videos"), list) and isinstance(data.get("sentences"), list)):
        found = f"keys {sorted(data)}" if isinstance(data, dict) else _kind(data)
        raise AnnotationError(
            f"{path}: expected the MSR-VTT data json, an object with 'videos' and 'sentences' lists; found {found}"
        )
    position: dict[str, int] = {}  # videos-list order, which is the order users know (video0, video1, ...)
    split_of: dict[str, Any] = {}
    for i, video in enumerate(data["videos"]):
        where = f"{path}, videos[{i}]"
        if not isinstance(video, dict) or "video_id" not in video:
            raise AnnotationError(f"{where}: expected an object with a video_id")
        video_id = _video_id(video["video_id"], where)
        if video_split is not None and "split" not in video:
            raise AnnotationError(f"{where}: no 'split', so video_split={video_split!r} cannot be applied")
        position.setdefault(video_id, i)
        split_of[video_id] = video.get("split")
    sentences = []
    for i, entry in enumerate(data["sentences"]):
        where = f"{path}, sentences[{i}]"
        if not isinstance(entry, dict) or "video_id" not in entry or "caption" not in entry:
            raise AnnotationError(f"{where}: expected an object with video_id and caption")
        video_id = _video_id(entry["video_id"], where)
        if video_id not in position:
            raise AnnotationError(f"{where}: video {video_id!r} is not listed under 'videos'")
        if video_split is None or split_of[video_id] == video_split:
            sentences.append(SentenceRecord(video_id, _text(entry["caption"], where)))
    sentences.sort(key=lambda sentence: position[sentence.video_id])  # stable: captions keep file order
    return sentences


def read_didemo(path: Path) -> list[SentenceRecord]:
    """DiDeMo as in the collaborative-experts split files (a list of {description, video, times}), or
    HD-VILA's JSONL. A sentence's start is its earliest 5-second segment over the annotators' `times`."""
    kind, content = _json_or_jsonl(path, _read_text(path))
    if kind == "jsonl":
        return _sentences_from_jsonl(path, content)
    if not isinstance(content, list):
        raise AnnotationError(
            f"{path}: expected a JSON list of {{description, video, times}} entries, got {_kind(content)}"
        )
    sentences = []
    for i, entry in enumerate(content):
        where = f"{path}, entry {i}"
        if not isinstance(entry, dict):
            raise AnnotationError(f"{where}: expected an object, got {_kind(entry)}")
        if "annotation_id" in entry:
            where += f" (annotation_id {entry['annotation_id']})"
        missing = [key for key in ("description", "video", "times") if key not in entry]
        if missing:
            raise AnnotationError(f"{where}: missing {', '.join(missing)}")
        video_id = os.path.splitext(_video_id(entry["video"], where))[0]
        times = entry["times"]
        if not isinstance(times, list) or not times:
            raise AnnotationError(f"{where}: 'times' must be a non-empty list of [start, end] segment pairs")
        start = min(_span_start(span, f"{where}, times[{k}]") for k, span in enumerate(times))
        sentences.append(SentenceRecord(video_id, _text(entry["description"], where), start))
    return sentences


def read_activitynet(path: Path) -> list[SentenceRecord]:
    """ActivityNet Captions ({video key: {duration, timestamps, sentences}}), or HD-VILA's JSONL."""
    kind, content = _json_or_jsonl(path, _read_text(path))
    if kind == "jsonl":
        return _sentences_from_jsonl(path, content)
    if not isinstance(content, dict):
        raise AnnotationError(f"{path}: expected a JSON object keyed by video id, got {_kind(content)}")
    sentences = []
    for key, entry in content.items():
        where = f"{path}, key {key!r}"
        if not isinstance(entry, dict):
            raise AnnotationError(f"{where}: expected an object with timestamps and sentences, got {_kind(entry)}")
        timestamps, texts = entry.get("timestamps"), entry.get("sentences")
        if not isinstance(timestamps, list) or not isinstance(texts, list):
            raise AnnotationError(f"{where}: needs 'timestamps' and 'sentences' lists")
        if len(timestamps) != len(texts):
            raise AnnotationError(f"{where}: {len(timestamps)} timestamps but {len(texts)} sentences")
        video_id = _video_id(key, where)
        for k, (span, text) in enumerate(zip(timestamps, texts)):
            start = _span_start(span, f"{where}, timestamps[{k}]")
            sentences.append(SentenceRecord(video_id, _text(text, f"{where}, sentences[{k}]"), start))
    return sentences


def read_lsmdc(path: Path) -> list[SentenceRecord]:
    """LSMDC: tab-separated, no header: clip id, start/end aligned, start/end extracted, sentence."""
    sentences = []
    for line_number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        where = f"{path}, line {line_number}"
        if len(fields) < 6:
            raise AnnotationError(
                f"{where}: expected 6 tab-separated columns (clip id, 4 times, sentence), found {len(fields)}"
            )
        # Some rows of the real files have stray tabs inside the sentence: it runs to the end of the line.
        sentences.append(SentenceRecord(_video_id(fields[0], where), "\t".join(fields[5:])))
    return sentences


READERS: dict[str, Callable[..., list[SentenceRecord]]] = {
    "msrvtt": read_msrvtt,
    "didemo": read_didemo,
    "activitynet": read_activitynet,
    "lsmdc": read_lsmdc,
    "jsonl": read_jsonl,
}


# ---------------------------------------------------------------------------------------------- entry point

def read_annotations(dataset: str, path: str | Path | list, split: str = "test", paragraph: bool | None = None,
                     **options) -> RetrievalAnnotations:
    """Read one or more annotation files of `dataset` (a key of READERS).

    paragraph=None follows the dataset's convention: one paragraph query per video for didemo and
    activitynet (sentences in temporal order), one query per sentence otherwise. Options: `video_list`
    (any dataset: a CSV with a video_id column, a text file with one id per line, or a list) keeps only
    the listed videos; the msrvtt reader also takes `video_split`.
    """
    name = str(dataset).lower()
    reader = READERS.get(name)
    if reader is None:
        raise AnnotationError(f"unknown dataset {dataset!r}; known: {', '.join(READERS)}")
    video_list = options.pop("video_list", None)
    _check_options(name, reader, options)
    paths = _as_paths(path)
    label = ", ".join(str(p) for p in paths)
    records = [record for p in paths for record in reader(p, **options)]
    if paragraph is None:
        paragraph = name in PARAGRAPH_DATASETS
    annotations = _assemble(name, split, records, paragraph)
    if not annotations.captions:
        used = f" (options: {options})" if options else ""
        raise AnnotationError(f"{label}: no captions found{used}")
    if video_list is not None:
        annotations = _keep_listed(annotations, _read_video_list(video_list), label)
    return annotations


def _check_options(dataset: str, reader: Callable, options: dict) -> None:
    accepted = [name for name, p in inspect.signature(reader).parameters.items() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options).difference(accepted))
    if unknown:
        raise AnnotationError(
            f"option(s) {', '.join(unknown)} not understood by the {dataset} reader; it accepts: "
            f"{', '.join(['video_list', *accepted])}"
        )


def _as_paths(path: str | Path | list) -> list[Path]:
    items = list(path) if isinstance(path, (list, tuple)) else [path]
    if not items:
        raise AnnotationError("no annotation file given")
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise AnnotationError(f"annotation paths must be strings or Paths, got {item!r}")
    return [Path(item).expanduser() for item in items]


def _assemble(dataset: str, split: str, records: list[SentenceRecord], paragraph: bool) -> RetrievalAnnotations:
    by_video: dict[str, list[SentenceRecord]] = {}
    for record in records:
        text = " ".join(record.text.split())
        if text:
            by_video.setdefault(record.video_id, []).append(SentenceRecord(record.video_id, text, record.start))
    captions: list[str] = []
    caption_video: list[int] = []
    for index, sentences in enumerate(by_video.values()):
        if paragraph:
            ordered = sorted(sentences, key=lambda sentence: sentence.start)  # stable: ties keep file order
            captions.append(" ".join(sentence.text for sentence in ordered))
            caption_video.append(index)
        else:
            captions.extend(sentence.text for sentence in sentences)
            caption_video.extend([index] * len(sentences))
    return RetrievalAnnotations(dataset, split, list(by_video), captions, caption_video)


def _read_video_list(video_list: Any) -> list[str]:
    if isinstance(video_list, (str, os.PathLike)):
        path = Path(video_list).expanduser()
        text = _read_text(path)
        if path.suffix.lower() == ".csv":
            reader = _csv_rows(path, text)
            if "video_id" not in (reader.fieldnames or []):
                raise AnnotationError(f"{path}: a video list CSV needs a video_id column; found {reader.fieldnames}")
            ids = [row["video_id"].strip() for row in reader if (row.get("video_id") or "").strip()]
        else:
            ids = [line.strip() for line in text.splitlines() if line.strip()]
        if not ids:
            raise AnnotationError(f"{path}: the video list is empty")
        return ids
    if isinstance(video_list, Iterable):
        return [str(video_id).strip() for video_id in video_list]
    raise AnnotationError(f"video_list must be a path or a list of video ids, got {type(video_list).__name__}")


def _keep_listed(annotations: RetrievalAnnotations, ids: list[str], label: str) -> RetrievalAnnotations:
    listed = set(ids)
    unknown = sorted(listed.difference(annotations.video_ids))
    if unknown:  # normal for lists defined across splits (the 9k list spans train, validate and test)
        log.warning("%d of %d ids in video_list are not in %s (e.g. %s)", len(unknown), len(listed), label, unknown[:3])
    kept = annotations._keep(listed)
    if not kept.captions:
        raise AnnotationError(f"{label}: none of the {len(listed)} videos in video_list has a caption here")
    return kept


# ---------------------------------------------------------------------------------------------- build manifest

def video_file_index(video_dir: str | Path, extensions: Iterable[str] = VIDEO_EXTENSIONS) -> dict[str, Path]:
    """File stem -> path of every video under `video_dir`, searched recursively (LSMDC keeps per-movie
    folders). When a stem repeats, the first path in sorted order wins and a warning is logged."""
    root = Path(video_dir).expanduser()
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a folder of videos")
    wanted = {ext.lower() if ext.startswith(".") else f".{ext.lower()}" for ext in extensions}
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        # hidden files include macOS "._name.mp4" resource forks, which are not videos
        found.extend(Path(folder) / name for name in files
                     if not name.startswith(".") and os.path.splitext(name)[1].lower() in wanted)
    index: dict[str, Path] = {}
    repeated: list[Path] = []
    for path in sorted(found):
        # splitext drops only the last suffix, so ids with dots (LSMDC times) or '@' (DiDeMo) survive
        stem = os.path.splitext(path.name)[0]
        if stem in index:
            repeated.append(path)
        else:
            index[stem] = path
    if repeated:
        log.warning("%d video file(s) under %s repeat an earlier file's name and were ignored (e.g. %s, keeping %s)",
                    len(repeated), root, repeated[0], index[os.path.splitext(repeated[0].name)[0]])
    return index


def write_build_manifest(ann: RetrievalAnnotations, video_dir: str | Path, out_path: str | Path,
                         probe: Callable[[Path], Any] | None = None) -> dict:
    """Write a JSONL manifest for `hdvila data build`: one whole-video clip per annotated video found under
    `video_dir`, with clip_id = video_id = the annotation's video id and text = its first caption.

    `probe(path)` returns an object with a `duration` in seconds (default: probe_video); a ProbeError
    becomes an "unreadable" entry of the returned report. Raises ValueError when no video can be written.
    """
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".jsonl":
        raise ValueError(f"{out_path}: the manifest must end in .jsonl for `hdvila data build` to read it")
    probe = probe or probe_video
    files = video_file_index(video_dir)

    def locate(video_id: str) -> Path | None:
        # ActivityNet ids carry a "v_" prefix that many downloads drop from the file names
        return files.get(video_id) or (files.get(video_id[2:]) if video_id.startswith("v_") else None)

    located = {video_id: locate(video_id) for video_id in ann.video_ids}
    found = [(video_id, path) for video_id, path in located.items() if path is not None]
    missing = [video_id for video_id, path in located.items() if path is None]
    first_caption: dict[int, str] = {}
    for text, video_index in zip(ann.captions, ann.caption_video):
        first_caption.setdefault(video_index, text)
    position = {video_id: i for i, video_id in enumerate(ann.video_ids)}

    # Probing reads container headers only, so threads overlap the disk waits.
    with ThreadPoolExecutor(max_workers=8) as pool:
        durations = list(pool.map(lambda item: _probe_duration(probe, item[1]), found))
    rows, unreadable = [], []
    for (video_id, path), (duration, reason) in zip(found, durations):
        if reason is not None:
            unreadable.append({"video_id": video_id, "path": str(path), "reason": reason})
            continue
        rows.append({"video": os.path.abspath(path), "start": 0.0, "end": duration,
                     "text": first_caption[position[video_id]], "clip_id": video_id, "video_id": video_id})
    if not rows:
        details = []
        if missing:
            details.append(f"{len(missing)} not found (e.g. {', '.join(missing[:3])})")
        if unreadable:
            details.append(f"{len(unreadable)} unreadable (e.g. {unreadable[0]['path']}: {unreadable[0]['reason']})")
        raise ValueError(f"none of the {len(ann.video_ids)} annotated videos can be used from {video_dir}: "
                         + "; ".join(details))
    with atomic_open(out_path, "wb") as fh:
        for row in rows:
            fh.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
    if missing or unreadable:
        log.warning("manifest %s: %d videos written, %d not found under %s, %d unreadable",
                    out_path, len(rows), len(missing), video_dir, len(unreadable))
    return {"manifest": str(out_path), "videos_written": len(rows), "missing": missing, "unreadable": unreadable}


def _probe_duration(probe: Callable[[Path], Any], path: Path) -> tuple[float | None, str | None]:
    """(duration, None) or (None, reason)."""
    try:
        duration = float(probe(path).duration)
    except ProbeError as exc:
        return None, str(exc)
    if not math.isfinite(duration) or duration <= 0:
        return None, f"duration {duration!r} s is not positive"
    if duration < MIN_CLIP_SECONDS:  # the build drops clips this short; say so now rather than later
        return None, f"duration {duration:.3f} s is shorter than the build's minimum clip ({MIN_CLIP_SECONDS} s)"
    return duration, None
