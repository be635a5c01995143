"""`hdvila pretrain`: HD-VILA pretraining on the shared trainer."""
from __future__ import annotations

import argparse

from hdvila.cli import print_summary, training_config


def cmd_pretrain(args: argparse.Namespace) -> int:
    from hdvila.recipes.pretrain import PretrainConfig, run_pretrain

    return print_summary(run_pretrain(training_config(PretrainConfig, args), resume=args.resume))


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("pretrain",
                              help="HD-VILA pretraining under DeepSpeed (single process, torchrun or deepspeed)",
                              epilog="Any config key may follow as dotted key=value, e.g. train.max_steps=20 "
                                     "data.train_shards='[shards/*.tar]' output_dir=runs/x")
    p.add_argument("--config", required=True, help="pretrain/<size> (a config name) or a YAML path")
    p.add_argument("--resume", action="store_true", help="continue from output_dir/checkpoints/latest")
    p.set_defaults(func=cmd_pretrain)
