"""Property-based fuzzing of the ingest readers (issue 14): random and adversarial inputs never raise past the
report, never hang, and every sentence span stays inside the video.

What the builder turns into a report entry: `read_transcript` raises only `TranscriptError`; `cues_to_sentences`
raises nothing for cues a reader produced; `discover_inputs` turns every bad manifest row into an `InputProblem`
(its catch-all for the unforeseen, "cannot read this input", must never be needed).
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_tools.ingest.config import SentenceConfig
from data_tools.ingest.sources import discover_inputs
from data_tools.ingest.transcripts import Cue, TranscriptError, cues_to_sentences, format_timestamp, read_transcript

FUZZ = settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
CATCH_ALL = "cannot read this input"

_DIR = tempfile.TemporaryDirectory(prefix="fuzz_ingest_")
WORK = Path(_DIR.name)

# ---------------------------------------------------------------------------------------------- strategies

seconds = st.one_of(
    st.floats(min_value=0, max_value=4000, allow_nan=False),
    st.sampled_from([0.0, 1e-9, 59.999, 3600.0, 1e7, 1e300, 1.7e308]),
)
text_seconds = st.one_of(st.floats(min_value=0, max_value=4000), st.sampled_from([0.0, 59.999, 3600.0, 1e7]))
timestamp_text = st.one_of(
    text_seconds.map(format_timestamp),
    text_seconds.map(lambda s: format_timestamp(s, ".")),
    st.sampled_from(["00:00:01,000", "1:02:03.5", "99:99:99,999", "-00:00:01,000", "00:00:60,000", "1e400",
                     "nan", "", "00:00", "::", "00:00:01,000,000", "٣:٣٣", "0x10"]),
    st.text(alphabet="0123456789:.,- ", max_size=14),
)
nasty_text = st.lists(
    st.one_of(
        st.characters(codec="utf-8", exclude_categories=["Cs"]),
        st.sampled_from(list("\x1b\x07\x9b\x00\r\n\t.?!<>{}\\&;#") + ["&#27;", "<i>", "{\\an8}", "-->", "WEBVTT",
                                                                          "\x1b]0;title\x07", "\x1b[31m"]),
    ),
    max_size=30,
).map("".join)
words = st.lists(st.sampled_from(["Hello", "world.", "Mr.", "U.S.", "and", "so,", "?", "!", "[Music]", "…", "a",
                                  "e.g.", "I.", "okay", "\u200b", "—"]), max_size=30).map(" ".join)


@st.composite
def timed_text(draw, vtt: bool) -> str:
    blocks = ["WEBVTT\n"] if vtt and draw(st.booleans()) else []
    for number in range(draw(st.integers(0, 8))):
        parts = []
        if draw(st.booleans()):
            parts.append(str(number + 1))
        arrow = draw(st.sampled_from(["-->", "-->", "->", "--> ", " --> "]))
        parts.append(f"{draw(timestamp_text)} {arrow} {draw(timestamp_text)}"
                     + draw(st.sampled_from(["", " align:start position:0%", " X1:0"])))
        parts.extend(draw(st.lists(st.one_of(nasty_text, words), max_size=3)))
        blocks.append("\n".join(parts) + "\n")
    separator = draw(st.sampled_from(["\n", "\r\n", "\n\n\n", ""]))
    text = separator.join(blocks)
    if draw(st.booleans()):
        text = "\ufeff" + text
    return text


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), nasty_text),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=20,
)
cue_object = st.fixed_dictionaries(
    {},
    optional={"start": st.one_of(seconds, timestamp_text, json_values), "end": st.one_of(seconds, timestamp_text),
              "text": st.one_of(words, nasty_text, json_values)},
)
json_transcript = st.one_of(
    json_values,
    st.lists(cue_object, max_size=6),
    st.fixed_dictionaries({"segments": st.lists(cue_object, max_size=6)}),
    st.integers(1, 5000).map(lambda depth: "[" * depth + "]" * depth),
    st.integers(4000, 6000).map(lambda digits: '[{"start": ' + "7" * digits + ', "end": 1, "text": "x"}]'),
)


def write(name: str, data: str | bytes) -> Path:
    path = WORK / name
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    path.write_bytes(data)
    return path


def read_or_transcript_error(path: Path) -> list[Cue] | None:
    try:
        cues = read_transcript(path)
    except TranscriptError as exc:
        assert str(exc)  # a readable reason
        return None
    for cue in cues:
        assert math.isfinite(cue.start) and cue.start <= cue.end and cue.text
        assert not any(ord(ch) < 32 or 0x7F <= ord(ch) <= 0x9F for ch in cue.text), repr(cue.text)
    assert [c.start for c in cues] == sorted(c.start for c in cues)
    return cues


def check_sentences(cues: list[Cue], cfg: SentenceConfig, duration: float | None) -> None:
    for s in cues_to_sentences(cues, cfg, video_duration=duration):
        assert 0.0 <= s.start <= s.end, s
        if duration is not None:
            assert s.end <= duration + 1e-6, (s, duration)
        assert s.text.strip()


sentence_configs = st.builds(
    lambda lo, hi, words, merge: SentenceConfig(min_duration=min(lo, hi), max_duration=max(lo, hi, 1e-3),
                                                max_words=words, merge_short=merge),
    st.floats(0, 30), st.floats(1e-3, 60), st.integers(1, 100), st.booleans(),
)
durations = st.one_of(st.none(), st.floats(0.01, 5000))

# ---------------------------------------------------------------------------------------------- readers


@FUZZ
@given(data=st.binary(max_size=2000), ext=st.sampled_from([".srt", ".vtt", ".json"]))
def test_random_bytes_parse_or_raise_transcript_error(data, ext):
    read_or_transcript_error(write("random" + ext, data))


@FUZZ
@given(vtt=st.booleans(), data=st.data(), cfg=sentence_configs, duration=durations)
def test_srt_and_vtt_readers_and_splitter(vtt, data, cfg, duration):
    text = data.draw(timed_text(vtt=vtt))
    cues = read_or_transcript_error(write("x.vtt" if vtt else "x.srt", text))
    if cues:
        check_sentences(cues, cfg, duration)


@FUZZ
@given(value=json_transcript, cfg=sentence_configs, duration=durations)
def test_json_reader_and_splitter(value, cfg, duration):
    text = value if isinstance(value, str) and value.startswith("[") else json.dumps(value)
    cues = read_or_transcript_error(write("x.json", text))
    if cues:
        check_sentences(cues, cfg, duration)


# ---------------------------------------------------------------------------------------------- splitter

cue_lists = st.lists(
    st.builds(lambda start, length, text: Cue(start, start + length, text),
              seconds, st.one_of(st.floats(0, 120), st.sampled_from([0.0, 27.0, 1e6])), words),
    max_size=25,
)


@FUZZ
@given(cues=cue_lists, cfg=sentence_configs, duration=durations)
def test_sentence_spans_stay_inside_the_video(cues, cfg, duration):
    check_sentences(cues, cfg, duration)


def test_absurd_timestamps_do_not_overflow_the_splitter():
    cues = [Cue(0.0, 1.7e308, "a b c d"), Cue(1.7e308, 1.7e308, "e.")]
    check_sentences(cues, SentenceConfig(min_duration=0.0, max_duration=1e-3), None)
    check_sentences(cues, SentenceConfig(min_duration=0.0, max_duration=1e-3), 10.0)


def test_music_at_the_end_for_every_max_duration():
    cues = [Cue(0.0, 3.0, "Welcome back to the channel."), Cue(3.0, 30.0, "[Music]")]
    for max_duration in (1.0, 2.9, 3.0, 20.0, 26.9, 27.0, 30.0):
        check_sentences(cues, SentenceConfig(min_duration=0.5, max_duration=max_duration), 25.0)


# ---------------------------------------------------------------------------------------------- manifests

odd_ids = st.sampled_from(["v", "../v", "/v", "a/../../v", "a\x00", "x" * 5000])
manifest_rows = st.lists(
    st.one_of(
        json_values,
        st.fixed_dictionaries({}, optional={
            "video": st.one_of(st.sampled_from(["v.mp4", "../v.mp4", "/dev/zero", "~nobody/x.mp4", "a\x00b.mp4",
                                                "missing.mp4", "", "x" * 5000 + ".mp4"]), json_values),
            "start": st.one_of(seconds, timestamp_text, json_values), "end": st.one_of(seconds, timestamp_text),
            "text": st.one_of(words, nasty_text, json_values), "clip_id": json_values, "video_id": json_values}),
        st.fixed_dictionaries({"video_id": st.one_of(odd_ids, json_values)},
                              optional={"clip": st.one_of(json_values, st.lists(st.fixed_dictionaries({}, optional={
                                  "clip_id": json_values, "span": st.one_of(json_values, st.lists(seconds, max_size=3)),
                                  "text": st.one_of(words, nasty_text)}), max_size=4))}),
    ),
    max_size=6,
)


def _no_escape(problems) -> None:
    assert not [p for p in problems if p.reason.startswith(CATCH_ALL)], problems


@pytest.fixture(scope="module", autouse=True)
def _video():
    write("v.mp4", b"not really a video; discovery does not open it")


@FUZZ
@given(rows=manifest_rows, noise=st.lists(st.one_of(nasty_text, st.integers(1, 3000).map(lambda d: "{\"a\":" * d),
                                          st.integers(4000, 6000).map(lambda d: "{\"start\": " + "9" * d + "}")),
                                          max_size=2))
def test_jsonl_manifests_never_escape_the_report(rows, noise):
    lines = [json.dumps(row) for row in rows] + noise
    path = write("m.jsonl", "\n".join(lines))
    jobs, problems = discover_inputs([str(path)], clip_text=str(path))
    _no_escape(problems)
    for job in jobs:
        assert Path(job.video_path).resolve().is_relative_to(WORK.resolve()) or job.transcript_source == "manifest"
        for clip in job.clips:
            assert clip.start < clip.end and not any(ord(ch) < 32 for ch in clip.text)


@FUZZ
@given(header=st.lists(st.sampled_from(["video", "start", "end", "text", "caption", "path", "x", ""]), max_size=6),
       cells=st.lists(st.lists(st.one_of(nasty_text, timestamp_text), max_size=7), max_size=5))
def test_csv_manifests_never_escape_the_report(header, cells):
    text = "\n".join([",".join(header)] + [",".join(json.dumps(c) for c in row) for row in cells])
    path = write("m.csv", text)
    jobs, problems = discover_inputs([str(path)])
    _no_escape(problems)


@FUZZ
@given(data=st.binary(max_size=1500), ext=st.sampled_from([".jsonl", ".csv", ".parquet"]))
def test_random_manifest_bytes_never_escape_the_report(data, ext):
    path = write("r" + ext, data)
    jobs, problems = discover_inputs([str(path)])
    _no_escape(problems)
