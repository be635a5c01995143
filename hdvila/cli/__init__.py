"""The `hdvila` command: one module per command group, each adding its subparsers with `add_parser(subparsers)`.
Subcommands import their packages lazily so `hdvila --help` stays fast. Configs are names under hdvila/configs
(e.g. `pretrain/small`) or paths to YAML files.

    hdvila data build INPUT... --out DIR [--workers N] [--config NAME] [key=value ...]
    hdvila data synth --out DIR [--num-videos N] [--seed S] [--config NAME] [key=value ...]    (e.g. height=96 width=128)
    hdvila data inspect SHARDS [--sheet PNG] [--tiles N]
    hdvila data train-tokenizer --texts PATH... --out DIR [--vocab-size N] [--min-frequency N]
    hdvila pretrain --config pretrain/<size> [--resume] [key=value ...]
        also: torchrun --nproc_per_node N -m hdvila.cli pretrain ...; deepspeed --module hdvila.cli pretrain ...
    hdvila pretrained migrate DIR [--out DIR]
    hdvila retrieval manifest --dataset msrvtt --annotations FILE --videos DIR --out MANIFEST.jsonl
    hdvila retrieval finetune --config retrieval/<dataset> [--model DIR] [--resume] [key=value ...]
    hdvila retrieval eval --config retrieval/<dataset> [--model DIR] [--out DIR] [key=value ...]
    hdvila retrieval index --model DIR --shards PATTERN... --out INDEX_DIR [--kind flat|hnsw|ivf]
    hdvila retrieval search --index INDEX_DIR "a text query" [-k 10]
    hdvila serve --index INDEX_DIR [--model DIR] [--host 127.0.0.1] [--port 8000]
    hdvila diffusion train --config diffusion/<name> [--resume] [key=value ...]
    hdvila diffusion sample --model RUN/model --out grid.png [--n 64] [--sampler heun --steps 25 ...]
    hdvila diffusion eval --model RUN/model [--samples 1000] [--out metrics.json]
    hdvila instruct train --config instruct/<name> [--resume] [key=value ...]
    hdvila instruct edit --model RUN/model --image IN.png --text "Make the red circle blue." --out OUT.png
    hdvila instruct eval --model RUN/model [--split val|test] [--out DIR] [--sweep]
    hdvila spo spm-train --config spo/spm [key=value ...]
    hdvila spo train --config spo/digits [--resume] [method=trajectory_dpo continue_rule=winner finetune=lora ...]
    hdvila spo eval --model RUN/model [--samples 1000] [--seed 2024] [--out metrics.json]
    hdvila bridge train --config bridge/<name> [key=value ...]
    hdvila bridge sample --model RUN --from data|prior --out FIG.png [--n 1024]
    hdvila animate train-gan --config animation/<name> [--resume] [key=value ...]
    hdvila animate train --config animation/<name> [--resume] [key=value ...]
    hdvila animate run --model RUN/animator --image FACE.png --text "the person smiles" --out out.mp4
    hdvila animate crops SOURCE... --out DIR [--size 64] [--detector mtcnn|none]
    hdvila animate eval --model RUN/animator [--faces 8] [--out metrics.json] [--gan-ceiling]
    hdvila heads train-prior --config heads/<name> [key=value ...]
    hdvila heads prior-from-gan --gan RUN/gan --out PRIOR
    hdvila heads measure-prior --prior PRIOR [--faces 500] [--split val|test] [--out report.json]
    hdvila heads train-manipulation --config heads/<name> [use_text=false ...]
    hdvila heads manipulate --model RUN/manipulator --image FACE.png --text "she smiles" --out OUT.png
    hdvila heads train-superres --config heads/<name> [use_text=false ...]
    hdvila heads superres --model RUN/superres --image LR.png --text "a person ..." --scale 4 --out OUT.png
    hdvila agents edit --image IN.png --text "..." --instruct-model RUN/model [--llm scripted|openai:MODEL|local:PATH]
        [--agents 2 --rounds 3] --out DIR
    hdvila agents eval --instruct-model RUN/model --out DIR [--tasks 40 --split val|test --arms ...] [--llm ...]
    hdvila demo [--out DIR] [--pretrain-steps N]
"""
from __future__ import annotations

import argparse
import json
import re

from data_tools.logs import get_logger, setup_logging

log = get_logger("hdvila")
_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def is_override(value: str) -> bool:
    """A dotted key=value config override (as opposed to an input or a stray argument)."""
    return bool(_OVERRIDE.match(value))


def split_overrides(values: list[str]) -> tuple[list[str], list[str]]:
    """Positional arguments of the form dotted.key=value are config overrides; the rest are inputs."""
    overrides = [v for v in values if is_override(v)]
    return [v for v in values if not is_override(v)], overrides


def training_config(config_class, args: argparse.Namespace, extra_overrides: list[str] | None = None):
    """--config (a name such as pretrain/small, or a YAML path) plus dotted overrides; --quiet also turns the
    progress bar off."""
    from data_tools.config import load_config

    overrides = list(args.overrides) + (["train.progress=false"] if args.quiet else []) + list(extra_overrides or [])
    return load_config(config_class, args.config, overrides)


def add_training_command(subparsers, name: str, family: str, func, help: str, example: str = "",
                         **parser_kwargs) -> argparse.ArgumentParser:
    """A recipe's train command: --config (a `<family>/<name>` config name or a YAML path), --resume, and dotted
    key=value overrides anywhere after it."""
    epilog = "Any config key may follow as dotted key=value" + (f", e.g. {example}" if example else "")
    parser = subparsers.add_parser(name, help=help, epilog=epilog, **parser_kwargs)
    parser.add_argument("--config", required=True, help=f"{family}/<name> (a config name) or a YAML path")
    parser.add_argument("--resume", action="store_true", help="continue from output_dir/checkpoints/latest")
    parser.set_defaults(func=func)
    return parser


def print_summary(summary: dict | None) -> int:
    if summary is not None:  # ranks other than 0 have none
        print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from hdvila.cli import (agents, animate, bridge, data, demo, diffusion, heads, instruct, pretrain, pretrained,
                            retrieval, serve, spo)

    parser = argparse.ArgumentParser(prog="hdvila", description="HD-VILA video-language platform")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING, ERROR")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    # the `deepspeed` launcher passes --local_rank; LOCAL_RANK in the environment says the same
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (data, pretrain, pretrained, retrieval, serve, diffusion, instruct, spo, bridge, animate, heads, agents,
                  demo):
        group.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides (dotted key=value) may come anywhere, also after options; argparse leaves them over.
    args, extra = parser.parse_known_args(argv)
    leftover = [e for e in extra if not is_override(e)]
    if leftover and hasattr(args, "inputs") and not any(e.startswith("-") for e in leftover):
        args.inputs.extend(leftover)
        leftover = []
    if leftover:
        parser.error(f"unrecognized arguments: {' '.join(leftover)}")
    args.overrides = getattr(args, "overrides", []) + [e for e in extra if is_override(e)]
    setup_logging(args.log_level)
    from data_tools.config import ConfigError
    from data_tools.training.distributed import shutdown_distributed

    try:
        code = int(args.func(args) or 0)
    except ConfigError as exc:
        parser.exit(2, f"hdvila: config error: {exc}\n")
    shutdown_distributed()  # on success only: after a failure a peer may never reach the barrier
    return code

