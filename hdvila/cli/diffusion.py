"""`hdvila diffusion ...`: diffusion training (logSNR schedules, Min-SNR-γ), sampling, evaluation."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from hdvila.cli import add_training_command, print_summary, training_config


def cmd_diffusion_train(args: argparse.Namespace) -> int:
    from diffusion.config import DiffusionConfig
    from diffusion.train import run_train

    return print_summary(run_train(training_config(DiffusionConfig, args), resume=args.resume))


# sampling flag -> the run-config key it overrides
SAMPLER_FLAGS = {"sampler": "sampler.name", "steps": "sampler.steps", "grid": "sampler.grid", "eta": "sampler.eta",
                 "guidance": "sampler.guidance", "logsnr_min": "sampler.logsnr_min",
                 "logsnr_max": "sampler.logsnr_max"}


def sampling_overrides(args: argparse.Namespace) -> list[str]:
    """The sampling flags as dotted overrides of the exported run config (`--steps 25` -> `sampler.steps=25`),
    then any dotted key=value given on the command line; the config system validates them all."""
    flags = [f"{key}={json.dumps(getattr(args, flag))}" for flag, key in SAMPLER_FLAGS.items()
             if getattr(args, flag) is not None]
    return flags + list(getattr(args, "overrides", []))


def cmd_diffusion_sample(args: argparse.Namespace) -> int:
    import torch

    from diffusion.pipeline import DiffusionPipeline, write_grid

    pipe = DiffusionPipeline.from_pretrained(args.model).with_overrides(sampling_overrides(args))
    labels = None if args.label is None else torch.full((args.n,), args.label, dtype=torch.long)
    images = pipe.sample(args.n, args.seed, labels=labels, progress=not args.quiet)
    scfg = pipe.config.sampler
    print(f"wrote {write_grid(images, Path(args.out))} ({args.n} samples, {scfg.name} {scfg.steps} steps on a "
          f"{scfg.grid} grid)")
    return 0


def cmd_diffusion_eval(args: argparse.Namespace) -> int:
    from data_tools.files import atomic_write_json
    from diffusion.pipeline import evaluate_model

    metrics = evaluate_model(args.model, args.samples, sampling_overrides(args), progress=not args.quiet)
    print(json.dumps(metrics, indent=2))
    if args.out:
        atomic_write_json(args.out, metrics)
    return 0


def add_parser(subparsers) -> None:
    df = subparsers.add_parser("diffusion",
                               help="diffusion training (logSNR schedules, Min-SNR-γ), sampling, evaluation")
    dfsub = df.add_subparsers(dest="diffusion_command", required=True)
    add_training_command(dfsub, "train", "diffusion", cmd_diffusion_train, "train a denoiser on the shared trainer",
                         "target=v weighting.name=min_snr")
    for name, helptext in (("sample", "write a PNG grid of samples"), ("eval", "FD and SWD against held-out data")):
        dp = dfsub.add_parser(name, help=helptext, epilog="The flags override the exported run config's sampler "
                              "section; any run-config key may follow as dotted key=value, e.g. sampler.eta=0.5. "
                              "Both are validated like a config file.")
        dp.add_argument("--model", required=True, help="an exported model folder (<output_dir>/model)")
        dp.add_argument("--sampler", default=None, help="a registered sampler: ddim, euler, heun, euler_ancestral")
        dp.add_argument("--steps", type=int, default=None)
        dp.add_argument("--grid", default=None,
                        help="spacing of the logSNR grid: cosine, linear, or schedule (quantiles of the training "
                             "density)")
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
