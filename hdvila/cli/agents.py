"""`hdvila agents ...`: collaborative-competitive editing agents (CCA) over the project's own models, with the
language model as a plug (scripted, an OpenAI-compatible server, or a local model)."""
from __future__ import annotations

import argparse
import json
import sys


def _llm_options(args: argparse.Namespace) -> dict:
    if args.llm.startswith("openai:"):
        opts = {"api_key_env": args.api_key_env or None, "timeout_s": args.timeout}
        if args.base_url:
            opts["base_url"] = args.base_url
        return opts
    if args.llm.startswith("local:"):
        return {"max_new_tokens": args.max_new_tokens}
    return {}


def cmd_agents_edit(args: argparse.Namespace) -> int:
    from cca.llm import LLMError, make_llm
    from cca.loop import AgentsConfig, run_agents
    from data_tools.pretrained import read_pretrained
    from data_tools.registry import RegistryError
    from instruct.pipeline import EditInputError, read_input_image

    try:
        size = 32
        if args.instruct_model:
            size = int(read_pretrained(args.instruct_model, "instruct-unet").config["image_size"])
        image = read_input_image(args.image, size, resize=args.resize)
        llm = make_llm(args.llm, **_llm_options(args))
        cfg = AgentsConfig(agents=args.agents, rounds=args.rounds, reflection=not args.no_reflection,
                           cooperation=not args.no_cooperation, seed=args.seed)
    except (EditInputError, LLMError, RegistryError, ValueError, OSError) as exc:
        print(f"hdvila agents edit: {exc}", file=sys.stderr)
        return 2
    try:
        result = run_agents(image, args.text, llm, args.out, instruct_model=args.instruct_model,
                            hdvila_model=args.hdvila_model, face_oracle=args.face_oracle, edit_steps=args.steps,
                            cfg=cfg)
    except LLMError as exc:  # the server stayed down through the retries: what ran is in the log
        print(f"hdvila agents edit: {exc} (the run so far is in {args.out}/log.jsonl)", file=sys.stderr)
        return 1
    best = result["best"] or {}
    print(f"wrote {args.out}/{result['image']} (agent {best.get('agent')}, round {best.get('round')}, "
          f"{best.get('passed')} of {best.get('checked')} checks passed; {result['rounds_run']} rounds, "
          f"{result['llm_calls']} model calls); log {args.out}/log.jsonl, sheet {args.out}/contact_sheet.png")
    return 0


def cmd_agents_eval(args: argparse.Namespace) -> int:
    from cca.evaluate import run_benchmark

    if not args.instruct_model:
        print("hdvila agents eval: --instruct-model is required (the editing model every arm uses)", file=sys.stderr)
        return 2
    from cca.llm import LLMError
    from data_tools.registry import RegistryError

    try:
        results = run_benchmark(args.instruct_model, args.tasks, args.out, split=args.split, seed=args.seed,
                                arms=args.arms, llm_spec=args.llm, llm_options=_llm_options(args),
                                edit_steps=args.steps, text_scale=args.text_scale, image_scale=args.image_scale,
                                progress=not args.quiet)
    except (LLMError, RegistryError, ValueError, OSError) as exc:
        print(f"hdvila agents eval: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(results["summary"], indent=2))
    return 0


def _llm_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--llm", default="scripted",
                   help="scripted (rules, offline), openai:MODEL (an OpenAI-compatible server) or local:PATH "
                        "(a transformers folder or a .gguf file)")
    p.add_argument("--base-url", default=None, help="openai: the server's base URL (default api.openai.com/v1)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="openai: the environment variable that holds the key ('' for none); the key is never logged")
    p.add_argument("--timeout", type=float, default=60.0, help="openai: seconds per request")
    p.add_argument("--max-new-tokens", type=int, default=512, help="local: the longest reply")
    p.add_argument("--instruct-model", default=None, help="an exported InstructDiffusion folder: the editing tool")
    p.add_argument("--steps", type=int, default=25,
                   help="sampler steps of the editing model (25, as its evaluation uses; its edit.yaml says 50)")
    p.add_argument("--seed", type=int, default=0)


def add_parser(subparsers) -> None:
    ap = subparsers.add_parser("agents", help="collaborative-competitive editing agents (CCA)")
    asub = ap.add_subparsers(dest="agents_command", required=True)

    ep = asub.add_parser("edit", help="edit one image with a multi-step instruction; writes a run folder")
    ep.add_argument("--image", required=True)
    ep.add_argument("--text", required=True, help='e.g. "Make the red circle blue, then turn the picture upside down."')
    ep.add_argument("--out", required=True, help="the run folder (images, log.jsonl, result.json, contact sheet)")
    ep.add_argument("--agents", type=int, default=2)
    ep.add_argument("--rounds", type=int, default=3)
    ep.add_argument("--no-reflection", action="store_true")
    ep.add_argument("--no-cooperation", action="store_true")
    ep.add_argument("--hdvila-model", default=None, help="a pretrained HD-VILA folder for the image-text tool")
    ep.add_argument("--face-oracle", default=None, help="a trained face oracle folder for the face-attribute tool "
                                                       "(animation.oracle; e.g. from an animator run's cache)")
    ep.add_argument("--resize", action="store_true", help="resize the image to the editing model's size")
    _llm_arguments(ep)
    ep.set_defaults(func=cmd_agents_edit)

    vp = asub.add_parser("eval", help="the multi-step benchmark: every arm on the same tasks; writes results.json")
    vp.add_argument("--out", required=True)
    vp.add_argument("--tasks", type=int, default=40)
    vp.add_argument("--split", choices=("val", "test"), default="val")
    vp.add_argument("--arms", nargs="+", default=None,
                    help="one_shot oracle_plan one_agent cca no_reflection no_cooperation no_competition (default all)")
    vp.add_argument("--text-scale", type=float, default=None, help="s_T of every arm (default: the model's)")
    vp.add_argument("--image-scale", type=float, default=None, help="s_I of every arm (default: the model's)")
    _llm_arguments(vp)
    vp.set_defaults(func=cmd_agents_eval)
