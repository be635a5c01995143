"""`hdvila demo`: the main job end to end on the built-in corpus."""
from __future__ import annotations

import argparse


def cmd_demo(args: argparse.Namespace) -> int:
    from hdvila.demo import run_demo

    return run_demo(args.out, quiet=args.quiet, pretrain_steps=args.pretrain_steps)


def add_parser(subparsers) -> None:
    d = subparsers.add_parser("demo", help="the main job end to end on the built-in corpus")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--pretrain-steps", type=int, default=None, help="override the small config's 300 steps")
    d.set_defaults(func=cmd_demo)
