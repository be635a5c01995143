"""Ingest: frame-accurate cuts, bad inputs become report entries, killed builds resume to identical shards."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import av
import numpy as np
import pytest
import webdataset as wds

from data_tools.config import load_config
from data_tools.ingest.build import BuildFailed, build_shards
from data_tools.ingest.config import BuildConfig, TranscodeConfig
from data_tools.ingest.transcripts import format_srt
from data_tools.ingest.transcode import cut_clip, output_size, proxy_size
from data_tools.media import probe_video
from data_tools.media.testclips import make_indexed_clip, read_frame_index

FPS = 25


def first_frames(data: bytes, n: int = 2) -> list[np.ndarray]:
    import io

    out = []
    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(video=0):
            out.append(frame.to_ndarray(format="rgb24"))
            if len(out) == n:
                break
    return out


@pytest.fixture(scope="module")
def indexed_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "indexed.mp4"
    # 12 s at 25 fps with sparse keyframes (every 5 s), so a stream copy could not cut accurately.
    make_indexed_clip(path, num_frames=12 * FPS, size=(96, 128), fps=FPS, keyint=125)
    return path


def small_cfg(**transcode) -> BuildConfig:
    cfg = load_config(BuildConfig, None, ["sentences.min_duration=1.0", "sentences.max_duration=6.0",
                                          "shards.samples_per_shard=2", "transcode.preset=ultrafast",
                                          "transcode.threads=1"])
    for k, v in transcode.items():
        setattr(cfg.transcode, k, v)
    return cfg


@pytest.mark.parametrize("start", [0.0, 1.0, 2.52, 7.31])
def test_cut_starts_at_the_source_frame_of_the_span_start(indexed_video, start):
    info = probe_video(indexed_video)
    media = cut_clip(indexed_video, info, start, start + 2.0, TranscodeConfig(preset="ultrafast", crf=18), threads=1)
    expected_first = int(np.floor(start * FPS + 1e-6))
    assert media.first_source_frame == expected_first
    frames = first_frames(media.mp4, n=3)
    assert [read_frame_index(f) for f in frames] == [expected_first, expected_first + 1, expected_first + 2]
    assert media.num_frames == round((start + 2.0 - expected_first / FPS) * FPS)


def test_cut_keeps_ntsc_rates_frame_accurate(tmp_path):
    src = tmp_path / "ntsc.mp4"
    make_indexed_clip(src, num_frames=150, size=(96, 128), fps="30000/1001", keyint=60)
    info = probe_video(src)
    media = cut_clip(src, info, 2.0, 3.0, TranscodeConfig(preset="ultrafast", crf=18), threads=1)
    assert media.fps == "30000/1001"
    assert read_frame_index(first_frames(media.mp4, 1)[0]) == int(np.floor(2.0 * 30000 / 1001))


def test_output_sizes_never_upscale_and_stay_even():
    assert output_size(1920, 1080, 720) == (1280, 720)
    assert output_size(1280, 720, 720) == (1280, 720)
    assert output_size(176, 144, 720) == (176, 144)
    assert output_size(1080, 1920, 720) == (720, 1280)  # portrait: the short side is the width
    assert output_size(641, 361, 720) == (640, 360)  # odd sizes round down, never up
    assert proxy_size(1280, 720, 180) == (320, 180)
    assert proxy_size(176, 144, 180) is None


def test_intra_only_proxy_has_every_frame_a_keyframe(indexed_video):
    import io

    info = probe_video(indexed_video)
    media = cut_clip(indexed_video, info, 3.0, 4.0,
                     TranscodeConfig(preset="ultrafast", crf=18, proxy_short_side=24, proxy_keyint=1), threads=1)
    with av.open(io.BytesIO(media.proxy)) as proxy, av.open(io.BytesIO(media.mp4)) as main:
        proxy_keys = [p.is_keyframe for p in proxy.demux(proxy.streams.video[0]) if p.size]
        main_keys = [p.is_keyframe for p in main.demux(main.streams.video[0]) if p.size]
    assert len(proxy_keys) == len(main_keys) == media.num_frames and all(proxy_keys)
    assert sum(main_keys) == 1  # the main stream keeps its GOP (1 s here: one keyframe in the second)
    with pytest.raises(ValueError, match="proxy_keyint"):
        cut_clip(indexed_video, info, 3.0, 4.0, TranscodeConfig(proxy_keyint=0, proxy_short_side=24), threads=1)


def test_proxy_stream_has_same_frames_at_quarter_size(indexed_video):
    info = probe_video(indexed_video)
    media = cut_clip(indexed_video, info, 3.0, 5.0,
                     TranscodeConfig(preset="ultrafast", crf=18, proxy_short_side=24), threads=1)
    assert (media.proxy_width, media.proxy_height) == (32, 24)
    main, proxy = first_frames(media.mp4, 2), first_frames(media.proxy, 2)
    assert proxy[0].shape == (24, 32, 3)
    assert [read_frame_index(f) for f in proxy] == [read_frame_index(f) for f in main] == [75, 76]


def make_bad_inputs(folder: Path, good_video: Path) -> dict[str, str]:
    """Every kind of bad input from the issue, next to two good videos; returns stem -> expected reason."""
    folder.mkdir(parents=True, exist_ok=True)
    good_srt = format_srt([(0.5, 2.5, "The first block counts up."), (3.0, 5.0, "Then it keeps counting.")])
    for stem in ("good_a", "good_b"):
        os.symlink(good_video, folder / f"{stem}.mp4")
        (folder / f"{stem}.srt").write_text(good_srt)
    expected = {}
    (folder / "zero.mp4").write_bytes(b"")
    expected["zero"] = "empty"
    data = good_video.read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 3])
    expected["truncated"] = ""
    (folder / "random.mp4").write_bytes(np.random.default_rng(0).bytes(50_000))
    expected["random"] = "not a media container"
    (folder / "text.mp4").write_text("this is not a video\n" * 100)
    expected["text"] = "not a media container"
    subprocess.run([_ffmpeg(), "-v", "error", "-f", "lavfi", "-i", "sine=frequency=440:duration=3",
                    "-c:a", "aac", str(folder / "audio_only.mp4")], check=True)
    expected["audio_only"] = "no video stream"
    for stem in expected:
        (folder / f"{stem}.srt").write_text(good_srt)
    os.symlink(good_video, folder / "no_transcript.mp4")
    expected["no_transcript"] = "no transcript"
    os.symlink(good_video, folder / "empty_transcript.mp4")
    (folder / "empty_transcript.srt").write_text("")
    expected["empty_transcript"] = ""
    os.symlink(good_video, folder / "bad_utf8.mp4")
    (folder / "bad_utf8.srt").write_bytes(b"1\n00:00:00,500 --> 00:00:02,500\nbad \xff\xfe bytes.\n")
    expected["bad_utf8"] = "UTF-8"
    os.symlink(good_video, folder / "outside.mp4")
    (folder / "outside.srt").write_text(format_srt([(100.0, 104.0, "This happens after the video ends.")]))
    expected["outside"] = ""
    return expected


def _ffmpeg():
    from data_tools.media import ffmpeg_exe
    return ffmpeg_exe()


def test_bad_inputs_are_reported_and_good_ones_survive(tmp_path, indexed_video):
    expected = make_bad_inputs(tmp_path / "in", indexed_video)
    report = build_shards([str(tmp_path / "in")], tmp_path / "out", small_cfg(), progress=False)
    assert report["clips_written"] == 4  # 2 good videos x 2 sentences
    failures = report["failures"]
    for stem, reason in expected.items():
        entries = [f for f in failures if Path(f["input"]).stem == stem]
        assert entries, f"no report entry for {stem}"
        assert reason.lower() in entries[0]["reason"].lower(), entries[0]
    on_disk = json.loads((tmp_path / "out" / "build_report.json").read_text())
    assert on_disk["clips_written"] == 4 and len(on_disk["failures"]) == len(failures)


def test_build_fails_clearly_when_nothing_is_valid(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "x.mp4").write_bytes(b"")
    (folder / "x.srt").write_text(format_srt([(0, 2, "Nothing.")]))
    with pytest.raises(BuildFailed, match="no clip"):
        build_shards([str(folder)], tmp_path / "out", small_cfg(), progress=False)
    cli = subprocess.run([sys.executable, "-m", "hdvila.cli", "--quiet", "data", "build", str(folder),
                          "--out", str(tmp_path / "out2")], capture_output=True, text=True)
    assert cli.returncode != 0 and "no clip" in cli.stderr


def test_shards_follow_the_video2dataset_layout(tmp_path, indexed_video):
    folder = tmp_path / "in"
    folder.mkdir()
    os.symlink(indexed_video, folder / "video.mp4")
    (folder / "video.srt").write_text(format_srt([(0.0, 2.0, "One."), (2.0, 4.0, "Two."), (4.0, 6.0, "Three.")]))
    cfg = small_cfg(proxy_short_side=24)
    build_shards([str(folder)], tmp_path / "out", cfg, progress=False)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("0000*")) == [
        "00000.parquet", "00000.tar", "00000_stats.json", "00001.parquet", "00001.tar", "00001_stats.json"]
    with tarfile.open(out / "00000.tar") as tar:
        names = tar.getnames()
    assert names == ["00000_0000.json", "00000_0000.mp4", "00000_0000.proxy.mp4", "00000_0000.txt",
                     "00000_0001.json", "00000_0001.mp4", "00000_0001.proxy.mp4", "00000_0001.txt"]
    samples = list(wds.WebDataset(str(out / "0000{0..1}.tar"), shardshuffle=False))
    assert [s["__key__"] for s in samples] == ["00000_0000", "00000_0001", "00001_0000"]
    assert all("." not in s["__key__"] for s in samples)
    meta = json.loads(samples[1]["json"])
    assert samples[1]["txt"].decode() == "Two."
    assert meta["span"] == [2.0, 4.0] and meta["source_frames"] == [50, 100] and meta["num_frames"] == 50
    assert meta["fps"] == "25/1" and (meta["width"], meta["height"]) == (128, 96)
    assert meta["proxy"] == {"width": 32, "height": 24}
    import pyarrow.parquet as pq

    table = pq.read_table(out / "00000.parquet").to_pylist()
    assert [r["key"] for r in table] == ["00000_0000", "00000_0001"] and table[0]["text"] == "One."
    stats = json.loads((out / "00000_stats.json").read_text())
    assert stats["count"] == 2 and stats["failed"] == 0


def tree_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.glob("0*")) if p.suffix in (".tar", ".parquet")}


def test_killed_build_resumes_to_identical_shards(tmp_path, indexed_video):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        os.symlink(indexed_video, folder / f"v{i}.mp4")
        (folder / f"v{i}.srt").write_text(format_srt([(0.0, 3.0, "Up."), (3.0, 6.0, "More."), (6.0, 9.0, "End.")]))
    args = [str(folder), "sentences.min_duration=1.0", "shards.samples_per_shard=2",
            "transcode.preset=ultrafast", "transcode.threads=1"]
    reference = tmp_path / "reference"
    cmd = [sys.executable, "-m", "hdvila.cli", "--quiet", "data", "build"]
    subprocess.run(cmd + args + ["--out", str(reference)], check=True, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + args + ["--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "00000.tar").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished_before = set(p.name for p in killed.glob("*.tar"))
    assert "00000.tar" in finished_before and len(finished_before) < 5, "kill came too late to test resuming"
    # a killed writer leaves at most temporaries, never a visible partial shard
    for tar in killed.glob("*.tar"):
        assert (killed / f"{tar.stem}_stats.json").exists()
    subprocess.run(cmd + args + ["--out", str(killed)], check=True, capture_output=True)
    report = json.loads((killed / "build_report.json").read_text())
    assert report["shards_skipped_as_finished"] >= 1
    assert not list(killed.glob(".*.tmp"))
    assert tree_digest(killed) == tree_digest(reference)
    assert len(tree_digest(reference)) == 10  # 9 clips, 2 per shard -> 5 shards (tar + parquet)


def test_resuming_into_a_folder_of_another_build_is_refused(tmp_path, indexed_video):
    folder = tmp_path / "in"
    folder.mkdir()
    os.symlink(indexed_video, folder / "video.mp4")
    (folder / "video.srt").write_text(format_srt([(0.0, 2.0, "One."), (2.0, 4.0, "Two.")]))
    build_shards([str(folder)], tmp_path / "out", small_cfg(), progress=False)
    again = build_shards([str(folder)], tmp_path / "out", small_cfg(), progress=False)  # same build: resumes
    assert again["shards_skipped_as_finished"] == 1
    other = small_cfg()
    other.shards.samples_per_shard = 1
    with pytest.raises(BuildFailed, match="other inputs or settings"):
        build_shards([str(folder)], tmp_path / "out", other, progress=False)
