"""`hdvila spo ...`: step-by-step preference optimisation (SPO) of a diffusion model, with its step-aware
preference model: fit the preference models, fine-tune, and score a model's samples."""
from __future__ import annotations

import argparse
import json

from hdvila.cli import add_training_command, print_summary, training_config


def cmd_spm_train(args: argparse.Namespace) -> int:
    from data_tools.config import load_config
    from spo.spm import SPMRunConfig, run_spm_train

    report = run_spm_train(load_config(SPMRunConfig, args.config, list(args.overrides)), progress=not args.quiet)
    summary = {name: {f"step {row['step'] or 'clean'}": round(row["label_accuracy"], 3) for row in rows}
               for name, rows in report["models"].items()}
    print(json.dumps({"pairs_train": report["pairs_train"], "pairs_val": report["pairs_val"],
                      "labels_agree_with_hidden": report["labels_agree_with_hidden"],
                      "label_accuracy_per_step": summary}, indent=2))
    return 0


def cmd_spo_train(args: argparse.Namespace) -> int:
    from spo.train import SPOConfig, run_train

    return print_summary(run_train(training_config(SPOConfig, args), resume=args.resume))


def cmd_spo_eval(args: argparse.Namespace) -> int:
    from data_tools.files import atomic_write_json
    from diffusion.pipeline import DiffusionPipeline
    from spo.evaluate import PolicyJudge, SPOEvalConfig
    from spo.policy import DenoiserPolicy

    pipe = DiffusionPipeline.from_pretrained(args.model)
    if pipe.model.config.num_classes <= 0:
        print("hdvila spo eval: the model is not class-conditional; the miniature's prompts are classes")
        return 2
    policy = DenoiserPolicy.from_pipeline(pipe, args.steps, args.guidance)
    judge = PolicyJudge(SPOEvalConfig(samples=args.samples, seed=args.seed, dataset=pipe.config.data.name))
    metrics = {"model": args.model, "samples": args.samples, "seed": args.seed, "steps": len(policy.grid) - 1,
               **judge(policy, policy.model)}
    print(json.dumps(metrics, indent=2))
    if args.out:
        atomic_write_json(args.out, metrics)
    return 0


def add_parser(subparsers) -> None:
    sp = subparsers.add_parser("spo", help="preference fine-tuning of a diffusion model (SPO, trajectory DPO)")
    ssub = sp.add_subparsers(dest="spo_command", required=True)

    mp = ssub.add_parser("spm-train", help="label the base model's samples and fit the step-aware preference model "
                                           "(and the final-image scorer)",
                         epilog="Any config key may follow as dotted key=value, e.g. fit.steps=500")
    mp.add_argument("--config", required=True, help="spo/<name> (a config name, e.g. spo/spm) or a YAML path")
    mp.set_defaults(func=cmd_spm_train)

    add_training_command(ssub, "train", "spo", cmd_spo_train, "fine-tune with SPO or trajectory-level DPO",
                         "method=trajectory_dpo continue_rule=winner finetune=lora")

    ep = ssub.add_parser("eval", help="score a model's samples: hidden aesthetic, class accuracy, FD")
    ep.add_argument("--model", required=True, help="a diffusion model folder (<run>/model of spo or diffusion train)")
    ep.add_argument("--samples", type=int, default=1000)
    ep.add_argument("--seed", type=int, default=2024, help="noise seed of the samples")
    ep.add_argument("--steps", type=int, default=10, help="DDIM eta=1 steps")
    ep.add_argument("--guidance", type=float, default=None, help="default: the model's sampler guidance")
    ep.add_argument("--out", default=None, help="also write the metrics as JSON here")
    ep.set_defaults(func=cmd_spo_eval)
