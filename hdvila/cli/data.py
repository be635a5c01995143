"""`hdvila data ...`: ingest, synthesize and inspect video-text shards."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from hdvila.cli import log, split_overrides


def cmd_data_build(args: argparse.Namespace) -> int:
    from data_tools.config import load_config
    from data_tools.ingest.build import BuildFailed, build_shards
    from data_tools.ingest.config import BuildConfig

    inputs, overrides = split_overrides(args.inputs)
    overrides += args.overrides
    if not inputs:
        raise SystemExit("hdvila data build: give at least one input (folder, manifest or HD-VILA-100M JSONL)")
    if args.workers is not None:
        overrides.append(f"workers={args.workers}")
    if args.address is not None and args.engine != "ray":
        raise SystemExit("hdvila data build: --address is for --engine ray")
    cfg = load_config(BuildConfig, args.config or "data/build", overrides)
    try:
        report = build_shards(inputs, args.out, cfg, progress=not args.quiet, engine=args.engine,
                              ray_address=args.address)
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


def add_parser(subparsers) -> None:
    data = subparsers.add_parser("data", help="ingest, synthesize and inspect video-text shards")
    dsub = data.add_subparsers(dest="data_command", required=True)

    b = dsub.add_parser("build", help="videos + transcripts (or manifests) -> webdataset shards")
    b.add_argument("inputs", nargs="+", help="folders, manifests (.jsonl/.csv/.parquet) or HD-VILA-100M JSONL; "
                                             "plus dotted key=value config overrides")
    b.add_argument("--out", required=True, help="output folder for shards and build_report.json")
    b.add_argument("--workers", type=int, default=None,
                   help="parallel processes (local engine), or CPUs of the Ray instance started for the build")
    b.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: processes on this machine; ray: the plan and the cuts as Ray tasks")
    b.add_argument("--address", default=None,
                   help="Ray cluster to run on: 'auto' or HOST:PORT (default: start Ray on this machine)")
    b.add_argument("--config", default=None, help="config name or YAML path (default data/build)")
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
