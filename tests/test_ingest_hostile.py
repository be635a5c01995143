"""Ingest survives hostile and odd input (issue 14): no crash, no hang, nothing valid lost."""
from __future__ import annotations

import json
import os
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest

from data_tools.config import load_config
from data_tools.ingest import build as build_module
from data_tools.ingest.build import build_shards
from data_tools.ingest.config import BuildConfig, LimitsConfig, SentenceConfig
from data_tools.ingest.sources import VideoJob, discover_inputs, pair_videos, plan_clips
from data_tools.ingest.transcripts import Cue, TranscriptError, cues_to_sentences, format_srt, read_transcript
from data_tools.media.testclips import make_indexed_clip

SRT = format_srt([(0.5, 2.5, "The first block counts up."), (3.0, 5.0, "Then it keeps counting.")])
DEEP = "[" * 100_000 + "]" * 100_000


@contextmanager
def no_hang(seconds: int = 10):
    """Fail instead of hanging the test run."""
    def fail(*_):
        raise AssertionError(f"hung for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "clip.mp4"
    make_indexed_clip(path, num_frames=6 * 25, size=(48, 64), fps=25, keyint=25)
    return path


def small_cfg(*extra) -> BuildConfig:
    return load_config(BuildConfig, None, ["sentences.min_duration=1.0", "sentences.max_duration=6.0",
                                           "transcode.preset=ultrafast", "transcode.threads=1",
                                           "transcode.proxy_short_side=null", *extra])


def reasons(problems):
    return {p.input: p.reason for p in problems}


# ---------------------------------------------------------------------------------------------- item 1

@pytest.mark.parametrize("first", ["Welcome back to the channel.", "Welcome back to the channel"])
def test_last_cue_longer_than_max_duration_does_not_crash_the_splitter(first):
    cues = [Cue(0.0, 3.0, first), Cue(3.0, 30.0, "[Music]")]
    sentences = cues_to_sentences(cues, SentenceConfig())
    assert sentences and sentences[0].text.startswith("Welcome")
    assert all(0.0 <= s.start <= s.end for s in sentences)


def test_deeply_nested_json_transcript_is_a_transcript_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text(DEEP)
    with pytest.raises(TranscriptError, match="nested"):
        read_transcript(path)


def test_deeply_nested_jsonl_manifest_line_is_reported(tmp_path):
    (tmp_path / "v.mp4").write_bytes(b"x")
    manifest = tmp_path / "m.jsonl"
    good = json.dumps({"video": "v.mp4", "start": 0, "end": 2, "text": "Fine."})
    manifest.write_text(f"{DEEP}\n{good}\n")
    jobs, problems = discover_inputs([str(manifest)])
    assert [len(j.clips) for j in jobs] == [1]
    assert any("nested" in p.reason for p in problems)
    hdvila = tmp_path / "h.jsonl"
    hdvila.write_text(json.dumps({"video_id": "v", "clip": [{"clip_id": "c", "span": [0, 2], "text": "t"}]})
                      + "\n" + DEEP + "\n")
    jobs, problems = discover_inputs([str(hdvila)])
    assert [j.video_id for j in jobs] == ["v"] and any("nested" in p.reason for p in problems)


def test_json_integers_over_the_digit_limit_are_reported(tmp_path):
    transcript = tmp_path / "t.json"
    transcript.write_text('[{"start": ' + "1" * 5000 + ', "end": 3, "text": "x"}]')
    with pytest.raises(TranscriptError, match="digits"):
        read_transcript(transcript)
    (tmp_path / "v.mp4").write_bytes(b"v")
    manifest = tmp_path / "m.jsonl"
    good = json.dumps({"video": "v.mp4", "start": 0, "end": 2, "text": "ok"})
    manifest.write_text(good + '\n{"video": "v.mp4", "start": ' + "1" * 5000 + ', "end": 3, "text": "x"}\n')
    jobs, problems = discover_inputs([str(manifest)])
    assert [len(j.clips) for j in jobs] == [1] and "digits" in problems[0].reason


def test_csv_row_over_the_field_limit_costs_only_that_row(tmp_path):
    (tmp_path / "v.mp4").write_bytes(b"v")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f'video,start,end,text\nv.mp4,0,2,ok\nv.mp4,2,4,"{"a" * 200_000}"\nv.mp4,4,6,fine\n')
    jobs, problems = discover_inputs([str(manifest)])
    assert [c.text for c in jobs[0].clips] == ["ok", "fine"]
    assert [p.input for p in problems] == [f"{manifest} row 2"] and "field" in problems[0].reason


def test_end_of_video_music_cue_no_longer_kills_the_build(tmp_path, video):
    folder = tmp_path / "in"
    folder.mkdir()
    os.symlink(video, folder / "good.mp4")
    (folder / "good.srt").write_text(SRT)
    os.symlink(video, folder / "music.mp4")
    (folder / "music.srt").write_text(format_srt([(0.0, 1.0, "Welcome back."), (1.0, 30.0, "[Music]")]))
    os.symlink(video, folder / "deep.mp4")
    (folder / "deep.json").write_text(DEEP)
    report = build_shards([str(folder)], tmp_path / "out", small_cfg(), progress=False)
    assert (tmp_path / "out" / "build_report.json").exists()
    assert report["clips_written"] >= 3
    deep = [f for f in report["failures"] if Path(f["input"]).stem == "deep"]
    assert deep and deep[0]["stage"] == "transcript"


def two_video_folder(tmp_path, video) -> Path:
    """A folder of two videos, a and b, each with a good transcript."""
    folder = tmp_path / "in"
    folder.mkdir()
    for stem in ("a", "b"):
        os.symlink(video, folder / f"{stem}.mp4")
        (folder / f"{stem}.srt").write_text(SRT)
    return folder


def test_any_exception_while_planning_one_video_is_a_report_entry(tmp_path, video, monkeypatch):
    folder = two_video_folder(tmp_path, video)
    real = build_module.plan_clips

    def flaky(job, *args, **kwargs):
        if job.video_id == "a":
            raise KeyError("surprise")
        return real(job, *args, **kwargs)

    monkeypatch.setattr(build_module, "plan_clips", flaky)
    report = build_shards([str(folder)], tmp_path / "out", small_cfg(), progress=False)
    assert report["clips_written"] == 2
    entry = next(f for f in report["failures"] if Path(f["input"]).stem == "a")
    assert entry["stage"] == "plan" and "KeyError" in entry["reason"] and "surprise" in entry["reason"]


def test_any_exception_while_probing_or_discovering_one_input_is_a_report_entry(tmp_path, video, monkeypatch):
    from data_tools.ingest import sources

    for name in ("in", "other"):
        folder = tmp_path / name
        folder.mkdir()
        for stem in ("a", "b"):
            os.symlink(video, folder / f"{stem}.mp4")
            (folder / f"{stem}.srt").write_text(SRT)
    real_probe, real_folder = build_module.probe_video, sources._discover_folder

    def flaky_probe(path):
        if Path(path).stem == "a":
            raise MemoryError("no room")
        return real_probe(path)

    def flaky_folder(folder, *args):
        if folder.name == "other":
            raise UnicodeError("odd name")
        return real_folder(folder, *args)

    monkeypatch.setattr(build_module, "probe_video", flaky_probe)
    monkeypatch.setattr(sources, "_discover_folder", flaky_folder)
    report = build_shards([str(tmp_path / "in"), str(tmp_path / "other")], tmp_path / "out", small_cfg(),
                          progress=False)
    assert report["clips_written"] == 2
    by_stage = {f["stage"]: f for f in report["failures"]}
    assert "MemoryError: no room" in by_stage["probe"]["reason"] and Path(by_stage["probe"]["input"]).stem == "a"
    assert "UnicodeError: odd name" in by_stage["discover"]["reason"]
    assert by_stage["discover"]["input"] == str(tmp_path / "other")


def test_any_exception_while_cutting_one_clip_is_a_report_entry(tmp_path, video, monkeypatch):
    folder = two_video_folder(tmp_path, video)
    real = build_module.cut_clip

    def flaky(path, *args, **kwargs):
        if Path(path).stem == "a":
            raise ZeroDivisionError("division by zero")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(build_module, "cut_clip", flaky)
    report = build_shards([str(folder)], tmp_path / "out", small_cfg(), progress=False)
    assert report["clips_written"] == 2
    entries = [f for f in report["failures"] if Path(f["input"]).stem == "a"]
    assert len(entries) == 2 and all(e["stage"] == "transcode" and "ZeroDivisionError" in e["reason"]
                                     for e in entries)


# ---------------------------------------------------------------------------------------------- item 2

def test_fifo_transcript_beside_a_video_is_reported_not_read(tmp_path):
    (tmp_path / "x.mp4").write_bytes(b"video")
    os.mkfifo(tmp_path / "x.srt")
    with no_hang():
        jobs, problems = discover_inputs([str(tmp_path)])
        for job in jobs:
            clips, more = plan_clips(job, 10.0, SentenceConfig())
            problems += more
    assert any("FIFO" in p.reason or "regular file" in p.reason for p in problems), problems


def test_fifo_video_is_reported_at_discovery(tmp_path):
    os.mkfifo(tmp_path / "x.mp4")
    (tmp_path / "x.srt").write_text(SRT)
    with no_hang():
        jobs, problems = discover_inputs([str(tmp_path)])
    assert jobs == [] and any("regular file" in p.reason for p in problems)


def test_transcript_and_manifests_linked_to_dev_zero_are_reported(tmp_path):
    (tmp_path / "x.mp4").write_bytes(b"video")
    os.symlink("/dev/zero", tmp_path / "x.srt")
    with no_hang():
        with pytest.raises(TranscriptError, match="regular file"):
            read_transcript(tmp_path / "x.srt")
        for name in ("m.jsonl", "m.csv", "m.parquet"):
            os.symlink("/dev/zero", tmp_path / name)
            jobs, problems = discover_inputs([str(tmp_path / name)])
            assert jobs == [] and any("regular file" in p.reason for p in problems), name
        jobs, problems = discover_inputs([str(tmp_path / "m.jsonl")], clip_text=str(tmp_path / "m.jsonl"))
        assert jobs == []


def test_files_over_the_size_caps_are_reported(tmp_path):
    (tmp_path / "x.mp4").write_bytes(b"v" * 2000)
    (tmp_path / "x.srt").write_text(SRT)
    limits = LimitsConfig(max_transcript_bytes=10, max_manifest_bytes=10, max_video_bytes=100)
    jobs, problems = discover_inputs([str(tmp_path)], limits=limits)
    assert jobs == [] and any("over the limit" in p.reason for p in problems)
    job = VideoJob(str(tmp_path / "x.mp4"), "x", transcript_path=str(tmp_path / "x.srt"), transcript_source="srt")
    clips, problems = plan_clips(job, 10.0, SentenceConfig(), limits=limits)
    assert clips == [] and "over the limit" in problems[0].reason and problems[0].stage == "transcript"
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"video": "x.mp4", "start": 0, "end": 2, "text": "Fine."}) + "\n")
    jobs, problems = discover_inputs([str(manifest)], limits=limits)
    assert jobs == [] and any("over the limit" in p.reason for p in problems)


# ---------------------------------------------------------------------------------------------- item 6

def test_pairing_many_videos_is_correct():
    n = 20_000
    names = []
    for i in range(n):
        names.append(f"v{i:05d}.mp4")
        if i % 3 == 0:
            names.append(f"v{i:05d}.srt")
        elif i % 3 == 1:
            names.append(f"v{i:05d}.de.vtt")
            names.append(f"v{i:05d}.en-US.vtt")
    names.append("v00002.mkv")  # same stem as v00002.mp4, other container
    names.append("V00000.mp4")  # differs only in case: a video of its own, without a transcript
    pairs = dict(pair_videos(reversed(names)))
    assert len(pairs) == n + 2 and pairs["V00000.mp4"] is None
    assert pairs["v00000.mp4"] == "v00000.srt"
    assert pairs["v00001.mp4"] == "v00001.en-US.vtt"
    assert pairs["v00002.mp4"] is None and pairs["v00002.mkv"] is None
    assert sum(t is not None for t in pairs.values()) == n - n // 3


def test_folder_ids_stay_distinct_for_same_stem_videos(tmp_path):
    for name in ("intro.mp4", "intro.mkv"):
        (tmp_path / name).write_bytes(b"v")
    (tmp_path / "intro.srt").write_text(SRT)
    jobs, _ = discover_inputs([str(tmp_path)])
    assert sorted(j.video_id for j in jobs) == ["intro_mkv", "intro_mp4"]


# ---------------------------------------------------------------------------------------------- item 7

@pytest.mark.parametrize("video_id", ["../outside", "/etc/passwd", "sub/../../outside", "a\x00b"])
def test_hdvila_video_id_cannot_leave_video_root(tmp_path, video_id):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside.mp4").write_bytes(b"v")
    (root / "fine.mp4").write_bytes(b"v")
    rows = [{"video_id": vid, "clip": [{"clip_id": f"c{k}", "span": [0, 2], "text": "t"}]}
            for k, vid in enumerate([video_id, "fine"])]
    manifest = tmp_path / "h.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    jobs, problems = discover_inputs([str(manifest)], video_root=str(root))
    assert [j.video_id for j in jobs] == ["fine"]
    assert any("outside the video root" in p.reason for p in problems), problems


def test_hdvila_odd_video_id_costs_only_its_own_rows(tmp_path):
    (tmp_path / "fine.mp4").write_bytes(b"v")
    rows = [{"video_id": vid, "clip": [{"clip_id": f"c{k}", "span": [0, 2], "text": "t"}]}
            for k, vid in enumerate(["x" * 5000, "fine"])]
    manifest = tmp_path / "h.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    jobs, problems = discover_inputs([str(manifest)])
    assert [j.video_id for j in jobs] == ["fine"] and len(problems) == 1, problems


def _shard_sources(out: Path) -> set[str]:
    import tarfile

    import pyarrow.parquet as pq

    sources = set()
    with tarfile.open(out / "00000.tar") as tar:
        for member in tar.getmembers():
            if member.name.endswith(".json"):
                sources.add(json.loads(tar.extractfile(member).read())["source"])
    sources |= {row["source"] for row in pq.read_table(out / "00000.parquet").to_pylist()}
    return sources


def test_shards_record_source_paths_relative_to_the_input_root(tmp_path, video):
    folder = tmp_path / "in"
    (folder / "day1").mkdir(parents=True)
    os.symlink(video, folder / "day1" / "talk.mp4")
    (folder / "day1" / "talk.srt").write_text(SRT)
    build_shards([str(folder)], tmp_path / "out", small_cfg(), progress=False)
    assert _shard_sources(tmp_path / "out") == {"day1/talk.mp4"}
    build_shards([str(folder)], tmp_path / "abs", small_cfg("shards.absolute_source_paths=true"), progress=False)
    assert _shard_sources(tmp_path / "abs") == {str(folder / "day1" / "talk.mp4")}


# ---------------------------------------------------------------------------------------------- item 8

def test_control_characters_are_removed_from_captions(tmp_path):
    evil = "Hello \x1b]0;pwned\x07there \x1b[31mred\x1b[0m and\x9b2J bell\x07 &#27;[2Jend."
    path = tmp_path / "x.srt"
    path.write_text(format_srt([(0.0, 3.0, evil)]))
    (text,) = [c.text for c in read_transcript(path)]
    assert not any(ord(ch) < 32 or 0x7f <= ord(ch) <= 0x9f for ch in text), repr(text)
    assert text.startswith("Hello there red and") and "pwned" not in text
    (tmp_path / "v.mp4").write_bytes(b"v")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"video": "v.mp4", "start": 0, "end": 2, "text": evil}) + "\n")
    jobs, _ = discover_inputs([str(manifest)])
    assert "\x1b" not in jobs[0].clips[0].text and "\x07" not in jobs[0].clips[0].text


def test_search_output_escapes_control_characters():
    from hdvila.retrieval.clip_index import format_hits

    hit = {"rank": 1, "score": 0.5, "key": "00000_0000", "span": [0.0, 1.0], "source": "a\x1b[2J.mp4",
           "caption": "old \x1b]0;pwned\x07 shard\ttext"}
    out = format_hits("q\x1b[31m", [hit])
    assert "\x1b" not in out and "\x07" not in out and "\\x1b" in out


def test_overlapping_cues_are_ordered_and_sentences_cover_their_cues(tmp_path):
    path = tmp_path / "x.srt"
    path.write_text(format_srt([(5.0, 8.0, "and then the second part."), (0.0, 6.0, "This is the first part"),
                                (1.0, 2.0, "Hi there!")]))
    cues = read_transcript(path)
    assert [c.start for c in cues] == [0.0, 1.0, 5.0]
    sentences = cues_to_sentences(cues, SentenceConfig(min_duration=0.0))
    assert [s.text for s in sentences] == ["This is the first part Hi there!", "and then the second part."]
    assert sentences[0].start == 0.0 and sentences[0].end >= 5.9  # covers the whole first cue
    assert all(a.start <= b.start for a, b in zip(sentences, sentences[1:]))
