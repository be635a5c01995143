from __future__ import annotations

import csv
import json
import os

import pytest

from data_tools.ingest.config import SentenceConfig
from data_tools.ingest.sources import ClipRequest, VideoJob, discover_inputs, plan_clips

SRT = "1\n00:00:00,000 --> 00:00:05,000\nFirst sentence here.\n\n2\n00:00:05,000 --> 00:00:10,000\nSecond one.\n"


def touch(path, content=b""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def reasons(problems):
    return {p.input: p.reason for p in problems}


# ---------------------------------------------------------------------------------------------- folders

def test_folder_pairs_videos_with_transcripts(tmp_path):
    touch(tmp_path / "a.mp4")
    touch(tmp_path / "a.srt", SRT.encode())
    touch(tmp_path / "b.mkv")
    touch(tmp_path / "b.json", b"[]")
    touch(tmp_path / "b.vtt", b"WEBVTT\n")  # .vtt is preferred over .json
    touch(tmp_path / "c.webm")  # no transcript
    touch(tmp_path / "orphan.srt", SRT.encode())  # transcript without video: ignored
    touch(tmp_path / "notes.txt")
    touch(tmp_path / "cover.png")
    touch(tmp_path / "sub" / "a.MOV")
    touch(tmp_path / "sub" / "a.json", b"[]")
    touch(tmp_path / "fake.mp4", b"this is text, not a video")
    touch(tmp_path / "fake.srt", SRT.encode())

    jobs, problems = discover_inputs([str(tmp_path)])

    assert [(j.video_id, os.path.basename(j.transcript_path), j.transcript_source) for j in jobs] == [
        ("a", "a.srt", "srt"),
        ("b", "b.vtt", "vtt"),
        ("fake", "fake.srt", "srt"),  # probing, not discovery, rejects it
        ("sub__a", "a.json", "json"),
    ]
    assert all(os.path.isabs(j.video_path) and os.path.isabs(j.transcript_path) for j in jobs)
    assert all(j.clips is None for j in jobs)
    assert len(problems) == 1
    assert problems[0].input == str(tmp_path / "c.webm")
    assert problems[0].stage == "discover"
    assert problems[0].reason == "no transcript beside the video (looked for c.srt, c.vtt, c.json)"


def test_same_stem_in_two_inputs_gets_distinct_ids(tmp_path):
    for folder in ("one", "two"):
        touch(tmp_path / folder / "talk.mp4")
        touch(tmp_path / folder / "talk.srt", SRT.encode())
    jobs, problems = discover_inputs([str(tmp_path / "one"), str(tmp_path / "two")])
    assert not problems
    assert jobs[0].video_id == "talk"
    assert jobs[1].video_id.startswith("talk-") and jobs[1].video_id != "talk"


def test_missing_and_unsupported_inputs(tmp_path):
    touch(tmp_path / "readme.txt")
    touch(tmp_path / "empty" / "x.srt")
    jobs, problems = discover_inputs(
        [str(tmp_path / "nope"), str(tmp_path / "readme.txt"), str(tmp_path / "empty")]
    )
    assert jobs == []
    found = reasons(problems)
    assert found[str(tmp_path / "nope")] == "input does not exist"
    assert "unsupported input" in found[str(tmp_path / "readme.txt")]
    assert "no video files" in found[str(tmp_path / "empty")]


# ---------------------------------------------------------------------------------------------- manifests

def test_jsonl_manifest_groups_rows_and_reports_bad_ones(tmp_path):
    touch(tmp_path / "videos" / "v1.mp4")
    touch(tmp_path / "videos" / "v2.mp4")
    rows = [
        {"video": "videos/v1.mp4", "start": 10, "end": 15, "text": "later clip", "clip_id": "v1-b"},
        {"video": "videos/v1.mp4", "start": "00:00:01.000", "end": "00:00:04.500", "text": "early  clip"},
        {"video": "videos/v1.mp4", "start": 3, "text": "no end"},
        {"video": "videos/v1.mp4", "start": 5, "end": 5, "text": "zero length"},
        {"video": "videos/v1.mp4", "start": "soon", "end": 9, "text": "bad time"},
        {"video": "videos/v1.mp4", "start": 1, "end": 2, "text": "   "},
        {"video_path": str(tmp_path / "videos" / "v2.mp4"), "start_time": 0, "end_time": 2, "caption": "abs path", "video_id": "second"},
        {"path": "videos/missing.mp4", "start": 0, "end": 1, "sentence": "gone"},
        {"path": "videos/missing.mp4", "start": 2, "end": 3, "sentence": "gone too"},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows[:4]) + "\n{not json\n" + "\n".join(json.dumps(r) for r in rows[4:]) + "\n")

    jobs, problems = discover_inputs([str(manifest)])

    assert [(j.video_id, j.transcript_source) for j in jobs] == [("v1", "manifest"), ("second", "manifest")]
    assert jobs[0].video_path == str(tmp_path / "videos" / "v1.mp4")
    assert jobs[0].clips == [ClipRequest(1.0, 4.5, "early clip", None), ClipRequest(10.0, 15.0, "later clip", "v1-b")]
    assert jobs[1].clips == [ClipRequest(0.0, 2.0, "abs path", None)]
    found = reasons(problems)
    assert found[f"{manifest} row 3"] == "missing end"
    assert "not after start" in found[f"{manifest} row 4"]
    assert "invalid JSON" in found[f"{manifest} row 5"]
    assert "bad start time" in found[f"{manifest} row 6"]
    assert found[f"{manifest} row 7"] == "missing text"
    missing = str(tmp_path / "videos" / "missing.mp4")
    assert found[missing].startswith("video file not found (used by 2 row(s)")
    assert len(problems) == 6


def test_csv_manifest_with_video_root_and_bad_row(tmp_path):
    root = tmp_path / "store"
    touch(root / "clipA.webm")
    manifest = tmp_path / "lists" / "m.csv"
    manifest.parent.mkdir()
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Video_Path", "start_time", "end_time", "caption", "clip_id"])
        writer.writerow(["clipA.webm", "00:01:00.000", "00:01:05,500", "a cat, sleeping", ""])
        writer.writerow(["clipA.webm", "2", "", "no end time", "x"])
        writer.writerow(["clipA.webm", "0.5", "3", "first", "A0"])

    jobs, problems = discover_inputs([str(manifest)], video_root=str(root))

    assert len(jobs) == 1
    assert jobs[0].video_path == str(root / "clipA.webm")
    assert jobs[0].clips == [ClipRequest(0.5, 3.0, "first", "A0"), ClipRequest(60.0, 65.5, "a cat, sleeping", None)]
    assert [(p.input, p.reason) for p in problems] == [(f"{manifest} row 2", "missing end")]


def test_csv_manifest_without_a_text_column(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("video,start,end\nx.mp4,0,1\n")
    jobs, problems = discover_inputs([str(manifest)])
    assert jobs == []
    assert "text" in problems[0].reason and problems[0].input == str(manifest)


def test_parquet_manifest(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    touch(tmp_path / "v.mkv")
    table = pa.table(
        {
            "video": ["v.mkv", "v.mkv", "v.mkv", None],
            "start": ["00:00:05.000", "00:00:01.000", "00:00:09.000", "0"],
            "end": ["00:00:08.000", "00:00:03.000", "00:00:07.000", "1"],
            "text": ["second", "first", "backwards", "no video"],
            "clip_id": ["c2", "c1", "c3", "c4"],
        }
    )
    pq.write_table(table, tmp_path / "m.parquet")

    jobs, problems = discover_inputs([str(tmp_path / "m.parquet")])

    assert len(jobs) == 1 and jobs[0].video_id == "v"
    assert [(c.clip_id, c.start, c.end) for c in jobs[0].clips] == [("c1", 1.0, 3.0), ("c2", 5.0, 8.0)]
    found = reasons(problems)
    manifest = tmp_path / "m.parquet"
    assert "not after start" in found[f"{manifest} row 3"]
    assert found[f"{manifest} row 4"] == "missing video"


# ---------------------------------------------------------------------------------------------- HD-VILA-100M

def test_hdvila_jsonl_with_clip_text_sidecar_and_missing_video(tmp_path):
    videos = tmp_path / "videos"
    touch(videos / "abc.mp4")
    meta = tmp_path / "hdvila_part0.jsonl"
    lines = [
        {
            "video_id": "abc",
            "url": "https://www.youtube.com/watch?v=abc",
            "clip": [
                {"clip_id": "abc.2.mp4", "span": ["00:00:20.000", "00:00:31.250"]},
                {"clip_id": "abc.1.mp4", "span": ["00:00:01.500", "00:00:09.000"], "text": "inline text"},
                {"clip_id": "abc.3.mp4", "span": ["00:00:40.000", "00:00:45.000"]},
                {"clip_id": "abc.4.mp4", "span": ["00:00:50.000", "00:00:49.000"]},
            ],
        },
        {"video_id": "gone", "url": "https://x", "clip": [{"clip_id": "gone.1.mp4", "span": ["00:00:00.000", "00:00:05.000"]}]},
    ]
    meta.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    sidecar = tmp_path / "texts.jsonl"
    sidecar.write_text(
        json.dumps({"clip_id": "abc.2.mp4", "text": "from the sidecar"}) + "\n"
        + json.dumps({"clip_id": "abc.1.mp4", "text": "sidecar loses to inline"}) + "\n"
    )

    jobs, problems = discover_inputs([str(meta)], video_root=str(videos), clip_text=str(sidecar))

    assert len(jobs) == 1
    job = jobs[0]
    assert (job.video_id, job.video_path, job.transcript_source) == ("abc", str(videos / "abc.mp4"), "hdvila100m")
    assert job.clips == [
        ClipRequest(1.5, 9.0, "inline text", "abc.1.mp4"),
        ClipRequest(20.0, 31.25, "from the sidecar", "abc.2.mp4"),
    ]
    found = reasons(problems)
    assert "no text" in found["abc.3.mp4"]
    assert "not after start" in found["abc.4.mp4"]
    assert found["gone"].startswith("video file not found")
    assert "gone.1.mp4" not in found  # one problem for the missing video, none per clip
    assert len(problems) == 3


def test_hdvila_videos_default_to_the_jsonl_folder(tmp_path):
    touch(tmp_path / "xyz.webm")
    meta = tmp_path / "meta.jsonl"
    meta.write_text(json.dumps({"video_id": "xyz", "clip": [{"clip_id": "xyz.1.mp4", "span": ["00:00:00.000", "00:00:02.000"], "text": "t"}]}))
    jobs, problems = discover_inputs([str(meta)])
    assert not problems
    assert jobs[0].video_path == str(tmp_path / "xyz.webm")


# ---------------------------------------------------------------------------------------------- plan_clips

def test_plan_clips_clips_explicit_spans_to_the_video():
    job = VideoJob(
        "/v.mp4",
        "vid",
        clips=[
            ClipRequest(-2.0, 3.0, "starts before zero", "keep-me"),
            ClipRequest(5.0, 8.0, "inside"),
            ClipRequest(8.0, 14.0, "runs past the end"),
            ClipRequest(9.8, 12.0, "too short once clipped"),
            ClipRequest(12.0, 15.0, "after the end"),
            ClipRequest(4.0, 4.0, "zero length"),
        ],
        transcript_source="manifest",
    )
    clips, problems = plan_clips(job, 10.0, SentenceConfig())
    assert clips == [
        ClipRequest(0.0, 3.0, "starts before zero", "keep-me"),
        ClipRequest(5.0, 8.0, "inside", "vid_0001"),
        ClipRequest(8.0, 10.0, "runs past the end", "vid_0002"),
    ]
    found = reasons(problems)
    assert found["vid_0004"] == "span [12, 15] is outside the video (duration 10 s)"
    assert "shorter than 0.5 s" in found["vid_0003"]
    assert "does not end after it starts" in found["vid_0005"]
    assert {p.stage for p in problems} == {"plan"}


def test_plan_clips_from_a_transcript(tmp_path):
    transcript = touch(tmp_path / "t.srt", SRT.encode())
    job = VideoJob(str(tmp_path / "t.mp4"), "t", transcript_path=str(transcript), transcript_source="srt")
    clips, problems = plan_clips(job, 8.0, SentenceConfig(min_duration=1.0))
    assert problems == []
    assert clips == [
        ClipRequest(0.0, 5.0, "First sentence here.", "t_0000"),
        ClipRequest(5.0, 8.0, "Second one.", "t_0001"),  # clipped to the 8 s video
    ]


def test_plan_clips_reports_transcript_errors(tmp_path):
    transcript = touch(tmp_path / "t.vtt", b"WEBVTT\n\n00:01.000 --> 00:02.000\nbad \xff byte\n")
    job = VideoJob(str(tmp_path / "t.mp4"), "t", transcript_path=str(transcript), transcript_source="vtt")
    clips, problems = plan_clips(job, 10.0, SentenceConfig())
    assert clips == []
    assert len(problems) == 1
    assert problems[0].stage == "transcript" and problems[0].input == str(transcript)
    assert "UTF-8" in problems[0].reason
