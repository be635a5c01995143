"""An index folder of tiny real shards for the search page's tests (an untrained tiny model: the tests check
the page and its API, not retrieval quality)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from hdvila.encoder import InferenceConfig, VideoTextEncoder
from hdvila.models import create_model
from hdvila.retrieval.clip_index import build_clip_index

from corpus_helpers import tiny_corpus_shards

# A caption that would run script or draw markup if the page parsed it as HTML.
HOSTILE_CAPTION = '<img src=x id="injected"> & <b id="bold">bold</b> "quoted"'


def chromium_path() -> str | None:
    return os.environ.get("HDVILA_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def artifacts_dir() -> Path:
    """Where browser tests keep their screenshots (kept after the run; `runs/` is git-ignored)."""
    folder = Path(os.environ.get("HDVILA_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "runs" /
                                 "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def build_serving_index(root: Path, kinds=("flat",)) -> dict[str, Path]:
    """Shards of the tiny corpus's training split, a saved tiny model, and one index folder per kind. The flat
    index's first caption is replaced by HOSTILE_CAPTION."""
    tiny_corpus_shards(root, {"train": root / "shards"})
    torch.manual_seed(0)
    encoder = VideoTextEncoder(create_model("hdvila-tiny").eval(), None,
                               InferenceConfig(n_segments=1, sample_rate=2, backend="pyav"))
    encoder.save_pretrained(root / "model")
    folders = {}
    for kind in kinds:
        folders[kind] = root / f"index-{kind}"
        build_clip_index(encoder, [str(root / "shards" / "*.tar")], folders[kind], kind=kind,
                         model_dir=root / "model", num_workers=0, progress=False)
    records_path = folders[kinds[0]] / "clips.jsonl"
    records = [json.loads(line) for line in records_path.read_text().splitlines()]
    records[0]["caption"] = HOSTILE_CAPTION
    records_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    folders["model"] = root / "model"
    folders["shards"] = root / "shards"
    return folders
