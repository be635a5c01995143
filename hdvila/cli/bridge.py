"""`hdvila bridge ...`: a simplified diffusion Schrödinger bridge between two distributions (IPF on the shared
trainer), and sampling from a trained one."""
from __future__ import annotations

import argparse
import json


def cmd_bridge_train(args: argparse.Namespace) -> int:
    from bridge.ipf import BridgeConfig, run_ipf
    from data_tools.config import load_config

    history = run_ipf(load_config(BridgeConfig, args.config, list(args.overrides)), progress=not args.quiet)
    print(json.dumps(history[-1], indent=2))
    return 0


def cmd_bridge_sample(args: argparse.Namespace) -> int:
    import numpy as np

    from bridge.pipeline import BridgeRun
    from data_tools.files import atomic_open

    run = BridgeRun.from_dir(args.model)
    walk = run.walk(args.start, args.n, args.seed)
    figure = run.write_figure(walk, args.out)
    states = args.out.rsplit(".", 1)[0] + ".npy"
    with atomic_open(states, "wb") as handle:
        np.save(handle, walk.numpy())
    print(f"wrote {figure} and {states} ({args.n} walks from the {args.start} end, {walk.shape[0] - 1} steps)")
    return 0


def add_parser(subparsers) -> None:
    bp = subparsers.add_parser("bridge", help="diffusion Schrödinger bridges (DSB, SDSB, TR/FR, flow-matching init)")
    bsub = bp.add_subparsers(dest="bridge_command", required=True)
    tp = bsub.add_parser("train", help="IPF: alternate half-bridges until config.half_bridges",
                         epilog="Any config key may follow as dotted key=value, e.g. parameterisation=terminal")
    tp.add_argument("--config", required=True, help="bridge/<name> (a config name) or a YAML path")
    tp.set_defaults(func=cmd_bridge_train)
    sp = bsub.add_parser("sample", help="walk a trained bridge from one end; writes a figure and the states (.npy)")
    sp.add_argument("--model", required=True, help="a bridge run folder (the output_dir of `hdvila bridge train`)")
    sp.add_argument("--from", dest="start", choices=("data", "prior"), default="prior")
    sp.add_argument("--out", required=True, help="figure path (.png); the states go beside it as .npy")
    sp.add_argument("--n", type=int, default=1024)
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(func=cmd_bridge_sample)
