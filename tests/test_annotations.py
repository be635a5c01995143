"""Retrieval annotation readers: each public file layout, paragraph order, errors, build manifests."""
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from data_tools.ingest.config import SentenceConfig
from data_tools.ingest.sources import discover_inputs, plan_clips
from data_tools.media.probe import ProbeError
from data_tools.media.testclips import make_indexed_clip
from hdvila.retrieval.annotations import (
    READERS,
    AnnotationError,
    RetrievalAnnotations,
    read_annotations,
    video_file_index,
    write_build_manifest,
)


def write(folder: Path, name: str, content) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content), encoding="utf-8")
    return path


def jsonl(rows) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


# Sentences are interleaved across videos, as in the real MSRVTT_data.json (ordered by sen_id).
MSRVTT_DATA = {
    "info": {"year": 2016},
    "videos": [
        {"video_id": "video0", "split": "train", "category": 9, "url": "u0", "id": 0},
        {"video_id": "video1", "split": "train", "category": 3, "url": "u1", "id": 1},
        {"video_id": "video2", "split": "validate", "category": 1, "url": "u2", "id": 2},
        {"video_id": "video3", "split": "test", "category": 4, "url": "u3", "id": 3},
        {"video_id": "video4", "split": "test", "category": 4, "url": "u4", "id": 4},
    ],
    "sentences": [
        {"caption": "a man is  cooking", "video_id": "video3", "sen_id": 0},
        {"caption": "a dog runs", "video_id": "video0", "sen_id": 1},
        {"caption": "a cat sleeps", "video_id": "video1", "sen_id": 2},
        {"caption": "  a dog\tplays ", "video_id": "video0", "sen_id": 3},
        {"caption": "people talk", "video_id": "video2", "sen_id": 4},
        {"caption": "a dog barks", "video_id": "video0", "sen_id": 5},
        {"caption": "someone cooks food", "video_id": "video3", "sen_id": 6},
        {"caption": "   ", "video_id": "video4", "sen_id": 7},  # blank: dropped, and video4 with it
    ],
}

JSFUSION_CSV = (
    "key,vid_key,video_id,sentence\n"
    "ret0,msr7020,video7020,\"a woman, smiling, talks\"\n"
    "ret1,msr7021,video7021,a car drives\n"
    "ret2,msr7022,video7022,kids play  football\n"
)

DIDEMO = [  # video A's sentences are listed out of temporal order
    {"annotation_id": 11, "description": "the girl jumps", "video": "12090392@N02_13482799053_87ef417396.mov",
     "times": [[2, 2], [2, 3], [3, 3]], "dl_link": "x"},
    {"annotation_id": 12, "description": "a girl stands", "video": "12090392@N02_13482799053_87ef417396.mov",
     "times": [[1, 1], [0, 1], [1, 2]], "dl_link": "x"},
    {"annotation_id": 13, "description": "another view", "video": "98765432@N00_2468_abcdef.mp4",
     "times": [[4, 5]], "dl_link": "y"},
    {"annotation_id": 14, "description": "she lands", "video": "12090392@N02_13482799053_87ef417396.mov",
     "times": [[3, 3], [2, 2]], "dl_link": "x"},  # earliest start 2: ties with id 11, so after it
]
DIDEMO_A = "12090392@N02_13482799053_87ef417396"

ACTIVITYNET = {
    "v_QOlSCBRmfWY": {"duration": 82.73, "timestamps": [[30.0, 50.5], [0.83, 19.86], [17.37, 60.81]],
                      "sentences": [" Then she dances.", "A girl walks in.", "She starts  to sing."]},
    "v_ehGHCYKzyZ8": {"duration": 61.72, "timestamps": [[0, 61.72]], "sentences": ["A man plays a drum."]},
}

LSMDC = (
    "1001_Flight_00.00.31.826-00.00.33.166\t00.00.31.826\t00.00.33.166\t00.00.31.000\t00.00.34.000\t"
    "SOMEONE looks\tat the plane.\n"
    "1001_Flight_00.00.35.000-00.00.37.000\t00.00.35.000\t00.00.37.000\t00.00.35.000\t00.00.37.000\tHe waves.\n"
    "\n"
)


# ---------------------------------------------------------------------------------------------- MSR-VTT

def test_msrvtt_data_json_groups_captions_by_video_in_videos_order(tmp_path):
    ann = read_annotations("msrvtt", write(tmp_path, "MSRVTT_data.json", MSRVTT_DATA), split="all")
    assert ann.dataset == "msrvtt" and ann.split == "all"
    assert ann.video_ids == ["video0", "video1", "video2", "video3"]
    assert ann.captions == ["a dog runs", "a dog plays", "a dog barks", "a cat sleeps", "people talk",
                            "a man is cooking", "someone cooks food"]
    assert ann.caption_video == [0, 0, 0, 1, 2, 3, 3]
    assert len(ann) == 7
    assert ann.positives_t2v() == [[0], [0], [0], [1], [2], [3], [3]]
    assert ann.positives_v2t() == [[0, 1, 2], [3], [4], [5, 6]]
    assert ann.captions_of("video3") == ["a man is cooking", "someone cooks food"]
    with pytest.raises(KeyError, match="video4"):
        ann.captions_of("video4")
    assert ann.summary() == {"dataset": "msrvtt", "split": "all", "videos": 4, "captions": 7,
                             "captions_per_video_min": 1, "captions_per_video_mean": 1.75,
                             "captions_per_video_max": 3}


def test_msrvtt_video_split_filters_by_the_videos_split(tmp_path):
    path = write(tmp_path, "MSRVTT_data.json", MSRVTT_DATA)
    assert read_annotations("msrvtt", path, video_split="train").video_ids == ["video0", "video1"]
    assert read_annotations("msrvtt", path, video_split="validate").captions == ["people talk"]
    with pytest.raises(AnnotationError, match="video_split must be one of"):
        read_annotations("msrvtt", path, video_split="val")


@pytest.mark.parametrize("list_kind", ["csv", "txt", "python"])
def test_msrvtt_video_list_defines_the_9k_style_split(tmp_path, caplog, list_kind):
    data = write(tmp_path, "MSRVTT_data.json", MSRVTT_DATA)
    ids = ["video3", "video0", "video9"]  # video9 is not in the data json
    video_list = {
        "csv": write(tmp_path, "MSRVTT_train.9k.csv", "video_id\n" + "\n".join(ids) + "\n"),
        "txt": write(tmp_path, "train_list.txt", "\n".join(ids) + "\n\n"),
        "python": ids,
    }[list_kind]
    with caplog.at_level(logging.WARNING):
        ann = read_annotations("msrvtt", data, split="train", video_list=video_list)
    assert ann.video_ids == ["video0", "video3"]  # the annotation's order, not the list's
    assert ann.caption_video == [0, 0, 0, 1, 1]
    assert "1 of 3 ids in video_list" in caplog.text and "video9" in caplog.text


def test_msrvtt_jsfusion_csv_one_caption_per_video(tmp_path):
    ann = read_annotations("msrvtt", write(tmp_path, "MSRVTT_JSFUSION_test.csv", JSFUSION_CSV))
    assert ann.video_ids == ["video7020", "video7021", "video7022"]
    assert ann.captions == ["a woman, smiling, talks", "a car drives", "kids play football"]
    assert ann.positives_t2v() == [[0], [1], [2]]
    assert ann.positives_v2t() == [[0], [1], [2]]


def test_msrvtt_hdvila_jsonl_with_a_list_of_texts(tmp_path):
    path = write(tmp_path, "train9k.jsonl", jsonl([
        {"clip_name": "video7010", "text": ["a man sings", "someone  sings a song"]},
        {"clip_name": "video7011", "text": "a bird flies"},
        {"clip_name": "video7010", "text": ["a singer on stage"]},
    ]))
    ann = read_annotations("msrvtt", path, split="train")
    assert ann.video_ids == ["video7010", "video7011"]
    assert ann.captions_of("video7010") == ["a man sings", "someone sings a song", "a singer on stage"]
    assert ann.positives_v2t() == [[0, 1, 2], [3]]


def test_several_files_are_read_as_one_annotation_set(tmp_path):
    first = write(tmp_path, "a.jsonl", jsonl([{"clip_name": "v1", "text": "one"}]))
    second = write(tmp_path, "b.jsonl", jsonl([{"clip_name": "v2", "text": "two"}, {"clip_name": "v1", "text": "uno"}]))
    ann = read_annotations("msrvtt", [first, str(second)])
    assert ann.video_ids == ["v1", "v2"]
    assert ann.captions == ["one", "uno", "two"]


# ---------------------------------------------------------------------------------------------- DiDeMo

def test_didemo_paragraphs_follow_the_earliest_segment_then_file_order(tmp_path):
    ann = read_annotations("didemo", write(tmp_path, "test_data.json", DIDEMO))
    assert ann.video_ids == [DIDEMO_A, "98765432@N00_2468_abcdef"]
    assert ann.captions == ["a girl stands the girl jumps she lands", "another view"]
    assert ann.positives_v2t() == [[0], [1]]


def test_didemo_sentence_mode_keeps_each_description(tmp_path):
    ann = read_annotations("didemo", write(tmp_path, "val_data.json", DIDEMO), split="val", paragraph=False)
    assert ann.captions_of(DIDEMO_A) == ["the girl jumps", "a girl stands", "she lands"]
    assert len(ann) == 4


def test_didemo_accepts_hdvila_jsonl(tmp_path):
    path = write(tmp_path, "didemo_test.jsonl", jsonl([{"clip_name": "vid_a", "text": ["first part", "second part"]}]))
    ann = read_annotations("didemo", path)
    assert ann.captions == ["first part second part"]


# ---------------------------------------------------------------------------------------------- ActivityNet

def test_activitynet_paragraphs_in_timestamp_order(tmp_path):
    ann = read_annotations("activitynet", write(tmp_path, "val_1.json", ACTIVITYNET), split="val1")
    assert ann.video_ids == ["v_QOlSCBRmfWY", "v_ehGHCYKzyZ8"]
    assert ann.captions == ["A girl walks in. She starts to sing. Then she dances.", "A man plays a drum."]
    sentences = read_annotations("activitynet", write(tmp_path, "val_2.json", ACTIVITYNET), paragraph=False)
    assert sentences.captions_of("v_QOlSCBRmfWY") == ["Then she dances.", "A girl walks in.", "She starts to sing."]


def test_activitynet_accepts_hdvila_jsonl(tmp_path):
    path = write(tmp_path, "anet.jsonl", jsonl([{"clip_name": "v_x", "text": "whole paragraph here"}]))
    assert read_annotations("activitynet", path).captions == ["whole paragraph here"]


# ---------------------------------------------------------------------------------------------- LSMDC / jsonl

def test_lsmdc_sentence_runs_to_the_end_of_the_line(tmp_path):
    ann = read_annotations("lsmdc", write(tmp_path, "LSMDC16_challenge_1000_publictect.csv", LSMDC))
    assert ann.video_ids == ["1001_Flight_00.00.31.826-00.00.33.166", "1001_Flight_00.00.35.000-00.00.37.000"]
    assert ann.captions == ["SOMEONE looks at the plane.", "He waves."]


def test_generic_jsonl_id_and_text_keys(tmp_path):
    path = write(tmp_path, "any.jsonl", jsonl([
        {"video_id": "a", "caption": "first"},
        {"video": "b", "sentences": ["second", "third"]},
        {"clip_id": 7, "sentence": "fourth"},
    ]))
    ann = read_annotations("jsonl", path)
    assert ann.video_ids == ["a", "b", "7"]
    assert ann.positives_v2t() == [[0], [1, 2], [3]]


# ---------------------------------------------------------------------------------------------- subset

def test_subset_keeps_own_order_and_remaps_indices(tmp_path):
    ann = read_annotations("msrvtt", write(tmp_path, "MSRVTT_data.json", MSRVTT_DATA))
    part = ann.subset(["video3", "video0"])
    assert part.video_ids == ["video0", "video3"]
    assert part.captions == ["a dog runs", "a dog plays", "a dog barks", "a man is cooking", "someone cooks food"]
    assert part.caption_video == [0, 0, 0, 1, 1]
    assert part.positives_v2t() == [[0, 1, 2], [3, 4]]
    assert len(ann) == 7  # the original is untouched
    with pytest.raises(KeyError, match="video77"):
        ann.subset(["video0", "video77"])
    with pytest.raises(TypeError):
        ann.subset("video0")


def test_inconsistent_hand_built_annotations_are_rejected():
    with pytest.raises(ValueError, match="outside"):
        RetrievalAnnotations("jsonl", "test", ["a"], ["x", "y"], [0, 1])
    with pytest.raises(ValueError, match="unique"):
        RetrievalAnnotations("jsonl", "test", ["a", "a"], ["x"], [0])


# ---------------------------------------------------------------------------------------------- errors

ERROR_CASES = {
    "missing file": ("msrvtt", "nothing_here.json", None, {}, "file not found"),
    "invalid json": ("activitynet", "val_1.json", '{"v_a": {"timestamps": [[0, 1]],', {}, "invalid JSON at line 1"),
    "not utf-8": ("lsmdc", "bad.csv", b"\xff\xfe\x00garbage\tx", {}, "not valid UTF-8"),
    "msrvtt json without sentences": ("msrvtt", "info.json", {"videos": []}, {}, "'videos' and 'sentences'"),
    "msrvtt sentence of unknown video": (
        "msrvtt", "data.json", {"videos": [{"video_id": "video0", "split": "train"}],
                                "sentences": [{"caption": "x", "video_id": "video0"},
                                              {"caption": "y", "video_id": "video8"}]},
        {}, r"sentences\[1\]: video 'video8' is not listed"),
    "msrvtt video without split": (
        "msrvtt", "data.json", {"videos": [{"video_id": "video0"}], "sentences": [{"caption": "x", "video_id": "video0"}]},
        {"video_split": "test"}, r"videos\[0\]: no 'split'"),
    "video list passed as annotations": ("msrvtt", "MSRVTT_train.9k.csv", "video_id\nvideo0\n", {}, "video_list="),
    "video_split on a csv": ("msrvtt", "test.csv", JSFUSION_CSV, {"video_split": "test"}, "needs the MSR-VTT data json"),
    "jsonl row not an object": ("msrvtt", "t.jsonl", '{"clip_name": "a", "text": "x"}\n[1, 2]\n', {},
                                "line 2: expected a JSON object"),
    "jsonl without id": ("jsonl", "t.jsonl", '{"name": "a", "text": "x"}\n', {},
                         r"line 1: expected an id .*found keys \['name', 'text'\]"),
    "jsonl text of wrong type": ("jsonl", "t.jsonl", '{"video_id": "a", "text": ["x", 3]}\n', {}, r"line 1, text\[1\]"),
    "didemo not a list": ("didemo", "test_data.json", {"a": 1}, {}, "expected a JSON list"),
    "didemo entry without times": (
        "didemo", "test_data.json", [{"annotation_id": 5, "description": "x", "video": "a.mov"}],
        {}, r"entry 0 \(annotation_id 5\): missing times"),
    "didemo bad time pair": (
        "didemo", "test_data.json", [{"annotation_id": 6, "description": "x", "video": "a.mov", "times": [[1, 2], [3]]}],
        {}, r"annotation_id 6\), times\[1\]: expected a \[start, end\] pair"),
    "activitynet length mismatch": (
        "activitynet", "train.json", {"v_ok": {"timestamps": [[0, 1]], "sentences": ["a"]},
                                      "v_bad": {"timestamps": [[0, 1], [1, 2]], "sentences": ["a"]}},
        {}, "key 'v_bad': 2 timestamps but 1 sentences"),
    "activitynet non-numeric time": (
        "activitynet", "train.json", {"v_a": {"timestamps": [["x", 1]], "sentences": ["a"]}},
        {}, r"key 'v_a', timestamps\[0\]: expected a number"),
    "lsmdc short row": ("lsmdc", "LSMDC16_annos_val.csv", LSMDC + "1001_Flight_x\t1\t2\t3\tno sentence column\n", {},
                        "line 4: expected 6 tab-separated columns"),
    "only blank captions": ("lsmdc", "blank.csv", "clip1\t1\t2\t3\t4\t   \n", {}, "no captions found"),
    "unknown option": ("didemo", "test_data.json", DIDEMO, {"video_split": "test"}, "not understood by the didemo reader"),
    "video list matching nothing": ("didemo", "test_data.json", DIDEMO, {"video_list": ["other"]},
                                    "none of the 1 videos in video_list"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_malformed_input_raises_annotation_error_naming_the_place(tmp_path, case):
    dataset, name, content, options, message = ERROR_CASES[case]
    path = tmp_path / name if content is None else write(tmp_path, name, content)
    with pytest.raises(AnnotationError, match=message) as info:
        read_annotations(dataset, path, **options)
    if "option" not in case:
        assert str(path) in str(info.value)


def test_unknown_dataset_lists_the_readers(tmp_path):
    with pytest.raises(AnnotationError) as info:
        read_annotations("youcook2", tmp_path / "x.json")
    assert all(name in str(info.value) for name in READERS)


def test_a_folder_is_not_an_annotation_file(tmp_path):
    with pytest.raises(AnnotationError, match="is a folder"):
        read_annotations("lsmdc", tmp_path)


# ---------------------------------------------------------------------------------------------- manifests

def fake_probe(durations: dict[str, float]):
    def probe(path):
        name = Path(path).name
        if name not in durations:
            raise ProbeError("not a media container (invalid data)")
        return SimpleNamespace(duration=durations[name])
    return probe


def test_video_file_index_walks_subfolders_and_keeps_the_first_repeat(tmp_path, caplog):
    videos = tmp_path / "videos"
    for name in ["1001_Flight/1001_Flight_00.00.31.826-00.00.33.166.avi", f"{DIDEMO_A}.mov",
                 "a/dup.mp4", "b/dup.MKV", "notes.txt", "._hidden.mp4"]:
        write(videos, name, b"x")
    with caplog.at_level(logging.WARNING):
        index = video_file_index(videos)
    assert set(index) == {"1001_Flight_00.00.31.826-00.00.33.166", DIDEMO_A, "dup"}
    assert index["dup"] == videos / "a" / "dup.mp4"
    assert "repeat" in caplog.text and "dup.MKV" in caplog.text
    with pytest.raises(NotADirectoryError):
        video_file_index(tmp_path / "absent")


def test_build_manifest_with_fake_probe_is_accepted_by_the_build(tmp_path):
    ann = read_annotations("didemo", write(tmp_path, "test_data.json", DIDEMO), paragraph=False)
    ann = RetrievalAnnotations("didemo", "test", ann.video_ids + ["missing_video"], ann.captions + ["gone"],
                               ann.caption_video + [2])
    videos = tmp_path / "videos"
    write(videos, f"flickr/{DIDEMO_A}.mov", b"x")
    write(videos, "98765432@N00_2468_abcdef.mp4", b"x")
    probe = fake_probe({f"{DIDEMO_A}.mov": 95.25})  # long whole video; the other one fails to probe

    report = write_build_manifest(ann, videos, tmp_path / "out" / "manifest.jsonl", probe=probe)

    assert report["videos_written"] == 1 and report["missing"] == ["missing_video"]
    assert [u["video_id"] for u in report["unreadable"]] == ["98765432@N00_2468_abcdef"]
    assert "not a media container" in report["unreadable"][0]["reason"]
    rows = [json.loads(line) for line in Path(report["manifest"]).read_text().splitlines()]
    assert rows == [{"video": str((videos / "flickr" / f"{DIDEMO_A}.mov").resolve()), "start": 0.0, "end": 95.25,
                     "text": "the girl jumps", "clip_id": DIDEMO_A, "video_id": DIDEMO_A}]
    assert not list((tmp_path / "out").glob(".*.tmp"))

    jobs, problems = discover_inputs([report["manifest"]])
    assert problems == []
    assert [(job.video_id, [clip.clip_id for clip in job.clips]) for job in jobs] == [(DIDEMO_A, [DIDEMO_A])]
    # The build keeps a manifest span whole: sentences.max_duration (20 s) only splits transcript sentences.
    clips, clip_problems = plan_clips(jobs[0], 95.25, SentenceConfig())
    assert clip_problems == [] and [(c.start, c.end, c.clip_id) for c in clips] == [(0.0, 95.25, DIDEMO_A)]


def test_build_manifest_rejects_too_short_videos_and_needs_some_video(tmp_path):
    ann = read_annotations("msrvtt", write(tmp_path, "t.csv", JSFUSION_CSV))
    videos = tmp_path / "videos"
    for video_id in ann.video_ids:
        write(videos, f"{video_id}.mp4", b"x")
    report = write_build_manifest(ann, videos, tmp_path / "m.jsonl",
                                  probe=fake_probe({"video7020.mp4": 0.2, "video7021.mp4": 3.0, "video7022.mp4": 0.0}))
    assert report["videos_written"] == 1
    reasons = {u["video_id"]: u["reason"] for u in report["unreadable"]}
    assert "shorter than the build's minimum" in reasons["video7020"] and "not positive" in reasons["video7022"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="3 not found"):
        write_build_manifest(ann, (tmp_path / "empty").resolve(), tmp_path / "m2.jsonl", probe=fake_probe({}))
    assert not (tmp_path / "m2.jsonl").exists()
    with pytest.raises(ValueError, match=".jsonl"):
        write_build_manifest(ann, videos, tmp_path / "m.csv", probe=fake_probe({}))


def test_build_manifest_with_real_videos(tmp_path):
    ann = read_annotations("msrvtt", write(tmp_path, "test1ka.jsonl", jsonl([
        {"clip_name": "video7010", "text": ["a man sings", "a song"]},
        {"clip_name": "video7011", "text": "broken file"},
    ])))
    videos = tmp_path / "videos"
    make_indexed_clip(videos / "video7010.mp4", num_frames=25, size=(64, 64), fps=25, preset="ultrafast")
    write(videos, "video7011.mp4", b"this is not a video")

    report = write_build_manifest(ann, videos, tmp_path / "manifest.jsonl")

    assert report["videos_written"] == 1 and report["missing"] == []
    assert report["unreadable"][0]["video_id"] == "video7011"
    row = json.loads((tmp_path / "manifest.jsonl").read_text())
    assert row["end"] == pytest.approx(1.0, abs=0.05) and row["text"] == "a man sings"
    jobs, problems = discover_inputs([str(tmp_path / "manifest.jsonl")])
    assert problems == []
    assert jobs[0].video_id == "video7010" and [c.clip_id for c in jobs[0].clips] == ["video7010"]


def test_build_manifest_finds_activitynet_files_saved_without_the_v_prefix(tmp_path):
    ann = read_annotations("activitynet", write(tmp_path, "val_1.json", ACTIVITYNET))
    videos = tmp_path / "videos"
    write(videos, "QOlSCBRmfWY.mp4", b"x")       # downloaded without the prefix
    write(videos, "v_ehGHCYKzyZ8.mkv", b"x")     # and with it
    report = write_build_manifest(ann, videos, tmp_path / "m.jsonl",
                                  probe=fake_probe({"QOlSCBRmfWY.mp4": 82.7, "v_ehGHCYKzyZ8.mkv": 61.7}))
    rows = [json.loads(line) for line in Path(report["manifest"]).read_text().splitlines()]
    assert report["missing"] == []
    assert [(Path(r["video"]).name, r["clip_id"]) for r in rows] == [("QOlSCBRmfWY.mp4", "v_QOlSCBRmfWY"),
                                                                     ("v_ehGHCYKzyZ8.mkv", "v_ehGHCYKzyZ8")]
