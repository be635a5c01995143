from __future__ import annotations

import re
from pathlib import Path

import pytest

from data_tools.corpus import STEMS, real_corpus_folder, real_corpus_transcripts, real_corpus_videos
from data_tools.media import probe_video

_CUE = re.compile(r"(\d+):(\d+):(\d+),(\d+) --> (\d+):(\d+):(\d+),(\d+)\n((?:.+\n?)+)")


def _cues(path: Path) -> list[tuple[float, float, str]]:
    out = []
    for m in _CUE.finditer(path.read_text()):
        g = [int(x) for x in m.groups()[:8]]
        out.append((g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000,
                    g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000,
                    " ".join(m.group(9).split())))
    return out


def test_videos_are_the_shipped_clips():
    videos = real_corpus_videos()
    assert sorted(videos) == sorted(STEMS)
    assert videos["carphone"].name == "carphone_pristine.mp4"
    assert all(p.is_file() for p in videos.values())


def test_folder_pairs_each_video_with_a_transcript(tmp_path):
    dest = real_corpus_folder(tmp_path / "real")
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        [f"{s}.mp4" for s in STEMS] + [f"{s}.srt" for s in STEMS])
    expected_size = {"bigbuckbunny": (1280, 720), "bikes": (640, 272), "carphone": (176, 144)}
    for stem in STEMS:
        info = probe_video(dest / f"{stem}.mp4")
        assert (info.width, info.height) == expected_size[stem]
        cues = _cues(dest / f"{stem}.srt")
        assert len(cues) >= 2
        assert (dest / f"{stem}.srt").read_text() == real_corpus_transcripts()[stem].read_text()
        prev_end = 0.0
        for start, end, text in cues:
            assert prev_end - 1e-6 <= start < end <= info.duration + 0.05, (stem, start, end, info.duration)
            assert text[-1] in ".!?" and len(text.split()) >= 5
            prev_end = end
        covered = sum(e - s for s, e, _ in cues)
        assert covered >= 0.9 * info.duration


def test_bikes_cues_follow_the_scene_cuts():
    # shots start at frames 0, 30, 76, 137, 187 (and a 0.3 s flash at 242) of the 25 fps clip
    starts = [s for s, _, _ in _cues(real_corpus_transcripts()["bikes"])]
    assert starts == pytest.approx([0.0, 1.2, 3.04, 5.48, 7.48])


def test_folder_is_idempotent_and_copies_when_links_fail(tmp_path, monkeypatch):
    dest = tmp_path / "real"
    real_corpus_folder(dest)
    real_corpus_folder(dest)  # existing links are replaced, not an error
    assert (dest / "bikes.mp4").is_symlink()

    def no_links(self, target, target_is_directory=False):
        raise OSError("symlinks not supported here")

    monkeypatch.setattr(Path, "symlink_to", no_links)
    copied = real_corpus_folder(tmp_path / "copied")
    for stem, src in real_corpus_videos().items():
        p = copied / f"{stem}.mp4"
        assert p.is_file() and not p.is_symlink()
        assert p.stat().st_size == src.stat().st_size
