"""`hdvila pretrain`: HD-VILA pretraining on the shared trainer."""
from __future__ import annotations

import argparse

from hdvila.cli import add_training_command, print_summary, training_config


def cmd_pretrain(args: argparse.Namespace) -> int:
    from hdvila.recipes.pretrain import PretrainConfig, run_pretrain

    return print_summary(run_pretrain(training_config(PretrainConfig, args), resume=args.resume))


def add_parser(subparsers) -> None:
    add_training_command(subparsers, "pretrain", "pretrain", cmd_pretrain,
                         "HD-VILA pretraining under DeepSpeed (single process, torchrun or deepspeed)",
                         "train.max_steps=20 data.train_shards='[shards/*.tar]' output_dir=runs/x")
