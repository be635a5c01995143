"""`hdvila diffusion ...`: diffusion training (logSNR schedules, Min-SNR-γ), sampling, evaluation."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from hdvila.cli import print_summary, training_config


def cmd_diffusion_train(args: argparse.Namespace) -> int:
    from diffusion.train import DiffusionConfig, run_train

    return print_summary(run_train(training_config(DiffusionConfig, args), resume=args.resume))


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


def add_parser(subparsers) -> None:
    df = subparsers.add_parser("diffusion",
                               help="diffusion training (logSNR schedules, Min-SNR-γ), sampling, evaluation")
    dfsub = df.add_subparsers(dest="diffusion_command", required=True)
    dt = dfsub.add_parser("train", help="train a denoiser on the shared trainer",
                          epilog="Any config key may follow as dotted key=value, e.g. target=v weighting.name=min_snr")
    dt.add_argument("--config", required=True, help="diffusion/<name> (a config name) or a YAML path")
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
