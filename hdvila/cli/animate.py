"""`hdvila animate ...`: StyleGAN2 and the language-guided face animator."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from hdvila.cli import add_training_command, print_summary, training_config


def hdvila_text_encoder(path: str):
    """The HD-VILA text encoder as a plain callable for the animation package (which never imports hdvila)."""
    import hdvila

    model = hdvila.load_pretrained(path)
    return model.encode_text


def cmd_animate_train_gan(args: argparse.Namespace) -> int:
    from animation.gan import GANConfig, run_train_gan

    return print_summary(run_train_gan(training_config(GANConfig, args), resume=args.resume))


def cmd_animate_train(args: argparse.Namespace) -> int:
    from animation.animator import AnimatorConfig, run_train_animator

    cfg = training_config(AnimatorConfig, args)
    return print_summary(run_train_animator(cfg, hdvila_text_encoder(cfg.text_model), resume=args.resume,
                                            progress=not args.quiet))


def cmd_animate_run(args: argparse.Namespace) -> int:
    from animation.animator import animate_file, exported_text_model

    text_encoder = hdvila_text_encoder(args.text_model or exported_text_model(args.model))
    out, sheet = animate_file(args.model, args.image, args.text, args.out, text_encoder=text_encoder,
                              frames=args.frames, fps=args.fps, seed=args.seed, device=args.device)
    print(f"wrote {out} ({args.frames} frames) and the contact sheet {sheet}")
    return 0


def cmd_animate_crops(args: argparse.Namespace) -> int:
    from animation.face_crops import write_face_crops

    report = write_face_crops(args.source, args.out, args.size, detector=args.detector, align=not args.no_align,
                              margin=args.margin, every=args.every, max_frames=args.max_frames,
                              progress=not args.quiet)
    print(f"wrote {report.crops} crops of {report.frames} frames to {args.out} ({len(report.no_face)} without a "
          f"face, {len(report.unreadable)} unreadable sources; see crops_report.json)")
    return 0


def cmd_animate_eval(args: argparse.Namespace) -> int:
    from animation.animator import contact_sheet, exported_text_model
    from animation.evaluate import evaluate_animator
    from data_tools.files import atomic_write_json
    from data_tools.images import save_image_grid

    text_encoder = hdvila_text_encoder(args.text_model or exported_text_model(args.model))
    metrics, clips, _ = evaluate_animator(args.model, text_encoder,
                                          faces=args.faces, frames=args.frames, seed=args.seed,
                                          with_gan_ceiling=args.gan_ceiling, sentences=args.sentences)
    print(json.dumps(metrics, indent=2))
    if args.out:
        atomic_write_json(args.out, metrics)
        # the first face doing every action, one row per sentence
        sheet = save_image_grid(contact_sheet(clips[:24]), Path(args.out).with_suffix(".png"), nrow=args.frames,
                                scale=2)
        print(f"wrote {args.out} and {sheet}")
    return 0


def add_parser(subparsers) -> None:
    an = subparsers.add_parser("animate", help="StyleGAN2 and the language-guided face animator")
    ansub = an.add_subparsers(dest="animate_command", required=True)
    add_training_command(ansub, "train-gan", "animation", cmd_animate_train_gan,
                         "train a StyleGAN2 on the shared trainer", "data.kind=folder data.folder=...")
    add_training_command(ansub, "train", "animation", cmd_animate_train,
                         "train the language-guided motion generator against a frozen StyleGAN2")
    ar = ansub.add_parser("run", help="animate a still face with a sentence: .mp4 or .gif plus a contact sheet")
    ar.add_argument("--model", required=True, help="an exported animator folder (<output_dir>/animator)")
    ar.add_argument("--image", required=True, help="a face image (any size; resized to the generator's)")
    ar.add_argument("--text", required=True, help='e.g. "the person smiles"')
    ar.add_argument("--frames", type=int, default=16)
    ar.add_argument("--fps", type=int, default=10)
    ar.add_argument("--seed", type=int, default=0)
    ar.add_argument("--out", required=True, help="out.mp4 or out.gif (the contact sheet goes beside it as .png)")
    ar.add_argument("--text-model", default=None, help="HD-VILA pretrained folder (default: the one it trained with)")
    ar.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda or cuda:N")
    ar.set_defaults(func=cmd_animate_run)
    ac = ansub.add_parser("crops", help="face crops (MTCNN detection and alignment, or centre squares) from videos, "
                                        "shards (.tar) or image folders, for data.kind=folder")
    ac.add_argument("source", nargs="+", help="video files, webdataset shards or image folders")
    ac.add_argument("--out", required=True, help="output folder (PNG crops + crops_report.json)")
    ac.add_argument("--size", type=int, default=64)
    ac.add_argument("--detector", default="mtcnn", choices=["mtcnn", "none"],
                    help="mtcnn needs facenet-pytorch (pip install --no-deps facenet-pytorch)")
    ac.add_argument("--no-align", action="store_true", help="square box crops instead of landmark alignment")
    ac.add_argument("--margin", type=float, default=0.35, help="space around the face, as a fraction of its size")
    ac.add_argument("--every", type=int, default=1, help="every n-th video frame")
    ac.add_argument("--max-frames", type=int, default=None, help="at most this many frames per video")
    ac.set_defaults(func=cmd_animate_crops)
    ae = ansub.add_parser("eval", help="held-out identities and sentences on the synthetic faces: text match, "
                                       "monotone motion, identity error, smoothness (see animation/evaluate.py)")
    ae.add_argument("--model", required=True, help="an exported animator folder (<output_dir>/animator)")
    ae.add_argument("--faces", type=int, default=8, help="held-out faces; each is animated with all 24 actions")
    ae.add_argument("--frames", type=int, default=16)
    ae.add_argument("--seed", type=int, default=1)
    ae.add_argument("--out", default=None, help="also write the metrics as JSON (and a contact sheet .png)")
    ae.add_argument("--sentences", default="test", choices=("test", "train"),
                    help="held-out paraphrases (default) or the training sentences (the faces stay held out)")
    ae.add_argument("--gan-ceiling", action="store_true",
                    help="also score the renderer's clips inverted into the GAN frame by frame (how much of each "
                         "true state the frozen generator reproduces; slower)")
    ae.add_argument("--text-model", default=None, help="HD-VILA pretrained folder (default: the one it trained with)")
    ae.set_defaults(func=cmd_animate_eval)
