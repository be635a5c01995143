"""The `hdvila` command. Subcommands import their packages lazily so `hdvila --help` stays fast.

    hdvila data build INPUT... --out DIR [--workers N] [--config FILE] [key=value ...]
    hdvila data synth --out DIR [--num-videos N] [--seed S] [key=value ...]    (e.g. height=96 width=128)
    hdvila data inspect SHARDS [--sheet PNG]
    hdvila data train-tokenizer --texts PATH... --out DIR [--vocab-size N]
    hdvila pretrain --config configs/pretrain/<size>.yaml [--resume] [key=value ...]
        also: torchrun --nproc_per_node N -m hdvila.cli pretrain ...; deepspeed --module hdvila.cli pretrain ...
    hdvila retrieval manifest --dataset msrvtt --annotations FILE --videos DIR --out MANIFEST.jsonl
    hdvila retrieval finetune --config configs/retrieval/<dataset>.yaml [--resume] [key=value ...]
    hdvila retrieval eval --config configs/retrieval/<dataset>.yaml [--model DIR] [--out DIR] [key=value ...]
    hdvila retrieval index --model DIR --shards PATTERN... --out INDEX_DIR [--kind flat|hnsw|ivf]
    hdvila retrieval search --index INDEX_DIR "a text query" [-k 10]
    hdvila diffusion train --config configs/diffusion/<name>.yaml [--resume] [key=value ...]
    hdvila diffusion sample --model RUN/model --out grid.png [--n 64] [--sampler heun --steps 25 ...]
    hdvila diffusion eval --model RUN/model [--samples 1000] [--out metrics.json]
    hdvila demo [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from data_tools.logs import get_logger, setup_logging

log = get_logger("hdvila")
_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")
REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _split_overrides(values: list[str]) -> tuple[list[str], list[str]]:
    """Positional arguments of the form dotted.key=value are config overrides; the rest are inputs."""
    overrides = [v for v in values if _OVERRIDE.match(v)]
    return [v for v in values if not _OVERRIDE.match(v)], overrides


def _default_config(*parts: str) -> str | None:
    path = REPO_CONFIGS.joinpath(*parts)
    return str(path) if path.is_file() else None


def cmd_data_build(args: argparse.Namespace) -> int:
    from data_tools.config import load_config
    from data_tools.ingest.build import BuildFailed, build_shards
    from data_tools.ingest.config import BuildConfig

    inputs, overrides = _split_overrides(args.inputs)
    overrides += args.overrides
    if not inputs:
        raise SystemExit("hdvila data build: give at least one input (folder, manifest or HD-VILA-100M JSONL)")
    if args.workers is not None:
        overrides.append(f"workers={args.workers}")
    cfg = load_config(BuildConfig, args.config or _default_config("data", "build.yaml"), overrides)
    try:
        report = build_shards(inputs, args.out, cfg, progress=not args.quiet)
    except BuildFailed as exc:
        log.error("%s", exc)
        return 1
    print(f"wrote {report['clips_written']} clips in {len(report['shards'])} shards to {args.out} "
          f"({report['problems']} problems listed in {Path(args.out) / 'build_report.json'})")
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    from data_tools.config import load_config, save_config
    from data_tools.synth import SynthConfig, synthesize_corpus

    overrides = list(args.overrides)
    if args.num_videos is not None:
        overrides.append(f"num_videos={args.num_videos}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    cfg = load_config(SynthConfig, args.config, overrides)
    summary = synthesize_corpus(args.out, cfg, progress=not args.quiet)
    save_config(cfg, Path(args.out) / "synth_config.yaml")
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from data_tools.shard_summary import summarize_shards

    summary = summarize_shards(args.shards, sheet_path=args.sheet or None, max_tiles=args.tiles,
                               progress=not args.quiet)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_data_train_tokenizer(args: argparse.Namespace) -> int:
    from data_tools.tokenizer import iter_caption_texts, train_tokenizer

    tok = train_tokenizer(iter_caption_texts(args.texts), args.out, vocab_size=args.vocab_size,
                          min_frequency=args.min_frequency)
    print(f"trained a WordPiece vocabulary of {tok.vocab_size} tokens into {args.out}")
    return 0


def _training_config(config_class, args: argparse.Namespace):
    """--config plus dotted overrides; --quiet also turns the progress bar off."""
    from data_tools.config import load_config

    overrides = list(args.overrides) + (["train.progress=false"] if args.quiet else [])
    return load_config(config_class, args.config, overrides)


def _print_summary(summary: dict | None) -> int:
    if summary is not None:  # ranks other than 0 have none
        print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2, default=str))
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from hdvila.recipes.pretrain import PretrainConfig, run_pretrain

    return _print_summary(run_pretrain(_training_config(PretrainConfig, args), resume=args.resume))


def _retrieval_config(args: argparse.Namespace):
    from data_tools.config import load_config
    from hdvila.recipes.retrieval import RetrievalConfig

    overrides = list(args.overrides) + (["train.progress=false"] if args.quiet else [])
    if getattr(args, "model", None):
        overrides.append(f"model={args.model}")
    return load_config(RetrievalConfig, args.config, overrides)


def cmd_retrieval_finetune(args: argparse.Namespace) -> int:
    from hdvila.recipes.retrieval import run_finetune

    return _print_summary(run_finetune(_retrieval_config(args), resume=args.resume))


def cmd_retrieval_eval(args: argparse.Namespace) -> int:
    from hdvila.retrieval.evaluate import markdown_table
    from hdvila.recipes.retrieval import run_eval

    cfg = _retrieval_config(args)
    results = run_eval(cfg, args.out, progress=not args.quiet)
    print(markdown_table(results))
    print(f"\nresults: {results['files']}")
    return 0


def cmd_retrieval_manifest(args: argparse.Namespace) -> int:
    from data_tools.config import parse_override
    from hdvila.retrieval.annotations import read_annotations, write_build_manifest

    options = {}
    for item in args.option:
        keys, value = parse_override(item)
        options[".".join(keys)] = value
    ann = read_annotations(args.dataset, args.annotations, split=args.split, **options)
    report = write_build_manifest(ann, args.videos, args.out)
    print(json.dumps({k: (v if not isinstance(v, list) or len(v) <= 20 else v[:20] + ["..."])
                      for k, v in report.items()}, indent=2, default=str))
    print(f"next: hdvila data build {args.out} --out SHARDS_DIR")
    return 0 if report.get("videos_written") else 1


def cmd_retrieval_index(args: argparse.Namespace) -> int:
    from hdvila.encoder import load_pretrained
    from hdvila.retrieval.clip_index import build_clip_index
    from hdvila.retrieval.index import IndexParams

    params = IndexParams(hnsw_m=args.hnsw_m, ef_construction=args.ef_construction, ef_search=args.ef_search,
                         nlist=args.nlist, nprobe=args.nprobe)
    info = build_clip_index(load_pretrained(args.model), args.shards, args.out, kind=args.kind, params=params,
                            model_dir=args.model, batch_size=args.batch_size, num_workers=args.workers,
                            progress=not args.quiet)
    print(f"indexed {info['count']} clips ({info['kind']}, {info['dim']} dims) into {args.out} "
          f"(encode {info['encode_seconds']} s, build {info['build_seconds']} s)")
    return 0


def cmd_retrieval_search(args: argparse.Namespace) -> int:
    from hdvila.encoder import load_pretrained
    from hdvila.retrieval.clip_index import format_hits, search_clips

    encoder = load_pretrained(args.model) if args.model else None
    queries = args.query
    results = search_clips(args.index, queries, k=args.k, encoder=encoder, ef_search=args.ef_search,
                           nprobe=args.nprobe)
    if args.json:
        print(json.dumps([{"query": q, "hits": h} for q, h in zip(queries, results)], indent=2, default=str))
    else:
        print("\n\n".join(format_hits(q, h) for q, h in zip(queries, results)))
    return 0


def cmd_diffusion_train(args: argparse.Namespace) -> int:
    from diffusion.train import DiffusionConfig, run_train

    return _print_summary(run_train(_training_config(DiffusionConfig, args), resume=args.resume))


def _sampler_overrides(args: argparse.Namespace) -> dict:
    values = {"name": args.sampler, "steps": args.steps, "grid": args.grid, "eta": args.eta,
              "guidance": args.guidance, "logsnr_min": args.logsnr_min, "logsnr_max": args.logsnr_max}
    return {k: v for k, v in values.items() if v is not None}


def cmd_diffusion_sample(args: argparse.Namespace) -> int:
    import torch

    from diffusion.train import generate, load_model, write_grid

    model, cfg = load_model(args.model)
    for key, value in _sampler_overrides(args).items():
        setattr(cfg.sampler, key, value)
    labels = None
    if args.label is not None:
        labels = torch.full((args.n,), args.label, dtype=torch.long)
    images = generate(model, cfg, args.n, args.seed, labels=labels, progress=not args.quiet)
    print(f"wrote {write_grid(images, Path(args.out))} ({args.n} samples, {cfg.sampler.name} "
          f"{cfg.sampler.steps} steps on a {cfg.sampler.grid} grid)")
    return 0


def cmd_diffusion_eval(args: argparse.Namespace) -> int:
    from data_tools.files import atomic_write_json
    from diffusion.train import evaluate_model

    metrics = evaluate_model(args.model, args.samples, _sampler_overrides(args))
    print(json.dumps(metrics, indent=2))
    if args.out:
        atomic_write_json(args.out, metrics)
    return 0


def cmd_animate_train_gan(args: argparse.Namespace) -> int:
    from animation.gan import GANConfig, run_train_gan

    return _print_summary(run_train_gan(_training_config(GANConfig, args), resume=args.resume))


def _hdvila_text_encoder(path: str):
    """The HD-VILA text encoder as a plain callable for the animation package (which never imports hdvila)."""
    import hdvila

    model = hdvila.load_pretrained(path)
    return model.encode_text


def cmd_animate_train(args: argparse.Namespace) -> int:
    from animation.animator import AnimatorConfig, run_train_animator

    cfg = _training_config(AnimatorConfig, args)
    return _print_summary(run_train_animator(cfg, _hdvila_text_encoder(cfg.text_model), resume=args.resume,
                                             progress=not args.quiet))


def cmd_animate_run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from animation.animator import AnimatorConfig, contact_sheet, load_animator, write_animation
    from data_tools.config import load_config
    from data_tools.training.distributed import pick_device
    from data_tools.images import save_image_grid

    cfg = load_config(AnimatorConfig, Path(args.model) / "config.yaml")
    device = pick_device() if args.device == "auto" else args.device
    runner = load_animator(args.model, _hdvila_text_encoder(args.text_model or cfg.text_model), device=device)
    with Image.open(args.image) as im:
        image = np.array(im.convert("RGB"))
    frames = runner.animate(image, [args.text], frames=args.frames, seed=args.seed)
    out = write_animation(frames[0], args.out, fps=args.fps)
    sheet = save_image_grid(contact_sheet(frames), Path(args.out).with_suffix(".png"), nrow=args.frames, scale=2)
    print(f"wrote {out} ({args.frames} frames) and the contact sheet {sheet}")
    return 0


def cmd_animate_crops(args: argparse.Namespace) -> int:
    from animation.face_crops import write_face_crops

    report = write_face_crops(args.source, args.out, args.size, detector=args.detector, align=not args.no_align,
                              margin=args.margin, every=args.every, max_frames=args.max_frames,
                              progress=not args.quiet)
    print(f"wrote {report.crops} crops of {report.frames} frames to {args.out} ({len(report.no_face)} without a "
          f"face, {len(report.unreadable)} unreadable sources; see crops_report.json)")
    return 0


def cmd_animate_eval(args: argparse.Namespace) -> int:
    from animation.animator import AnimatorConfig, contact_sheet
    from animation.evaluate import evaluate_animator
    from data_tools.config import load_config
    from data_tools.images import save_image_grid
    from data_tools.files import atomic_write_json

    cfg = load_config(AnimatorConfig, Path(args.model) / "config.yaml")
    metrics, clips, _ = evaluate_animator(args.model, _hdvila_text_encoder(args.text_model or cfg.text_model),
                                          faces=args.faces, frames=args.frames, seed=args.seed,
                                          with_gan_ceiling=args.gan_ceiling, sentences=args.sentences)
    print(json.dumps(metrics, indent=2))
    if args.out:
        atomic_write_json(args.out, metrics)
        # the first face doing every action, one row per sentence
        sheet = save_image_grid(contact_sheet(clips[:24]), Path(args.out).with_suffix(".png"), nrow=args.frames,
                                scale=2)
        print(f"wrote {args.out} and {sheet}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from hdvila.demo import run_demo

    return run_demo(args.out, quiet=args.quiet, pretrain_steps=args.pretrain_steps)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hdvila", description="HD-VILA video-language platform")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING, ERROR")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    # the `deepspeed` launcher passes --local_rank; LOCAL_RANK in the environment says the same
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="ingest, synthesize and inspect video-text shards")
    dsub = data.add_subparsers(dest="data_command", required=True)

    b = dsub.add_parser("build", help="videos + transcripts (or manifests) -> webdataset shards")
    b.add_argument("inputs", nargs="+", help="folders, manifests (.jsonl/.csv/.parquet) or HD-VILA-100M JSONL; "
                                             "plus dotted key=value config overrides")
    b.add_argument("--out", required=True, help="output folder for shards and build_report.json")
    b.add_argument("--workers", type=int, default=None, help="parallel processes")
    b.add_argument("--config", default=None, help="YAML (default configs/data/build.yaml)")
    b.set_defaults(func=cmd_data_build)

    s = dsub.add_parser("synth", help="synthetic captioned video corpus with a held-out split")
    s.add_argument("--out", required=True)
    s.add_argument("--num-videos", type=int, default=None)
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--config", default=None)
    s.set_defaults(func=cmd_data_synth)

    i = dsub.add_parser("inspect", help="counts, durations, resolutions and a contact sheet")
    i.add_argument("shards", nargs="+", help="shard paths, globs or brace patterns")
    i.add_argument("--sheet", default="contact_sheet.png", help="PNG contact sheet path ('' to skip)")
    i.add_argument("--tiles", type=int, default=12)
    i.set_defaults(func=cmd_data_inspect)

    t = dsub.add_parser("train-tokenizer", help="train a WordPiece caption vocabulary (offline)")
    t.add_argument("--texts", nargs="+", required=True, help="text/SRT/VTT/JSONL files or folders")
    t.add_argument("--out", required=True)
    t.add_argument("--vocab-size", type=int, default=8000)
    t.add_argument("--min-frequency", type=int, default=2)
    t.set_defaults(func=cmd_data_train_tokenizer)

    p = sub.add_parser("pretrain", help="HD-VILA pretraining under DeepSpeed (single process, torchrun or deepspeed)",
                       epilog="Any config key may follow as dotted key=value, e.g. train.max_steps=20 "
                              "data.train_shards='[shards/*.tar]' output_dir=runs/x")
    p.add_argument("--config", required=True, help="configs/pretrain/<size>.yaml")
    p.add_argument("--resume", action="store_true", help="continue from output_dir/checkpoints/latest")
    p.set_defaults(func=cmd_pretrain)

    r = sub.add_parser("retrieval", help="text-to-video retrieval: finetune, evaluate, index and search")
    rsub = r.add_subparsers(dest="retrieval_command", required=True)
    rm = rsub.add_parser("manifest", help="annotation file + video folder -> a build manifest whose clips "
                                          "carry the annotation's video ids")
    rm.add_argument("--dataset", required=True, help="msrvtt | didemo | activitynet | lsmdc | jsonl")
    rm.add_argument("--annotations", required=True, nargs="+")
    rm.add_argument("--videos", required=True, help="folder holding the videos (searched recursively)")
    rm.add_argument("--out", required=True, help="manifest .jsonl to write")
    rm.add_argument("--split", default="test")
    rm.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="reader option, e.g. video_list=MSRVTT_train.9k.csv or video_split=test")
    rm.set_defaults(func=cmd_retrieval_manifest)

    rf = rsub.add_parser("finetune", help="contrastive finetuning on the shared trainer",
                         epilog="Any config key may follow as dotted key=value")
    rf.add_argument("--config", required=True, help="configs/retrieval/<dataset>.yaml")
    rf.add_argument("--model", default=None, help="pretrained folder (overrides the config's model)")
    rf.add_argument("--resume", action="store_true")
    rf.set_defaults(func=cmd_retrieval_finetune)

    re_ = rsub.add_parser("eval", help="FAISS retrieval evaluation: R@1/5/10/50, MdR, MnR both ways")
    re_.add_argument("--config", required=True)
    re_.add_argument("--model", default=None, help="pretrained folder (overrides the config's model)")
    re_.add_argument("--out", default=None, help="report folder (default output_dir/eval)")
    re_.set_defaults(func=cmd_retrieval_eval)

    ri = rsub.add_parser("index", help="embed the clips of shards into a FAISS index folder")
    ri.add_argument("--model", required=True, help="pretrained folder")
    ri.add_argument("--shards", required=True, nargs="+", help="shard paths, globs or brace patterns")
    ri.add_argument("--out", required=True, help="index folder to write")
    ri.add_argument("--kind", default="flat", choices=("flat", "hnsw", "ivf"))
    ri.add_argument("--hnsw-m", type=int, default=32)
    ri.add_argument("--ef-construction", type=int, default=40,
                    help="HNSW build effort: on 1M clustered vectors 40 caps recall@10 near 0.9; on 100k, "
                         "200 built 4.5x slower and lifted it from 0.986 to 1.0 (docs/benchmarks/retrieval.md)")
    ri.add_argument("--ef-search", type=int, default=64)
    ri.add_argument("--nlist", type=int, default=None, help="IVF lists (default 4*sqrt(N))")
    ri.add_argument("--nprobe", type=int, default=16)
    ri.add_argument("--batch-size", type=int, default=16)
    ri.add_argument("--workers", type=int, default=2)
    ri.set_defaults(func=cmd_retrieval_index)

    rs = rsub.add_parser("search", help="top-k clips for text queries")
    rs.add_argument("--index", required=True, help="folder written by `hdvila retrieval index`")
    rs.add_argument("query", nargs="+", help="one or more text queries")
    rs.add_argument("-k", type=int, default=10)
    rs.add_argument("--model", default=None, help="pretrained folder (default: the one that built the index)")
    rs.add_argument("--ef-search", type=int, default=None)
    rs.add_argument("--nprobe", type=int, default=None)
    rs.add_argument("--json", action="store_true")
    rs.set_defaults(func=cmd_retrieval_search)

    df = sub.add_parser("diffusion", help="diffusion training (logSNR schedules, Min-SNR-γ), sampling, evaluation")
    dfsub = df.add_subparsers(dest="diffusion_command", required=True)
    dt = dfsub.add_parser("train", help="train a denoiser on the shared trainer",
                          epilog="Any config key may follow as dotted key=value, e.g. target=v weighting.name=min_snr")
    dt.add_argument("--config", required=True, help="configs/diffusion/<name>.yaml")
    dt.add_argument("--resume", action="store_true")
    dt.set_defaults(func=cmd_diffusion_train)
    for name, helptext in (("sample", "write a PNG grid of samples"), ("eval", "FD and SWD against held-out data")):
        dp = dfsub.add_parser(name, help=helptext)
        dp.add_argument("--model", required=True, help="an exported model folder (<output_dir>/model)")
        dp.add_argument("--sampler", choices=("ddim", "euler", "heun"), default=None)
        dp.add_argument("--steps", type=int, default=None)
        dp.add_argument("--grid", choices=("cosine", "linear", "schedule"), default=None,
                        help="spacing of the logSNR grid; schedule = quantiles of the training density")
        dp.add_argument("--logsnr-min", type=float, default=None, help="where sampling starts (noisy end)")
        dp.add_argument("--logsnr-max", type=float, default=None, help="where sampling stops (clean end)")
        dp.add_argument("--eta", type=float, default=None)
        dp.add_argument("--guidance", type=float, default=None)
        if name == "sample":
            dp.add_argument("--out", required=True, help="PNG path")
            dp.add_argument("--n", type=int, default=64)
            dp.add_argument("--seed", type=int, default=0)
            dp.add_argument("--label", type=int, default=None, help="class label (class-conditional models)")
            dp.set_defaults(func=cmd_diffusion_sample)
        else:
            dp.add_argument("--samples", type=int, default=None)
            dp.add_argument("--out", default=None, help="also write the metrics as JSON")
            dp.set_defaults(func=cmd_diffusion_eval)

    an = sub.add_parser("animate", help="StyleGAN2 and the language-guided face animator")
    ansub = an.add_subparsers(dest="animate_command", required=True)
    ag = ansub.add_parser("train-gan", help="train a StyleGAN2 on the shared trainer",
                          epilog="Any config key may follow as dotted key=value, e.g. data.kind=folder data.folder=...")
    ag.add_argument("--config", required=True, help="configs/animation/<name>.yaml")
    ag.add_argument("--resume", action="store_true")
    ag.set_defaults(func=cmd_animate_train_gan)
    at = ansub.add_parser("train", help="train the language-guided motion generator against a frozen StyleGAN2",
                          epilog="Any config key may follow as dotted key=value")
    at.add_argument("--config", required=True, help="configs/animation/<name>.yaml")
    at.add_argument("--resume", action="store_true")
    at.set_defaults(func=cmd_animate_train)
    ar = ansub.add_parser("run", help="animate a still face with a sentence: .mp4 or .gif plus a contact sheet")
    ar.add_argument("--model", required=True, help="an exported animator folder (<output_dir>/animator)")
    ar.add_argument("--image", required=True, help="a face image (any size; resized to the generator's)")
    ar.add_argument("--text", required=True, help='e.g. "the person smiles"')
    ar.add_argument("--frames", type=int, default=16)
    ar.add_argument("--fps", type=int, default=10)
    ar.add_argument("--seed", type=int, default=0)
    ar.add_argument("--out", required=True, help="out.mp4 or out.gif (the contact sheet goes beside it as .png)")
    ar.add_argument("--text-model", default=None, help="HD-VILA pretrained folder (default: the one it trained with)")
    ar.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda or cuda:N")
    ar.set_defaults(func=cmd_animate_run)
    ac = ansub.add_parser("crops", help="face crops (MTCNN detection and alignment, or centre squares) from videos, "
                                        "shards (.tar) or image folders, for data.kind=folder")
    ac.add_argument("source", nargs="+", help="video files, webdataset shards or image folders")
    ac.add_argument("--out", required=True, help="output folder (PNG crops + crops_report.json)")
    ac.add_argument("--size", type=int, default=64)
    ac.add_argument("--detector", default="mtcnn", choices=["mtcnn", "none"],
                    help="mtcnn needs facenet-pytorch (pip install --no-deps facenet-pytorch)")
    ac.add_argument("--no-align", action="store_true", help="square box crops instead of landmark alignment")
    ac.add_argument("--margin", type=float, default=0.35, help="space around the face, as a fraction of its size")
    ac.add_argument("--every", type=int, default=1, help="every n-th video frame")
    ac.add_argument("--max-frames", type=int, default=None, help="at most this many frames per video")
    ac.set_defaults(func=cmd_animate_crops)
    ae = ansub.add_parser("eval", help="held-out identities and sentences on the synthetic faces: text match, "
                                       "monotone motion, identity error, smoothness (see animation/evaluate.py)")
    ae.add_argument("--model", required=True, help="an exported animator folder (<output_dir>/animator)")
    ae.add_argument("--faces", type=int, default=8, help="held-out faces; each is animated with all 24 actions")
    ae.add_argument("--frames", type=int, default=16)
    ae.add_argument("--seed", type=int, default=1)
    ae.add_argument("--out", default=None, help="also write the metrics as JSON (and a contact sheet .png)")
    ae.add_argument("--sentences", default="test", choices=("test", "train"),
                    help="held-out paraphrases (default) or the training sentences (the faces stay held out)")
    ae.add_argument("--gan-ceiling", action="store_true",
                    help="also score the renderer's clips inverted into the GAN frame by frame (how much of each "
                         "true state the frozen generator reproduces; slower)")
    ae.add_argument("--text-model", default=None, help="HD-VILA pretrained folder (default: the one it trained with)")
    ae.set_defaults(func=cmd_animate_eval)

    d = sub.add_parser("demo", help="the main job end to end on the built-in corpus")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--pretrain-steps", type=int, default=None, help="override the small config's 300 steps")
    d.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides (dotted key=value) may come anywhere, also after options; argparse leaves them over.
    args, extra = parser.parse_known_args(argv)
    leftover = [e for e in extra if not _OVERRIDE.match(e)]
    if leftover and hasattr(args, "inputs") and not any(e.startswith("-") for e in leftover):
        args.inputs.extend(leftover)
        leftover = []
    if leftover:
        parser.error(f"unrecognized arguments: {' '.join(leftover)}")
    args.overrides = getattr(args, "overrides", []) + [e for e in extra if _OVERRIDE.match(e)]
    setup_logging(args.log_level)
    from data_tools.config import ConfigError

    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        parser.exit(2, f"hdvila: config error: {exc}\n")


if __name__ == "__main__":
    sys.exit(main())
