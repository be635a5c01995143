"""ASR transcripts (SRT, WebVTT, JSON / Whisper) -> cues -> sentence-level clip spans.

`read_transcript` turns a file into time-sorted `Cue`s (every failure is a `TranscriptError` whose message
is the reason in plain words); `cues_to_sentences` turns cues into spans that suit HD-VILA clips: one
sentence each, split when too long, merged or widened when too short, clipped to the video.
"""
from __future__ import annotations

import bisect
import html
import json
import math
import numbers
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .config import LimitsConfig, SentenceConfig
from .inputs import InputFileError, read_input_bytes

__all__ = ["Cue", "TranscriptError", "parse_timestamp", "read_transcript", "cues_to_sentences",
           "format_timestamp", "format_srt", "clean_caption", "short_repr"]


@dataclass(frozen=True)
class Cue:
    start: float  # seconds
    end: float
    text: str


class TranscriptError(ValueError):
    """The transcript cannot be used; the message is a human-readable reason."""


# ---------------------------------------------------------------------------------------------- timestamps

_SECONDS_RE = re.compile(r"[0-9]+(?:[.,][0-9]+)?")
_INTEGER_RE = re.compile(r"[0-9]+")


def short_repr(value: object, limit: int = 60) -> str:
    """repr of a value from a file, cut short: a report names the bad value, it does not copy a megabyte."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def parse_timestamp(text: str | float | int) -> float:
    """Seconds from "HH:MM:SS.mmm", "HH:MM:SS,mmm", "MM:SS.mmm", "SS.mmm" or a plain number."""
    if isinstance(text, bool):  # bool is an int subclass, but True is no timestamp
        raise TranscriptError(f"invalid timestamp {short_repr(text)}")
    if isinstance(text, numbers.Real):
        try:
            value = float(text)
        except OverflowError:  # an integer beyond any float
            value = math.inf
        if not math.isfinite(value) or value < 0:
            raise TranscriptError(f"invalid timestamp {short_repr(text)}: seconds must be finite and not negative")
        return value
    if not isinstance(text, str):
        raise TranscriptError(f"invalid timestamp {short_repr(text)}: expected a string or a number")
    parts = text.strip().split(":")
    *head, last = parts
    if (
        len(parts) > 3
        or not _SECONDS_RE.fullmatch(last)
        or not all(_INTEGER_RE.fullmatch(part) for part in head)
    ):
        raise TranscriptError(f"invalid timestamp {short_repr(text)}: expected HH:MM:SS.mmm, MM:SS.mmm or seconds")
    seconds = float(last.replace(",", "."))
    if head and seconds >= 60:
        raise TranscriptError(f"invalid timestamp {short_repr(text)}: seconds field is 60 or more")
    if len(head) == 2 and int(head[1]) >= 60:
        raise TranscriptError(f"invalid timestamp {short_repr(text)}: minutes field is 60 or more")
    total = seconds
    for power, part in enumerate(reversed(head), start=1):
        total += int(part) * 60**power
    return total


# ---------------------------------------------------------------------------------------------- reading

_TAG_RE = re.compile(r"<[^>]*>")  # <c>, <i>, <v Speaker>, <00:00:01.000> karaoke timestamps
_ASS_OVERRIDE_RE = re.compile(r"\{\\[^}]*\}")  # {\an8} left in SRTs converted from ASS
_INVISIBLE_RE = re.compile("[\u200b-\u200f\u202a-\u202e\u2060\ufeff]")  # &lrm; etc. after unescaping
# a line that starts like a timing line but has no "-->" (e.g. "00:00:01,000 -> 00:00:02,000")
_TIMING_LIKE_RE = re.compile(r"^\s*\d+:\d{2}(?::\d{2})?(?:[.,]\d+)?\s*(?:-|–|>|$)")
# terminal escape sequences (CSI, OSC, other ESC sequences, 7- and 8-bit forms), then any C0/C1 control left
_ESCAPE_SEQUENCE_RE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor moves, clear screen
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d-\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # OSC/DCS/PM/APC .. ST
    r"|\x1b[ -/]*[0-~]?"  # any other ESC sequence
)
_CONTROL_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0 and C1 but newline and tab
_VTT_SKIPPED_BLOCKS = ("NOTE", "STYLE", "REGION")
_ROLLING_MAX_GAP = 1.0  # s; rolling captions follow each other without a pause


def clean_caption(text: str) -> str:
    """`text` without terminal escape sequences and C0/C1 control characters (newline and tab stay)."""
    return _CONTROL_RE.sub("", _ESCAPE_SEQUENCE_RE.sub("", text))


def _clean_text(lines: list[str]) -> str:
    text = " ".join(line.strip() for line in lines)
    text = _ASS_OVERRIDE_RE.sub("", _TAG_RE.sub("", clean_caption(text)))
    text = _INVISIBLE_RE.sub("", clean_caption(html.unescape(text)))  # &#27; unescapes to ESC
    return " ".join(text.split())


def _decode(data: bytes) -> str:
    bom = data.startswith(b"\xef\xbb\xbf")
    try:
        text = data[3:].decode("utf-8") if bom else data.decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = exc.start + (3 if bom else 0)
        hint = ""
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            hint = " (the file looks like UTF-16; re-save it as UTF-8)"
        raise TranscriptError(
            f"not valid UTF-8: first bad byte 0x{data[offset]:02x} at byte offset {offset}{hint}"
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _blocks(text: str) -> list[tuple[int, list[str]]]:
    """Blank-line separated blocks as (line number of their first line, lines)."""
    blocks: list[tuple[int, list[str]]] = []
    current: list[str] = []
    first = 0
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            if not current:
                first = number
            current.append(line.rstrip())
        elif current:
            blocks.append((first, current))
            current = []
    if current:
        blocks.append((first, current))
    return blocks


def _parse_timing(line: str, line_number: int, cue_number: int) -> tuple[float, float]:
    left, _, right = line.partition("-->")
    start_text = left.strip()
    end_fields = right.split()  # WebVTT cue settings and SRT coordinates follow the end time
    where = f"line {line_number} (cue {cue_number})"
    if not start_text or not end_fields:
        raise TranscriptError(f"{where}: malformed timing line {short_repr(line.strip())}, expected 'start --> end'")
    try:
        start = parse_timestamp(start_text)
        end = parse_timestamp(end_fields[0])
    except TranscriptError as exc:
        raise TranscriptError(f"{where}: malformed timestamp: {exc}") from None
    if end < start:
        raise TranscriptError(f"{where}: end {end_fields[0]} is before start {start_text}")
    return start, end


@dataclass
class _RawCue:
    start: float
    end: float
    lines: list[str]


def _parse_timed_blocks(blocks: list[tuple[int, list[str]]], vtt: bool) -> list[_RawCue]:
    cues: list[_RawCue] = []
    for first, lines in blocks:
        arrows = [i for i, line in enumerate(lines) if "-->" in line]
        if not arrows:
            bad = next((i for i, line in enumerate(lines) if _TIMING_LIKE_RE.match(line)), None)
            if bad is not None:
                raise TranscriptError(
                    f"line {first + bad}: malformed timing line {short_repr(lines[bad].strip())}, "
                    "expected 'start --> end'"
                )
            if cues:  # a stray blank line inside cue text; keep the text with its cue
                cues[-1].lines.extend(lines)
                continue
            raise TranscriptError(
                f"line {first}: text {short_repr(lines[0].strip())} comes before any 'start --> end' timing line"
            )
        # lines before the first timing line are the cue id; any extra ones belong to the previous cue
        if arrows[0] > 1 and cues:
            cues[-1].lines.extend(lines[: arrows[0] - 1])
        for k, arrow in enumerate(arrows):
            stop = arrows[k + 1] if k + 1 < len(arrows) else len(lines)
            text_lines = lines[arrow + 1 : stop]
            # cues run together without a blank line: the line before the next timing line is its id
            if k + 1 < len(arrows) and text_lines and (vtt or text_lines[-1].strip().isdigit()):
                text_lines = text_lines[:-1]
            start, end = _parse_timing(lines[arrow], first + arrow, len(cues) + 1)
            cues.append(_RawCue(start, end, list(text_lines)))
    return cues


def _parse_srt(text: str) -> list[_RawCue]:
    return _parse_timed_blocks(_blocks(text), vtt=False)


def _parse_vtt(text: str) -> list[_RawCue]:
    blocks = _blocks(text)
    if not blocks or not re.match(r"WEBVTT(?:[ \t]|$)", blocks[0][1][0]):
        raise TranscriptError("not a WebVTT file: the first line must be 'WEBVTT'")
    first, header = blocks[0]
    kept: list[tuple[int, list[str]]] = []
    arrows = [i for i, line in enumerate(header) if "-->" in line]
    if arrows:  # no blank line after the header: cues start right below it
        begin = max(arrows[0] - 1, 1)  # keep a possible cue id line, drop "WEBVTT" and metadata
        kept.append((first + begin, header[begin:]))
    for number, lines in blocks[1:]:
        head = lines[0].strip()
        if any(head == name or head.startswith((name + " ", name + "\t")) for name in _VTT_SKIPPED_BLOCKS):
            if not any("-->" in line for line in lines):
                continue
        kept.append((number, lines))
    return _parse_timed_blocks(kept, vtt=True)


def _parse_json(text: str) -> list[_RawCue]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TranscriptError(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise TranscriptError("JSON transcript is nested too deeply to be a list of cues") from None
    except ValueError as exc:  # an integer of more than 4300 digits
        raise TranscriptError(f"invalid JSON: {exc}") from None
    wrong_shape = "JSON transcript must be a list of cues or an object with a 'segments' or 'cues' list"
    items = data
    if isinstance(data, dict):
        key = next((k for k in ("segments", "cues") if k in data), None)
        if key is None:
            raise TranscriptError(wrong_shape)
        items = data[key]
        if not isinstance(items, list):
            raise TranscriptError(f"JSON transcript: '{key}' must be a list")
    elif not isinstance(data, list):
        raise TranscriptError(wrong_shape)
    cues: list[_RawCue] = []
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise TranscriptError(f"cue {number}: expected an object with start, end and text")
        missing = [key for key in ("start", "end", "text") if key not in item]
        if missing:
            raise TranscriptError(f"cue {number}: missing {', '.join(missing)}")
        try:
            start = parse_timestamp(item["start"])
            end = parse_timestamp(item["end"])
        except TranscriptError as exc:
            raise TranscriptError(f"cue {number}: malformed timestamp: {exc}") from None
        if end < start:
            raise TranscriptError(f"cue {number}: end {item['end']} is before start {item['start']}")
        if item["text"] is None:
            continue
        if not isinstance(item["text"], str):
            raise TranscriptError(f"cue {number}: text must be a string, got {type(item['text']).__name__}")
        cues.append(_RawCue(start, end, item["text"].split("\n")))
    return cues


_PARSERS = {".srt": _parse_srt, ".vtt": _parse_vtt, ".json": _parse_json}


def _word_key(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower()) or word.lower()


def _overlap(previous: list[str], current: list[str]) -> int:
    """Length of the longest tail of `previous` that `current` starts with."""
    for size in range(min(len(previous), len(current)), 0, -1):
        if previous[-size:] == current[:size]:
            return size
    return 0


def _drop_rolling_duplicates(cues: list[Cue]) -> list[Cue]:
    """YouTube auto-captions repeat the previous cue's last line before the new words; keep only new words.

    A one-word overlap is left alone (ordinary speech repeats words), unless the whole cue is a repeat.
    """
    kept: list[Cue] = []
    previous_keys: list[str] = []
    previous_end = -math.inf
    for cue in cues:
        words = cue.text.split()
        keys = [_word_key(word) for word in words]
        if kept and cue.start <= previous_end + _ROLLING_MAX_GAP:
            size = _overlap(previous_keys, keys)
            if size == len(keys):  # nothing new: the held line only extends the previous cue
                last = kept[-1]
                kept[-1] = Cue(last.start, max(last.end, cue.end), last.text)
                previous_keys = keys
                previous_end = max(previous_end, cue.end)
                continue
            if size >= 2:
                words = words[size:]
        kept.append(Cue(cue.start, cue.end, " ".join(words)))
        previous_keys = keys
        previous_end = cue.end
    return kept


def read_transcript(path: str | os.PathLike, max_bytes: int = LimitsConfig.max_transcript_bytes) -> list[Cue]:
    """Cues of an .srt, .vtt or .json transcript, sorted by start; raises TranscriptError with the reason.

    Only a regular file of at most `max_bytes` is read (a FIFO, a device or a huge file is a TranscriptError).
    """
    path = Path(path)
    parser = _PARSERS.get(path.suffix.lower())
    if parser is None:
        kind = path.suffix or "(no extension)"
        raise TranscriptError(f"unsupported transcript type {kind!r}; use .srt, .vtt or .json")
    try:
        data = read_input_bytes(path, max_bytes, "transcript file")
    except InputFileError as exc:
        raise TranscriptError(str(exc)) from None
    text = _decode(data)
    if not text.strip():
        raise TranscriptError("transcript file is empty")
    raw = parser(text)
    if not raw:
        raise TranscriptError("no cues found in the transcript")
    cues = [Cue(c.start, c.end, _clean_text(c.lines)) for c in raw]
    cues = [c for c in cues if c.text]
    if not cues:
        raise TranscriptError("every cue is empty once markup is removed")
    cues.sort(key=lambda c: (c.start, c.end))  # spoken order; stable: equal spans keep file order
    return _drop_rolling_duplicates(cues)


def format_timestamp(seconds: float, separator: str = ",") -> str:
    """HH:MM:SS,mmm (SRT) or, with separator=".", HH:MM:SS.mmm (WebVTT)."""
    ms = int(round(max(0.0, seconds) * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{separator}{ms % 1000:03d}"


def format_srt(cues: Iterable[Cue | tuple[float, float, str]]) -> str:
    """SRT text for (start, end, text) cues; what synthetic corpora and tests write beside their videos."""
    blocks = []
    for number, cue in enumerate(cues, start=1):
        start, end, text = (cue.start, cue.end, cue.text) if isinstance(cue, Cue) else cue
        blocks.append(f"{number}\n{format_timestamp(start)} --> {format_timestamp(end)}\n{text}\n")
    return "\n".join(blocks)


# ---------------------------------------------------------------------------------------------- sentences

_EPS = 1e-9
_TERMINAL_RE = re.compile(r"[.!?…]+[\"'”’)\]}»]*(?=\s|$)")
_OPENERS = "([{\"'“‘«"
_ABBREVIATIONS = frozenset(
    "mr. mrs. ms. dr. prof. sr. jr. st. vs. etc. approx. fig. inc. ltd. co. corp. dept. mt. ft. lt. gen. "
    "col. sgt. capt. rev. hon. cf. al. e.g. i.e. u.s. u.k.".split()
)
_DOTTED_RE = re.compile(r"(?:[^\W\d_]\.){2,}")  # e.g. / u.s.a. / a.m.
_INITIAL_RE = re.compile(r"[^\W\d_]\.")
_CLAUSE_END = (",", ";", ":", "—", "–")
_DANGLING = frozenset(
    "and or but so because the a an of to in on at for with that which who than as if".split()
)
_COMMA_BONUS = 0.3  # a cut after a comma may sit this far (fraction of a piece) from the ideal point
_DANGLING_PENALTY = 0.15  # avoid pieces that end on "and", "the", ...


def _is_abbreviation(text: str, match: re.Match) -> bool:
    if match.group() != ".":
        return False  # "?", "!", "...", or a closing quote: always a boundary
    token_start = text.rfind(" ", 0, match.start()) + 1
    token = text[token_start : match.end()].lstrip(_OPENERS)
    lower = token.lower()
    if lower in _ABBREVIATIONS or _DOTTED_RE.fullmatch(lower):
        return True
    return bool(_INITIAL_RE.fullmatch(token)) and token[0].isupper() and token != "I."


class _Stream:
    """All cue texts joined by single spaces, with character position -> time inside each cue."""

    def __init__(self, cues: list[Cue]):
        parts: list[str] = []
        self.offsets: list[int] = []
        self.lengths: list[int] = []
        self.cues: list[Cue] = []
        position = 0
        for cue in sorted(cues, key=lambda c: (c.start, c.end)):
            text = " ".join(cue.text.split())
            if not text:
                continue
            if parts:
                position += 1
            self.offsets.append(position)
            self.lengths.append(len(text))
            self.cues.append(cue)
            parts.append(text)
            position += len(text)
        self.text = " ".join(parts)

    def _time(self, index: int, position: int) -> float:
        cue = self.cues[index]
        fraction = min(max((position - self.offsets[index]) / self.lengths[index], 0.0), 1.0)
        return cue.start + max(cue.end - cue.start, 0.0) * fraction

    def time_at_start(self, position: int) -> float:
        """Time at which the character at `position` begins."""
        return self._time(bisect.bisect_right(self.offsets, position) - 1, position)

    def time_at_end(self, position: int) -> float:
        """Time at which the character before `position` ends."""
        return self._time(bisect.bisect_right(self.offsets, position - 1) - 1, position)


@dataclass
class _Span:
    start: float
    end: float
    text: str

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def word_count(self) -> int:
        return len(self.text.split())


def _sentence_ranges(text: str) -> list[tuple[int, int]]:
    """Character ranges of sentences, trimmed of surrounding spaces."""
    cuts = [0]
    for match in _TERMINAL_RE.finditer(text):
        if not _is_abbreviation(text, match):
            cuts.append(match.end())
    cuts.append(len(text))
    ranges = []
    for begin, end in zip(cuts, cuts[1:]):
        while begin < end and text[begin].isspace():
            begin += 1
        while end > begin and text[end - 1].isspace():
            end -= 1
        if begin < end:
            ranges.append((begin, end))
    return ranges


def _split_long(stream: _Stream, begin: int, end: int, cfg: SentenceConfig) -> list[_Span]:
    """One span for the sentence, or near-equal pieces cut at word boundaries when it is too long."""
    words = [(begin + m.start(), begin + m.end()) for m in re.finditer(r"\S+", stream.text[begin:end])]
    starts = [stream.time_at_start(a) for a, _ in words]
    ends = [stream.time_at_end(b) for _, b in words]

    def fits(lo: int, hi: int) -> bool:
        return hi - lo <= cfg.max_words and ends[hi - 1] - starts[lo] <= cfg.max_duration + _EPS

    def cut_score(lo: int, hi: int, by_time: bool, ideal_seconds: float, ideal_words: float) -> float:
        if by_time:
            distance = abs((ends[hi - 1] - starts[lo]) - ideal_seconds) / ideal_seconds
        else:
            distance = abs((hi - lo) - ideal_words) / ideal_words
        last_word = stream.text[words[hi - 1][0] : words[hi - 1][1]]
        if last_word.endswith(_CLAUSE_END):
            distance -= _COMMA_BONUS
        elif last_word.lower().strip("\"'”’") in _DANGLING:
            distance += _DANGLING_PENALTY
        return distance

    pieces: list[tuple[int, int]] = []
    lo, count = 0, len(words)
    while count - lo > 1 and not fits(lo, count):  # a last single word stays whole, however long
        seconds_left = max(ends[count - 1] - starts[lo], 0.0)
        words_left = count - lo
        by_time = seconds_left / cfg.max_duration >= words_left / cfg.max_words
        by_seconds = seconds_left / cfg.max_duration  # inf for absurd timestamps; never more pieces than words
        by_seconds = words_left if not by_seconds < words_left else math.ceil(by_seconds - _EPS)
        pieces_left = max(2, by_seconds, math.ceil(words_left / cfg.max_words))
        ideal_seconds, ideal_words = seconds_left / pieces_left, words_left / pieces_left
        best: tuple[float, int] | None = None
        hi = lo + 1
        while hi < count and fits(lo, hi):  # every piece that fits and leaves words for the rest
            score = cut_score(lo, hi, by_time, ideal_seconds, ideal_words)
            if best is None or score < best[0]:
                best = (score, hi)
            hi += 1
        cut = best[1] if best else lo + 1  # a single word longer than max_duration stays whole
        pieces.append((lo, cut))
        lo = cut
    pieces.append((lo, count))

    spans = []
    for lo, hi in pieces:
        text = " ".join(stream.text[words[lo][0] : words[hi - 1][1]].split())
        # overlapping cues: a piece covers every word in it, not only its first and last
        start = min(starts[lo:hi])
        spans.append(_Span(start, max(max(ends[lo:hi]), start), text))
    return spans


def _clip(spans: list[_Span], video_duration: float | None) -> list[_Span]:
    clipped = []
    for span in spans:
        if span.end < 0 or (video_duration is not None and span.start >= video_duration):
            continue  # entirely outside the video
        end = span.end if video_duration is None else min(span.end, video_duration)
        clipped.append(_Span(max(span.start, 0.0), end, span.text))
    return clipped


def _can_merge(first: _Span, second: _Span, cfg: SentenceConfig) -> bool:
    span = max(first.end, second.end) - min(first.start, second.start)
    return span <= cfg.max_duration + _EPS and first.word_count + second.word_count <= cfg.max_words


def _merge(first: _Span, second: _Span) -> _Span:
    return _Span(min(first.start, second.start), max(first.end, second.end), f"{first.text} {second.text}")


def _widen(span: _Span, min_duration: float, video_duration: float | None) -> _Span | None:
    missing = min_duration - span.duration
    start, end = span.start - missing / 2, span.end + missing / 2
    if start < 0:  # shift what does not fit before 0 to the right
        end, start = end - start, 0.0
    if video_duration is not None and end > video_duration:
        start, end = max(start - (end - video_duration), 0.0), video_duration
    if end - start < min_duration - 1e-6:
        return None  # the video is shorter than min_duration
    return _Span(start, end, span.text)


def _fix_short(spans: list[_Span], cfg: SentenceConfig, video_duration: float | None) -> list[_Span]:
    def too_short(span: _Span) -> bool:
        return span.duration < cfg.min_duration - _EPS

    if cfg.merge_short:
        i = 0
        while i < len(spans):
            if not too_short(spans[i]):
                i += 1
            elif i + 1 < len(spans) and _can_merge(spans[i], spans[i + 1], cfg):
                spans[i] = _merge(spans[i], spans.pop(i + 1))  # look at the merged span again
            elif i > 0 and _can_merge(spans[i - 1], spans[i], cfg):
                spans[i - 1] = _merge(spans[i - 1], spans.pop(i))
            else:
                i += 1
    result = []
    for span in spans:
        if too_short(span):
            span = _widen(span, cfg.min_duration, video_duration)
            if span is None:
                continue
        result.append(span)
    return result


def _check_config(cfg: SentenceConfig) -> None:
    if cfg.max_duration <= 0 or cfg.max_words < 1:
        raise ValueError("sentence config: max_duration must be > 0 and max_words >= 1")
    if not 0 <= cfg.min_duration <= cfg.max_duration:
        raise ValueError("sentence config: need 0 <= min_duration <= max_duration")


def cues_to_sentences(cues: list[Cue], cfg: SentenceConfig, video_duration: float | None = None) -> list[Cue]:
    """Sentence spans from cues: split at sentence ends, split long ones, fix short ones, clip to the video."""
    _check_config(cfg)
    stream = _Stream(cues)
    spans: list[_Span] = []
    for begin, end in _sentence_ranges(stream.text):
        if any(ch.isalnum() for ch in stream.text[begin:end]):  # lone punctuation is no sentence
            spans.extend(_split_long(stream, begin, end, cfg))
    spans = _clip(spans, video_duration)
    spans = _fix_short(spans, cfg, video_duration)
    # microsecond rounding keeps manifests readable without moving any boundary noticeably
    return [Cue(round(s.start, 6), round(s.end, 6), s.text) for s in spans]
