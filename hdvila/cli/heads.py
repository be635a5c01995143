"""`hdvila heads ...`: HD-VILA's generation heads (text-guided manipulation and super-resolution) on a StyleGAN2
prior."""
from __future__ import annotations

import argparse
import json

from hdvila.cli import add_training_command, print_summary, training_config
from hdvila.cli.animate import hdvila_text_encoder


MINILM = "minilm"


def text_encoder_from(text_model: str):
    """An HD-VILA pretrained folder's `encode_text`, or with "minilm" the packaged MiniLM sentence encoder (the
    frozen scorer's text side: a reference for what a strong text encoder gives the heads)."""
    if text_model == MINILM:
        from animation.oracle import get_sentence_encoder

        return get_sentence_encoder().encode
    return hdvila_text_encoder(text_model)


def _text_encoder_for(args: argparse.Namespace, model_dir: str):
    from data_tools.pretrained import read_pretrained

    config = read_pretrained(model_dir).config
    if not config.get("mapper", {}).get("use_text", True):
        return None  # a no-text model reads no sentence
    return text_encoder_from(args.text_model or config["text_model"])


def cmd_train_prior(args: argparse.Namespace) -> int:
    from heads.prior import PriorConfig, run_train_prior

    return print_summary(run_train_prior(training_config(PriorConfig, args), resume=args.resume))


def cmd_prior_from_gan(args: argparse.Namespace) -> int:
    from heads.prior import prior_from_gan

    out = prior_from_gan(args.gan, args.out, encoder_steps=args.encoder_steps, seed=args.seed,
                         progress=not args.quiet)
    print(f"wrote the prior folder {out} (gan/ and inversion/)")
    return 0


def cmd_measure_prior(args: argparse.Namespace) -> int:
    from data_tools.files import atomic_write_json
    from heads.manipulation import get_judges
    from heads.prior import FaceSplit, load_prior, measure_prior

    generator, encoder = load_prior(args.prior)
    judges = get_judges(args.cache_dir, generator.cfg.resolution)
    factors = FaceSplit().faces(args.split, args.faces, args.seed)
    result = measure_prior(generator, encoder, judges.oracle, factors, invert_steps=args.invert_steps,
                           progress=not args.quiet)
    report = {k: v for k, v in result.items() if k not in ("images", "reconstructions")}
    print(json.dumps(report, indent=2))
    if args.out:
        atomic_write_json(args.out, report)
    return 0


def cmd_train_manipulation(args: argparse.Namespace) -> int:
    from heads.manipulation import ManipulationConfig, run_train_manipulation

    cfg = training_config(ManipulationConfig, args)
    text_encoder = text_encoder_from(cfg.text_model) if cfg.use_text else None
    return print_summary(run_train_manipulation(cfg, text_encoder, resume=args.resume, progress=not args.quiet))


def cmd_manipulate(args: argparse.Namespace) -> int:
    from heads.manipulation import manipulate_file

    out = manipulate_file(args.model, args.image, args.text, args.out, text_encoder=_text_encoder_for(args, args.model),
                          device=args.device)
    print(f"wrote {out} (input, its reconstruction, the edit)")
    return 0


def cmd_train_superres(args: argparse.Namespace) -> int:
    from heads.superres import SuperResConfig, run_train_superres

    cfg = training_config(SuperResConfig, args)
    text_encoder = text_encoder_from(cfg.text_model) if cfg.use_text else None
    return print_summary(run_train_superres(cfg, text_encoder, resume=args.resume, progress=not args.quiet))


def cmd_superres(args: argparse.Namespace) -> int:
    from heads.superres import superres_file

    out = superres_file(args.model, args.image, args.text, args.out, scale=args.scale,
                        text_encoder=_text_encoder_for(args, args.model), device=args.device)
    print(f"wrote {out}")
    return 0


def add_parser(subparsers) -> None:
    hp = subparsers.add_parser("heads", help="text-guided manipulation and super-resolution on a StyleGAN2 prior")
    sub = hp.add_subparsers(dest="heads_command", required=True)
    add_training_command(sub, "train-prior", "heads", cmd_train_prior,
                         "train the autoencoding StyleGAN2 prior (generator + inversion encoder)")
    pg = sub.add_parser("prior-from-gan", help="a prior folder from an adversarially trained GAN folder (trains its "
                                               "inversion encoder)")
    pg.add_argument("--gan", required=True, help="an exported GAN folder (<run>/gan)")
    pg.add_argument("--out", required=True)
    pg.add_argument("--encoder-steps", type=int, default=2000)
    pg.add_argument("--seed", type=int, default=0)
    pg.set_defaults(func=cmd_prior_from_gan)
    mp = sub.add_parser("measure-prior", help="invert held-out rendered faces; agreement of the oracle's attribute "
                                              "classes on the reconstructions with the truth")
    mp.add_argument("--prior", required=True, help="a prior folder (gan/ + inversion/)")
    mp.add_argument("--faces", type=int, default=500)
    mp.add_argument("--split", default="val", choices=("val", "test"))
    mp.add_argument("--seed", type=int, default=0)
    mp.add_argument("--invert-steps", type=int, default=30)
    mp.add_argument("--cache-dir", default="runs/heads/cache", help="where the frozen oracle is cached")
    mp.add_argument("--out", default=None, help="also write the report as JSON")
    mp.set_defaults(func=cmd_measure_prior)
    add_training_command(sub, "train-manipulation", "heads", cmd_train_manipulation,
                         "train the text mapper that edits W+ codes by a sentence", "use_text=false")
    mn = sub.add_parser("manipulate", help="edit a face image by a sentence: writes input | reconstruction | edit")
    mn.add_argument("--model", required=True, help="an exported manipulator folder (<output_dir>/manipulator)")
    mn.add_argument("--image", required=True)
    mn.add_argument("--text", required=True, help='e.g. "she smiles"')
    mn.add_argument("--out", required=True, help="a .png")
    mn.add_argument("--text-model", default=None, help="HD-VILA pretrained folder or minilm (default: the one it trained with)")
    mn.add_argument("--device", default="cpu")
    mn.set_defaults(func=cmd_manipulate)
    add_training_command(sub, "train-superres", "heads", cmd_train_superres,
                         "train the text-guided super-resolution head", "use_text=false")
    sr = sub.add_parser("superres", help="upscale a low-resolution face guided by a sentence describing it")
    sr.add_argument("--model", required=True, help="an exported super-resolution folder (<output_dir>/superres)")
    sr.add_argument("--image", required=True, help="the low-resolution face (resized to the model's input size)")
    sr.add_argument("--text", default="", help="a sentence describing the face (ignored by a no-text model)")
    sr.add_argument("--scale", type=int, default=4)
    sr.add_argument("--out", required=True, help="a .png")
    sr.add_argument("--text-model", default=None, help="HD-VILA pretrained folder or minilm (default: the one it trained with)")
    sr.add_argument("--device", default="cpu")
    sr.set_defaults(func=cmd_superres)
