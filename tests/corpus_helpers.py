"""Tiny captioned shards for the end-to-end tests: a synthetic corpus built into webdataset shards.

    root = tmp_path_factory.mktemp("pretrain")
    tiny_corpus_shards(root, {"train": root / "train", "heldout": root / "heldout"})
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from data_tools.config import load_config
from data_tools.ingest.build import build_shards
from data_tools.ingest.config import BuildConfig
from data_tools.synth import SynthConfig, synthesize_corpus

TINY_SYNTH = ["num_videos=8", "num_heldout_videos=2", "height=72", "width=96", "event_seconds=2.0"]
TINY_BUILD = ["sentences.min_duration=1.0", "transcode.preset=ultrafast", "shards.samples_per_shard=4", "workers=2"]


def tiny_corpus_shards(root: Path, splits: Mapping[str, Path]) -> Path:
    """Synthesize the 8 + 2 video corpus into root/corpus and build shards of each split ("train",
    "heldout") into its folder. Returns root."""
    synthesize_corpus(root / "corpus", load_config(SynthConfig, None, TINY_SYNTH), progress=False)
    cfg = load_config(BuildConfig, None, TINY_BUILD)
    for split, out in splits.items():
        build_shards([str(root / "corpus" / split)], out, cfg, progress=False)
    return root
