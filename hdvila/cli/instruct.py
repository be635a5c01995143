"""`hdvila instruct ...`: InstructDiffusion in miniature: train one editor for every task, edit an image with a
sentence, evaluate on held-out combinations and phrasings."""
from __future__ import annotations

import argparse
import json
import sys

from hdvila.cli import add_training_command, print_summary, training_config


def cmd_instruct_train(args: argparse.Namespace) -> int:
    from instruct.train import InstructConfig, run_train

    return print_summary(run_train(training_config(InstructConfig, args), resume=args.resume))


def cmd_instruct_edit(args: argparse.Namespace) -> int:
    from instruct.pipeline import EditInputError, edit_file

    try:
        out, settings = edit_file(args.model, args.image, args.text, args.out, text_scale=args.text_scale,
                                  image_scale=args.image_scale, steps=args.steps, seed=args.seed,
                                  sampler=args.sampler, resize=args.resize)
    except EditInputError as exc:
        print(f"hdvila instruct edit: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({settings['sampler']} {settings['steps']} steps, s_T={settings['text_scale']}, "
          f"s_I={settings['image_scale']}, seed {settings['seed']})")
    return 0


def cmd_instruct_eval(args: argparse.Namespace) -> int:
    from instruct.evaluate import json_safe, run_eval

    results = run_eval(args.model, split=args.split, out_dir=args.out, n_per_task=args.n_per_task, steps=args.steps,
                       sweep=args.sweep, seed=args.seed)
    print(json.dumps(json_safe({k: v for k, v in results.items() if k != "sweep"}), indent=2))
    return 0


def add_parser(subparsers) -> None:
    ip = subparsers.add_parser("instruct", help="instruction-following image editing (InstructDiffusion in miniature)")
    isub = ip.add_subparsers(dest="instruct_command", required=True)
    add_training_command(isub, "train", "instruct", cmd_instruct_train,
                         "train one editor for segmentation, keypoints, restoration and editing",
                         "data.tasks=[segment] edit.target=eps")

    ep = isub.add_parser("edit", help="edit one image with an instruction; writes a PNG")
    ep.add_argument("--model", required=True, help="an exported model folder (<output_dir>/model)")
    ep.add_argument("--image", required=True, help="the image to edit (PNG, JPEG, ...)")
    ep.add_argument("--text", required=True, help='the instruction, e.g. "Make the red circle blue."')
    ep.add_argument("--out", required=True, help="output PNG path")
    ep.add_argument("--text-scale", type=float, default=None, help="s_T (default: the model's edit.yaml)")
    ep.add_argument("--image-scale", type=float, default=None, help="s_I (default: the model's edit.yaml)")
    ep.add_argument("--steps", type=int, default=None)
    ep.add_argument("--seed", type=int, default=0)
    ep.add_argument("--sampler", default=None, help="a registered sampler: euler_ancestral, ddim, euler, heun")
    ep.add_argument("--resize", action="store_true",
                    help="resize an image of another size to the model's (otherwise a size mismatch is an error)")
    ep.set_defaults(func=cmd_instruct_edit)

    vp = isub.add_parser("eval", help="score a model per task, with and without the instruction")
    vp.add_argument("--model", required=True, help="an exported model folder (<output_dir>/model)")
    vp.add_argument("--split", choices=("val", "test"), default=None, help="default: the run config's eval.split")
    vp.add_argument("--out", default=None, help="folder for results.json, figure.png and examples.png")
    vp.add_argument("--n-per-task", type=int, default=None)
    vp.add_argument("--steps", type=int, default=None, help="sampler steps (default: the run config's eval.steps)")
    vp.add_argument("--seed", type=int, default=0)
    vp.add_argument("--sweep", action="store_true", help="also sweep the guidance scales (eval.text_scales x "
                    "eval.image_scales of the run config)")
    vp.set_defaults(func=cmd_instruct_eval)
