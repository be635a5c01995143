"""The `hdvila` command. Subcommands import their packages lazily so `hdvila --help` stays fast.

    hdvila data build INPUT... --out DIR [--workers N] [--config FILE] [key=value ...]
    hdvila data synth --out DIR [--num-videos N] [--seed S] [key=value ...]    (e.g. height=96 width=128)
    hdvila data inspect SHARDS [--sheet PNG]
    hdvila data train-tokenizer --texts PATH... --out DIR [--vocab-size N]
    hdvila pretrain --config configs/pretrain/<size>.yaml [--resume] [key=value ...]
        also: torchrun --nproc_per_node N -m hdvila.cli pretrain ...; deepspeed --module hdvila.cli pretrain ...
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
    from data_tools.inspect import summarize_shards

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


def cmd_pretrain(args: argparse.Namespace) -> int:
    from data_tools.config import load_config
    from hdvila.recipes.pretrain import PretrainConfig, run_pretrain

    overrides = list(args.overrides) + (["train.progress=false"] if args.quiet else [])
    cfg = load_config(PretrainConfig, args.config, overrides)
    summary = run_pretrain(cfg, resume=args.resume)
    if summary is not None:
        shown = {k: v for k, v in summary.items() if k != "config"}
        print(json.dumps(shown, indent=2, default=str))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from hdvila.demo import run_demo

    return run_demo(args.out, quiet=args.quiet)


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

    d = sub.add_parser("demo", help="the main job end to end on the built-in corpus")
    d.add_argument("--out", default="runs/demo")
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
