"""Levers of the main job's model, each measured on the VALIDATION split (the test clips stay unused).

Needs the demo's shards (`make demo` first). Each arm is the demo's pretraining recipe (pretrain/small) with
one change; every arm is scored on the validation split's factorial gallery beside its attribute oracles.

    python benchmarks/demo_levers.py --arms sr4 sr8 sr4-minilm --out runs/levers
    python benchmarks/demo_levers.py --reuse sr8=runs/demo/pretrain ...   # an arm already trained
    python benchmarks/demo_levers.py --build-corpus 464 --demo runs/data464 --arms data464   # more training videos
    python benchmarks/demo_levers.py --build-corpus 224 --group-batches --demo runs/demo_groups --arms group-batches

Writes docs/results/demo_levers.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

# Overrides of the stop-29 recipe: pretrain/small with the from-scratch `hdvila-small`, its committed tokenizer,
# no reversed negatives and every language part at the full learning rate (data.sample_rate 8, chosen here; "sr4"
# is the recipe before). pretrain/small now ships the "motion-text-lr0.1" arm (model hdvila-small-motion, its
# MiniLM text tower at a tenth of the rate); every arm is applied on top of STOP29_RECIPE, so it trains what it
# trained when it was measured.
LANGUAGE_FULL_RATE = ("optim.param_groups=[{name: backbones, pattern: '^video\\.(hr|lr)_backbone\\.'}, "
                      "{name: temporal, pattern: '^video\\.temporal\\.'}, "
                      "{name: language, pattern: '^(text|cross|mlm_head)\\.'}]")
STOP29_RECIPE = ["model=hdvila-small", "data.tokenizer=null", "reversed_negatives=false", LANGUAGE_FULL_RATE]
ARMS: dict[str, list[str]] = {
    "sr4": ["data.sample_rate=4"],
    "sr8": [],
    "sr12": ["data.sample_rate=12"],
    "sr4-minilm": ["data.sample_rate=4", "model=hdvila-small-minilm", "data.tokenizer=packaged:all-minilm-l6-v2"],
    # with --demo pointing at a corpus synthesized with train_design=factorial: group-mates share batches
    "sr4-factorial": ["data.sample_rate=4", "data.shuffle_buffer=16"],
    "sr8-450steps": ["train.max_steps=450", "train.val_every=150", "train.save_every=150"],
    "sr8-minilm": ["model=hdvila-small-minilm", "data.tokenizer=packaged:all-minilm-l6-v2"],
    # with --demo pointing at a corpus of 464 videos (400 training videos, the same validation and test clips)
    "data464": [],
    # neighbours at half the keyframe size: a 4x6 token grid instead of 2x3, finer where motion is read
    "lr2": ["model_overrides.video.lr_factor=2"],
    "lr2-depth2": ["model_overrides.video.lr_factor=2", "model_overrides.video.temporal_depth=2"],
    # remembered negatives: the last 320 (video, text) embedding pairs (about one pass over the synthetic
    # training clips) join every step's contrastive loss, so clips differing in one attribute meet
    "queue320": ["negative_queue=320"],
    "queue48": ["negative_queue=48"],  # three batches back: fresher entries
    # with --demo pointing at a --group-batches corpus: every batch is one factorial group of 16 training clips
    # (2 shapes x 2 colours x 2 motions x 2 backgrounds), so only shape and motion tell its clips apart
    "group-batches": ["data.shuffle_buffer=0"],
    # every backbone BatchNorm frozen (running statistics at their initial values: an affine map that still
    # trains) and folded into its convolution, the GPU-speed lever of docs/gpu.md, here from scratch
    "norm-eval-folded": ["model_overrides.video.norm_eval=true", "model_overrides.video.fold_norm=true"],
    # with --demo pointing at the 464-video corpus: the levers together
    "data464-lr2-depth2": ["model_overrides.video.lr_factor=2", "model_overrides.video.temporal_depth=2"],
    # ImageNet-pretrained MobileNetV2 video backbones (HD-VILA starts from an ImageNet ResNet); from-scratch
    # ResNets never learn shape or motion here (linear probes on their tokens are at chance on validation)
    "mnv2": ["model=hdvila-small-mnv2"],
    "mnv2-norm-eval": ["model=hdvila-small-mnv2", "model_overrides.video.norm_eval=true"],
    # each clip played backwards is an extra negative for the captions: only motion tells them apart
    "mnv2-reversed": ["model=hdvila-small-mnv2", "reversed_negatives=true"],
    "reversed": ["reversed_negatives=true"],
    # both towers pretrained: a text tower that already tells "left" from "right" gives the video side a
    # direction to learn from the first step
    "mnv2-minilm": ["model=hdvila-small-mnv2-minilm", "data.tokenizer=packaged:all-minilm-l6-v2"],
    "mnv2-minilm-reversed": ["model=hdvila-small-mnv2-minilm", "data.tokenizer=packaged:all-minilm-l6-v2",
                             "reversed_negatives=true"],
    # a depthwise space-time convolution (7 steps x 3x3 cells) before the temporal blocks: linear in its
    # weights, so frame order gets a gradient from the first step, where near-uniform attention hardly sees it
    "mnv2-minilm-reversed-stconv": ["model=hdvila-small-mnv2-minilm", "data.tokenizer=packaged:all-minilm-l6-v2",
                                    "reversed_negatives=true", "model_overrides.video.temporal_time_conv=true"],
    # the neighbours' CNN cut one stage earlier (stride 8): a 4x6 token grid on which a moving shape crosses
    # cells within a segment (on the stride-16 2x3 grid it moves about 2/3 of a cell); the keyframe's
    # stage-3 map fills its time slot, and its stride-32 map is spread onto the finer grid
    "mnv2-minilm-reversed-stconv-grid8": ["model=hdvila-small-mnv2-minilm", "data.tokenizer=packaged:all-minilm-l6-v2",
                                          "reversed_negatives=true", "model_overrides.video.temporal_time_conv=true",
                                          "model_overrides.video.hr_out_indices=[2,4]",
                                          "model_overrides.video.lr_out_index=2"],
    # the same with the convolution randomly initialised: a clip and its reverse differ from the first step,
    # so the captions' direction words have something to align with before they collapse
    "mnv2-minilm-reversed-stconv-grid8-random": [
        "model=hdvila-small-mnv2-minilm", "data.tokenizer=packaged:all-minilm-l6-v2", "reversed_negatives=true",
        "model_overrides.video.temporal_time_conv=true", "model_overrides.video.temporal_time_conv_std=0.1",
        "model_overrides.video.hr_out_indices=[2,4]", "model_overrides.video.lr_out_index=2"],
    # ablations of the stop-30 recipe (model hdvila-small-motion, text at the full rate): one change taken away
    "motion-no-reversed": ["model=hdvila-small-motion", "data.tokenizer=packaged:all-minilm-l6-v2"],
    "motion-no-minilm": ["model=hdvila-small-mnv2", "reversed_negatives=true",
                         "model_overrides.video.temporal_time_conv=true",
                         "model_overrides.video.temporal_time_conv_std=0.1",
                         "model_overrides.video.hr_out_indices=[2,4]", "model_overrides.video.lr_out_index=2"],
    # the shipped recipe since stop 31: the above with the MiniLM text tower at a tenth of the learning rate.
    # Fine-tuned at full rate on the demo's small caption language it forgets the paraphrases the generation
    # heads need (docs/results/heads.md)
    "motion-text-lr0.1": ["model=hdvila-small-motion", "data.tokenizer=packaged:all-minilm-l6-v2",
                          "reversed_negatives=true",
                          "optim.param_groups=[{name: backbones, pattern: '^video\\.(hr|lr)_backbone\\.'}, "
                          "{name: temporal, pattern: '^video\\.temporal\\.'}, "
                          "{name: text, pattern: '^text\\.', lr_scale: 0.1}, "
                          "{name: language, pattern: '^(cross|mlm_head)\\.'}]"],
}


# arms trained on another corpus (--demo): named in the table, since their overrides do not show it
CORPUS = {"sr4-factorial": "corpus with `train_design: factorial`",
          "group-batches": "corpus with one factorial group per shard (`--group-batches`)", "data464": "corpus of 464 videos (400 training)",
          "data464-lr2-depth2": "corpus of 464 videos (400 training)"}


def on_stop29_recipe(overrides: list[str]) -> list[str]:
    """The arm's overrides after the stop-29 recipe's (later overrides win)."""
    return [*STOP29_RECIPE, *overrides]


def train_arm(name: str, overrides: list[str], demo: Path, out: Path) -> Path:
    run = out / name
    if (run / "pretrained" / "config.json").exists():
        return run
    overrides = on_stop29_recipe(overrides)
    cmd = [sys.executable, "-m", "hdvila.cli", "--quiet", "pretrain", "--config", "pretrain/small",
           f"output_dir={run}", f"data.train_shards=[{demo / 'shards' / 'train' / '*.tar'}]",
           f"data.val_shards=[{demo / 'shards' / 'val' / '*.tar'}]", "train.progress=false", *overrides]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    subprocess.run(cmd, cwd=REPO, env=env, check=True)
    return run


def build_corpus(num_videos: int, out: Path, group_batches: bool = False) -> None:
    """The demo's corpus and shards with `num_videos` videos: more training videos, and the same validation and
    test clips (each split draws from its own seeded generator, and their sizes stay the demo's).

    `group_batches`: the training clips come in 2x2x2x2 factorial groups (`train_design: factorial`) and the
    training shards hold exactly one group each (16 clips, one writer, the real clips left out, so no shard
    shifts the others), which a loader without shuffling (`data.shuffle_buffer=0`) turns into one batch each."""
    from data_tools.config import load_config
    from data_tools.corpus import real_corpus_folder
    from data_tools.ingest.build import build_shards
    from data_tools.ingest.config import BuildConfig
    from data_tools.synth import GROUP_SIZE, SynthConfig, synthesize_corpus
    from hdvila.demo import DEMO_SYNTH

    synth = out / "corpus" / "synthetic"
    if not (synth / "metadata.jsonl").exists():
        overrides = [o for o in DEMO_SYNTH if not o.startswith("num_videos=")] + [f"num_videos={num_videos}"]
        overrides += ["train_design=factorial"] if group_batches else []
        synthesize_corpus(synth, load_config(SynthConfig, None, overrides), progress=False)
    workers = 1 if group_batches else 2
    cfg = load_config(BuildConfig, None, [f"workers={workers}", "sentences.min_duration=2.0",
                                          f"shards.samples_per_shard={GROUP_SIZE}"])
    if not (out / "shards" / "train").is_dir():
        sources = [str(synth / "train")] + ([] if group_batches else [str(real_corpus_folder(out / "corpus" / "real"))])
        build_shards(sources, out / "shards" / "train", cfg, False)
    if not (out / "shards" / "val").is_dir():
        build_shards([str(synth / "val")], out / "shards" / "val", cfg, False)


def sample_rate(overrides: list[str]) -> int:
    for item in overrides:
        if item.startswith("data.sample_rate="):
            return int(item.split("=", 1)[1])
    return 8  # pretrain/small's


def score_on_val(run: Path, demo: Path, rate: int) -> dict:
    from hdvila.encoder import InferenceConfig, VideoTextEncoder
    from hdvila.models import HDVILA
    from hdvila.retrieval.composition import composition_report, encode_for_composition

    folder = run / "pretrained"
    tokenizer = folder / "tokenizer"
    encoder = VideoTextEncoder(HDVILA.from_pretrained(folder), str(tokenizer) if tokenizer.is_dir() else None,
                               InferenceConfig(n_segments=2, sample_rate=rate, canvas_short_side=144, max_text_len=32))
    similarity, attributes, _ = encode_for_composition(encoder, [str(demo / "shards" / "val" / "*.tar")],
                                                       demo / "corpus" / "synthetic" / "metadata.jsonl")
    report = composition_report(similarity, attributes)
    report.pop("top1")
    return report


# arms compared over seeds 0, 1, 2 (results key -> (baseline, challenger)): the sample-rate choice, the stop-30
# recipe against the stop-29 one, and the recipe that ships now (text tower at a tenth of the rate) against stop 30
SEED_COMPARISONS = {"seeds": ("sr4", "sr8"), "seeds_motion": ("sr8", "mnv2-minilm-reversed-stconv-grid8-random"),
                    "seeds_text_lr": ("mnv2-minilm-reversed-stconv-grid8-random", "motion-text-lr0.1")}


def seed_summary(results: dict, arms: tuple[str, str] = ("sr4", "sr8")) -> dict:
    """Val R@1 of two arms over every seed run (the arm itself is train.seed 0): mean, sample std, Welch test."""
    from diffusion_stats import mean_std, welch

    values = {arm: [v["model"]["R@1"] for k, v in results["arms"].items() if k == arm or k.startswith(f"{arm}-seed")]
              for arm in arms}
    out = {arm: {"R@1": vals, "mean_std": mean_std(vals)} for arm, vals in values.items()}
    out["welch"] = welch(values[arms[1]], values[arms[0]])
    return out


def twins(arm: dict) -> str:
    """Twin-test accuracies (own clip above its one-attribute twin, %), or '-' for arms scored before it."""
    if "twins" not in arm:
        return "-"
    return " / ".join(f"{arm['twins'][a]['accuracy']:.0f}" for a in ("shape", "colour", "motion", "background"))


def render(results: dict) -> str:
    """The levers table (validation split) for docs/results/pretrain.md."""
    lines = ["| arm | change from the stop-29 recipe (hdvila-small, sample rate 8) | val R@1 | R@5 | MnR | strongest motion-blind oracle R@1 | "
             "wrong top-1 differing in shape / colour / motion / background | twin test: shape / colour / motion / "
             "background |", "|---|---|---|---|---|---|---|---|"]
    for name, arm in results["arms"].items():
        if "-seed" in name:
            continue
        m, e = arm["model"], arm["errors"]["differs_in"]
        base = name.split("-seed")[0]
        change = ", ".join(([CORPUS[base]] if base in CORPUS else []) + [f"`{o}`" for o in arm["overrides"]]) or "-"
        lines.append(f"| {name} | {change} | {m['R@1']:.1f} | {m['R@5']:.1f} | {m['MnR']:.2f} | "
                     f"{arm['motion_blind']['R@1']:.1f} | {e['shape']} / {e['colour']} / {e['motion']} / "
                     f"{e['background']} | {twins(arm)} |")
    for key in SEED_COMPARISONS:
        if key not in results:
            continue
        seeds = results[key]
        parts = [f"{arm}: {', '.join(f'{v:.1f}' for v in seeds[arm]['R@1'])} (mean {seeds[arm]['mean_std'][0]:.1f}, "
                 f"sd {seeds[arm]['mean_std'][1]:.1f})" for arm in seeds if arm != "welch"]
        w = seeds["welch"] or {}
        lines += ["", f"Seeds 0, 1, 2, val R@1: {'; '.join(parts)}; Welch t-test p = {w.get('p', float('nan')):.2g}."]
    return "\n".join(lines)


def main() -> None:
    from common import machine_line

    import hdvila  # noqa: F401 - registers the recipe names

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="runs/demo")
    parser.add_argument("--out", default="runs/levers")
    parser.add_argument("--arms", nargs="+", default=["sr4", "sr8", "sr4-minilm"], choices=sorted(ARMS))
    parser.add_argument("--seed", type=int, default=None, help="train.seed of every arm (default: the recipe's)")
    parser.add_argument("--reuse", nargs="*", default=[], help="ARM=RUN_DIR: an arm trained already")
    parser.add_argument("--result", default="docs/results/demo_levers.json")
    parser.add_argument("--render", action="store_true", help="print the table of --result and exit")
    parser.add_argument("--build-corpus", type=int, default=None, metavar="NUM_VIDEOS",
                        help="first build the demo corpus with this many videos into --demo")
    parser.add_argument("--group-batches", action="store_true",
                        help="with --build-corpus: factorial training groups, one per shard (see build_corpus)")
    args = parser.parse_args()
    if args.render:
        print(render(json.loads(Path(args.result).read_text())))
        return
    demo, out = Path(args.demo), Path(args.out)
    if args.build_corpus:
        build_corpus(args.build_corpus, demo, args.group_batches)
    reuse = dict(item.split("=", 1) for item in args.reuse)
    result_path = Path(args.result)
    results = json.loads(result_path.read_text()) if result_path.exists() else {"arms": {}}
    previous = dict(results["arms"])
    for name in args.arms:
        started = time.time()
        overrides = ARMS[name] + ([f"train.seed={args.seed}"] if args.seed is not None else [])
        label = name if args.seed is None else f"{name}-seed{args.seed}"
        run = Path(reuse[name]) if name in reuse else train_arm(label, overrides, demo, out)
        report = score_on_val(run, demo, sample_rate(ARMS[name]))
        oracles = {o["name"]: o["R@1"] for o in report["oracles"]}
        results["arms"][label] = {
            "overrides": overrides, "run": str(run), "split": "val", "clips": report["clips"],
            "model": report["model"], "motion_blind": report["motion-blind"], "errors": report["errors"],
            "twins": report["twins"],
            "chance_R@1": oracles["chance"], "oracles_R@1": oracles,
            "minutes": round((time.time() - started) / 60, 1),
        }
        if name in reuse and "minutes" in previous.get(label, {}):  # rescored: keep the training time
            results["arms"][label]["minutes"] = previous[label]["minutes"]
        print(f"{label:>15}: val R@1 {report['model']['R@1']:.1f} R@5 {report['model']['R@5']:.1f} | strongest "
              f"motion-blind oracle {report['motion-blind']['R@1']:.1f} ({report['motion-blind']['strongest']}) | "
              f"wrong top-1 by attribute {report['errors']['differs_in']}", flush=True)
    for key, pair in SEED_COMPARISONS.items():
        if all(any(k.startswith(f"{arm}-seed") for k in results["arms"]) for arm in pair):
            results[key] = seed_summary(results, pair)
    results["machine"] = machine_line()
    result_path.parent.mkdir(parents=True, exist_ok=True)
    from data_tools.files import atomic_write_json

    atomic_write_json(result_path, results)


if __name__ == "__main__":
    main()
