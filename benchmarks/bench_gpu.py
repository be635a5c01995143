"""Pretraining speed on one GPU: the real `hdvila pretrain` path near the chip's limit, and the loader's cost.

Per model size, recipe and mode (eager, torch.compile), one run of `run_pretrain` (the shared trainer,
DeepSpeed at the size's configured ZeRO stage (paper: ZeRO-2), one process) on synthetic batches of the paper's shapes (`data.synthetic`: random uint8
pixels, pinned, copied to the GPU every step as a real batch is), which measures the model step alone:
- samples/s: the mean over logged windows after the first (the first holds start-up and compilation);
- model TFLOP/s = samples/s x FLOPs per sample (forward + backward, torch FlopCounterMode on a batch of 2);
- MFU against the datasheet's dense bf16 peak and against a measured bf16 matrix-product peak;
- peak GPU memory (torch.cuda.max_memory_allocated) and the compile time (first window minus a steady one);
  runs are separated by a garbage collection, a compiler reset and an emptied CUDA cache, and a run that runs
  out of memory is retried at half the batch.
Stage 1 eager and compiled are also profiled (torch.profiler over their last steps: self time per op and per
op group, and the share of the wall time the GPU was busy). Then the loader: clips/s and CPU-seconds per clip for the paper sampling with `--loader-workers` workers on
`--shards`, and the cores per GPU it takes to feed each run's samples/s.

On a machine without CUDA the same code runs as a rehearsal (default: hdvila-tiny, fp32, a few steps), so
that the script is tested before any GPU time is spent. Writes <out>/gpu.json and gpu.md.

Usage (GPU): python benchmarks/bench_gpu.py --sizes paper --recipes stage1 stage2 joint --batch 64
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import machine_line
from data_tools.config import load_config
from data_tools.files import atomic_write_json, atomic_write_text
from data_tools.training.metrics import read_metrics
from hdvila.recipes.pretrain import RECIPE_OBJECTIVES, PretrainConfig, build_model, run_pretrain, train_sampling

REPO = Path(__file__).resolve().parent.parent
# Dense bf16 tensor-core peak from the datasheets (SXM parts), TFLOP/s; matched against the device name.
DATASHEET_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.05}
# Where the issue started (NVIDIA H200, torch 2.11, plain torch without DeepSpeed, hdvila-paper stage 1, bf16
# autocast, channels_last, fused AdamW, synthetic inputs): not measured by this script.
STARTING_POINT = [
    ("eager", 8, 77, 131, 13), ("eager", 32, 90, 154, 16), ("eager", 64, 92, 158, 16),
    ("eager, + MLM", 32, 73, 157, 16), ("torch.compile", 64, 127, 217, 22),
]


def datasheet_peak_tflops(device_name: str) -> float | None:
    for key, peak in DATASHEET_BF16_TFLOPS.items():
        if key in device_name:
            return peak
    return None


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    """Measured peak of one square matrix product (n x n x n), the mean of `repeats` after 3 warm-ups."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e12


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flops_per_sample(cfg: PretrainConfig, device: torch.device, batch: int = 2) -> float:
    """Forward + backward FLOPs of the recipe's losses per sample, counted on a real batch on `device`."""
    from data_tools.loading.synthetic import synthetic_clip_batch

    model = build_model(cfg).to(device)  # as the recipe builds it: stage 2 freezes the stage-1 parts
    data = synthetic_clip_batch(batch, train_sampling(model.config, cfg.data), cfg.data.max_text_len,
                                model.config.text.vocab_size, special_ids=model.config.special_ids)
    inputs = {k: data[k].to(device) for k in ("hr", "lr", "input_ids", "attention_mask")}
    with FlopCounterMode(display=False) as counter:
        model.compute_losses(inputs, RECIPE_OBJECTIVES[cfg.recipe])["loss"].backward()
    del model, inputs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return counter.get_total_flops() / batch


def steady_samples_per_s(records: list[dict]) -> float:
    """Mean samples/s over the logged windows after the first; the first alone when there is no other."""
    steady = records[1:] or records
    return sum(r["samples_per_s"] for r in steady) / len(steady)


def compile_seconds(records: list[dict], samples_per_window: int) -> float | None:
    """The first window's extra time over a steady window of the same samples: start-up plus compilation."""
    if len(records) < 2:
        return None
    first = samples_per_window / records[0]["samples_per_s"]
    return max(0.0, first - samples_per_window / steady_samples_per_s(records))


# Op name fragments -> the groups a profile is summed into (first match wins); the rest is "other".
OP_GROUPS = (
    ("batch norm", ("batch_norm",)),
    ("convolution", ("convolution", "conv2d", "cudnn_conv", "conv_")),
    ("attention", ("attention", "flash", "sdpa", "efficient_attention")),
    ("matrix products", ("addmm", "::mm", "bmm", "matmul", "linear", "gemm")),
    ("optimizer", ("adam", "_foreach", "optimizer")),
    ("copies and casts", ("copy_", "::to", "_to_copy", "memcpy", "contiguous", "clone")),
    ("normalisation (layer)", ("layer_norm",)),
    ("elementwise and activations", ("relu", "gelu", "add", "mul", "div", "sub", "silu", "softmax", "where")),
)


def op_group(name: str) -> str:
    if name.startswith(("ProfilerStep", "## ")):  # a step's or a compiled graph's own time: no op ran in it
        return "Python and framework (outside ops)"
    low = name.lower()
    for group, fragments in OP_GROUPS:
        if any(fragment in low for fragment in fragments):
            return group
    return "other"


def profile_summary(events, wall_s: float, steps: int, top: int = 25) -> dict:
    """Self time per op (device time where there is a device, else CPU time), per op group, and how busy the
    device was over the profiled steps' wall time."""
    device = any(e.self_device_time_total > 0 for e in events)
    key = "self_device_time_total" if device else "self_cpu_time_total"
    ops = sorted(((e.key, getattr(e, key) / 1e6, e.count) for e in events), key=lambda t: -t[1])
    total = sum(t for _, t, _ in ops) or 1e-12
    groups: dict[str, float] = {}
    for name, seconds, _ in ops:
        groups[op_group(name)] = groups.get(op_group(name), 0.0) + seconds
    return {"timer": "device" if device else "cpu", "steps": steps, "wall_s": round(wall_s, 4),
            "profiled_s": round(total, 4), "busy_fraction": round(total / wall_s, 3) if device and wall_s else None,
            "groups": {g: round(t / total, 4) for g, t in sorted(groups.items(), key=lambda kv: -kv[1])},
            "top_ops": [{"op": n, "share": round(t / total, 4), "ms_per_step": round(1e3 * t / steps, 3),
                         "calls": c} for n, t, c in ops[:top]]}


@contextlib.contextmanager
def profiled_steps(skip: int, steps: int, sink: dict):
    """torch.profiler over training steps skip+1 .. skip+steps of the run inside the block (the trainer's
    `_train_step` is wrapped for the duration); the summary lands in `sink`."""
    from torch.profiler import ProfilerActivity, profile, schedule

    from data_tools.training.trainer import Trainer

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    window: dict[str, float] = {}

    def on_trace_ready(prof) -> None:
        sink.update(profile_summary(prof.key_averages(), window["end"] - window["start"], steps))

    original = Trainer._train_step
    prof = profile(activities=activities, schedule=schedule(wait=skip, warmup=1, active=steps, repeat=1),
                   on_trace_ready=on_trace_ready)
    calls = {"n": 0}

    def step(self) -> None:
        if calls["n"] == skip + 1:
            sync(self.device)
            window["start"] = time.perf_counter()
        original(self)
        calls["n"] += 1
        if calls["n"] == skip + 1 + steps:
            sync(self.device)
            window["end"] = time.perf_counter()
        prof.step()

    Trainer._train_step = step
    try:
        with prof:
            yield sink
    finally:
        Trainer._train_step = original


def run_one(size: str, recipe: str, compile_: bool, batch: int, steps: int, log_every: int, precision: str,
            work: Path, overrides: list[str], profile_steps: int = 0) -> dict:
    out = work / f"{size}-{recipe}-{'compile' if compile_ else 'eager'}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config(PretrainConfig, f"pretrain/{size}", [
        f"output_dir={out}", f"recipe={recipe}", "data.synthetic=true", f"train.batch_size={batch}",
        f"train.max_steps={steps}", f"train.log_every={log_every}", f"train.precision={precision}",
        f"train.compile={str(compile_).lower()}", "train.val_every=0", "train.save_every=0",
        "train.save_at_end=false", "export=false", "train.progress=false", "data.val_shards=[]",
        *overrides])
    release_memory()
    before = torch.cuda.memory_allocated() / 2 ** 30 if torch.cuda.is_available() else 0.0
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    profile: dict = {}
    try:
        if profile_steps:  # the last profile_steps steps before the end, after start-up and compilation
            with profiled_steps(max(0, steps - profile_steps - 1), profile_steps, profile):
                run_pretrain(cfg)
        else:
            run_pretrain(cfg)
    finally:
        wall = time.perf_counter() - started
        release_memory()
    records = read_metrics(out / "metrics.jsonl")
    shutil.rmtree(out, ignore_errors=True)
    sps = steady_samples_per_s(records)
    peak = (torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20)
    return {"size": size, "recipe": recipe, "mode": "compile" if compile_ else "eager", "batch": batch,
            "steps": steps, "precision": precision, "samples_per_s": round(sps, 2), "wall_s": round(wall, 1),
            "startup_and_compile_s": round(compile_seconds(records, log_every * batch) or 0.0, 1),
            "allocated_before_gib": round(before, 2), "zero_stage": cfg.train.zero_stage,
            "deepspeed_config": cfg.train.deepspeed_config, "profile": profile or None,
            "peak_memory_gib": round(peak, 2), "memory_kind": "cuda allocated" if torch.cuda.is_available()
            else "process max RSS", "final_loss": round(records[-1]["loss"], 4), "overrides": overrides}


def release_memory() -> None:
    """Between runs in one process: the last engine's cycles, compiled graphs and cached blocks, so that each
    run's peak memory and compile time are its own."""
    import gc

    gc.collect()
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def significant(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def add_rates(run: dict, flops: float, datasheet: float | None, measured: float) -> dict:
    tflops = run["samples_per_s"] * flops / 1e12
    run["tflop_per_sample"] = significant(flops / 1e12)
    run["model_tflops"] = significant(tflops)
    run["mfu_datasheet"] = significant(tflops / datasheet) if datasheet else None
    run["mfu_measured_peak"] = significant(tflops / measured)
    return run


def loader_cost(shards: str, workers: int, samples: int, keyframes_on_iframes: bool) -> dict:
    """The paper sampling's loader cost on these shards, from bench_loader's measured run."""
    from bench_loader import HDVILA, run_loader

    sampling = dataclasses.replace(HDVILA, keyframes_on_iframes=keyframes_on_iframes)
    folder = Path(shards)
    r = run_loader(folder, workers, samples, backend="pyav", sampling=sampling)
    return {"workers": workers, "samples": r["samples"], "clips_per_s": r["clips_per_s"],
            "cpu_s_per_clip": r["cpu_s_per_clip"], "clips_per_s_per_core": round(1.0 / r["cpu_s_per_clip"], 2),
            "keyframes_on_iframes": keyframes_on_iframes, "skipped": sum(v for k, v in r["loader_counts"].items()
                                                                        if k != "ok")}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    parser.add_argument("--sizes", nargs="+", default=["paper"] if cuda else ["tiny"])
    parser.add_argument("--recipes", nargs="+", default=["stage1", "stage2", "joint"], choices=list(RECIPE_OBJECTIVES))
    parser.add_argument("--modes", nargs="+", default=["eager", "compile"], choices=["eager", "compile"])
    parser.add_argument("--batch", type=int, default=64 if cuda else 2)
    parser.add_argument("--steps", type=int, default=30 if cuda else 6)
    parser.add_argument("--log-every", type=int, default=5 if cuda else 2)
    parser.add_argument("--precision", default="bf16" if cuda else "fp32")
    parser.add_argument("--override", action="append", default=[], help="extra config override for every run")
    parser.add_argument("--matmul-n", type=int, default=8192 if cuda else 512)
    parser.add_argument("--shards", default=None, help="shard folder for the loader measurement (none: skipped)")
    parser.add_argument("--loader-workers", type=int, default=None, help="default: all CPU cores")
    parser.add_argument("--loader-samples", type=int, default=400)
    parser.add_argument("--profile", nargs="*", default=["stage1:eager", "stage1:compile"],
                        help="RECIPE:MODE runs to profile (torch.profiler over their last --profile-steps steps)")
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=420.0 if cuda else 0.0,
                        help="start no run after this many seconds (0: no limit); the loader goes first")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "hdvila-bench-gpu"))
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks"))
    parser.add_argument("--render-only", action="store_true", help="rewrite gpu.md from gpu.json")
    args = parser.parse_args(argv)
    if args.render_only:
        results = json.loads((Path(args.out) / "gpu.json").read_text())
        atomic_write_text(Path(args.out) / "gpu.md", render(results))
        return results
    if args.shards and args.loader_samples < 24:
        parser.error("--loader-samples must be at least 24: 3 batches of 8, the first one left out as start-up")
    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name(0) if cuda else "no GPU (CPU rehearsal)"
    matmul_dtype = torch.bfloat16 if cuda else torch.float32
    measured = matmul_peak_tflops(device, matmul_dtype, args.matmul_n)
    datasheet = datasheet_peak_tflops(name) if cuda else None
    versions = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0]}
    try:
        import deepspeed

        versions["deepspeed"] = deepspeed.__version__
    except ImportError:
        versions["deepspeed"] = None
    results = {"device": name, "machine": machine_line(), "versions": versions,
               "matmul_peak_tflops": significant(measured), "matmul_dtype": str(matmul_dtype).split(".")[-1],
               "matmul_n": args.matmul_n, "datasheet_peak_tflops": datasheet, "runs": [], "loader": None}
    work, out = Path(args.work), Path(args.out)
    started = time.perf_counter()

    def save() -> None:  # after every measurement, so that a run stopped by a time limit keeps what it has
        atomic_write_json(out / "gpu.json", results)
        atomic_write_text(out / "gpu.md", render(results))

    if args.shards:  # first: it is quick and needs no GPU
        import os

        workers = args.loader_workers or os.cpu_count() or 1
        results["loader"] = {key: loader_cost(args.shards, workers, args.loader_samples, on)
                             for key, on in (("any_frame", False), ("keyframes_on_iframes", True))}
        print(json.dumps(results["loader"]), flush=True)
        save()
    flops: dict[tuple[str, str], float] = {}
    # every recipe eager before any compiled run: compiling costs minutes, so the budget cuts those first
    for mode in args.modes:
        for size in args.sizes:
            for recipe in args.recipes:
                if args.budget_s and time.perf_counter() - started > args.budget_s:
                    run = {"size": size, "recipe": recipe, "mode": mode, "batch": args.batch,
                           "error": f"not run: the {args.budget_s:.0f} s budget was spent"}
                    results["runs"].append(run)
                    continue
                # a row before the run, so that a run killed by an outer time limit still shows
                results["runs"].append({"size": size, "recipe": recipe, "mode": mode, "batch": args.batch,
                                        "error": "started, did not finish (killed by a time limit?)"})
                save()
                batch = args.batch
                while True:
                    try:
                        if (size, recipe) not in flops:
                            cfg = load_config(PretrainConfig, f"pretrain/{size}",
                                              [f"recipe={recipe}", *args.override])
                            flops[size, recipe] = flops_per_sample(cfg, device)
                        wanted = f"{recipe}:{mode}" in args.profile
                        run = run_one(size, recipe, mode == "compile", batch, args.steps, args.log_every,
                                      args.precision, work, args.override,
                                      args.profile_steps if wanted else 0)
                        add_rates(run, flops[size, recipe], datasheet, measured)
                    except Exception as exc:  # a failing compile or an out-of-memory is a result, not a crash
                        release_memory()
                        if is_out_of_memory(exc) and batch > 1:
                            print(f"out of memory at batch {batch}; trying {batch // 2}", flush=True)
                            batch //= 2
                            continue
                        run = {"size": size, "recipe": recipe, "mode": mode, "batch": batch,
                               "error": f"{type(exc).__name__}: {exc}"[:400]}
                    break
                results["runs"][-1] = run
                print(json.dumps(run), flush=True)
                save()
    save()
    return results


def render(res: dict) -> str:
    rows = []
    for r in res["runs"]:
        if "error" in r:
            rows.append(f"| {r['size']} | {r['recipe']} | {r['mode']} | {r['batch']} | failed: {r['error']} | | | | | |")
            continue
        mfu = f"{100 * r['mfu_datasheet']:.1f}%" if r["mfu_datasheet"] is not None else "n/a"
        rows.append(f"| {r['size']} | {r['recipe']} | {r['mode']} | {r['batch']} | {r['samples_per_s']:.2f} | "
                    f"{r['model_tflops']:.3g} | {mfu} | {100 * r['mfu_measured_peak']:.1f}% | "
                    f"{r['peak_memory_gib']:.2f} | {r['startup_and_compile_s']:.0f} |")
    start = "\n".join(f"| {mode} | {batch} | {sps} | {tf} | {mfu}% |" for mode, batch, sps, tf, mfu in STARTING_POINT)
    loader = "Not measured in this run (no `--shards`)."
    if res.get("loader"):
        lines = []
        ok = [r for r in res["runs"] if "error" not in r]
        for key, l in res["loader"].items():
            feeds = "; ".join(f"{r['size']} {r['recipe']} {r['mode']}: {r['samples_per_s'] * l['cpu_s_per_clip']:.1f}"
                              for r in ok)
            lines.append(f"| {key} | {l['workers']} | {l['clips_per_s']:.1f} | {l['cpu_s_per_clip']:.4f} | "
                         f"{l['clips_per_s_per_core']:.1f} | {feeds} |")
        loader = ("| keyframes | workers | clips/s | CPU-s per clip | clips/s per core | cores per GPU at each run's rate |\n"
                  "|---|---|---|---|---|---|\n" + "\n".join(lines))
    profiles = []
    for r in res["runs"]:
        prof = r.get("profile")
        if not prof:
            continue
        groups = ", ".join(f"{g} {100 * share:.0f}%" for g, share in prof["groups"].items() if share >= 0.01)
        busy = (f"; the device was busy {100 * prof['busy_fraction']:.0f}% of the wall time"
                if prof.get("busy_fraction") is not None else "")
        ops = "\n".join(f"| {o['op']} | {100 * o['share']:.1f}% | {o['ms_per_step']:.2f} | {o['calls']} |"
                        for o in prof["top_ops"][:12])
        profiles.append(f"""### {r['size']} {r['recipe']} {r['mode']}, batch {r['batch']}: {prof['steps']} steps ({prof['timer']} self time)

By group: {groups}{busy}.

| op | share | ms per step | calls |
|---|---|---|---|
{ops}
""")
    profile_text = "\n".join(profiles) or "No run was profiled."
    v = res["versions"]
    rehearsal = ""
    if res["datasheet_peak_tflops"] is None:
        rehearsal = """
**No GPU figure is on this page yet.** It is the script's rehearsal on a CPU with hdvila-tiny in fp32: it
shows that every path (synthetic batches, the trainer, compile, FLOP counting, the loader) runs and how the
figures are derived, nothing about a GPU. The paper-size rows come from `bash benchmarks/gpu_session.sh` on
a GPU machine (after `bash benchmarks/gpu_prepare.sh` here); until then the starting point below is the
only GPU measurement. The loader rows are real measurements of this CPU, with the paper's sampling.
"""
    return f"""# Pretraining speed on {res['device']}
{rehearsal}
Command: `python benchmarks/bench_gpu.py` (see its docstring); this page and `gpu.json` are its output.
Machine: {res['machine']}. Software: torch {v['torch']}, CUDA {v['cuda']}, DeepSpeed {v['deepspeed']},
Python {v['python']}.

Peaks: datasheet dense bf16 {res['datasheet_peak_tflops'] or 'n/a'} TFLOP/s; measured {res['matmul_dtype']}
matrix product ({res['matmul_n']}-cube) {res['matmul_peak_tflops']} TFLOP/s.

Each row is one `hdvila pretrain` run through the shared trainer (DeepSpeed with the size's configured ZeRO
stage, recorded in gpu.json; one process) on synthetic
batches of the model's shapes (`data.synthetic: true`), so it measures the model step, host-to-device copy
included, without the loader. samples/s is the mean over logged windows after the first; TFLOP/s counts forward
+ backward FLOPs (torch FlopCounterMode); startup + compile = the first window's time over a steady window's.

| model | recipe | mode | batch | samples/s | model TFLOP/s | MFU (datasheet) | MFU (measured peak) | peak memory (GiB) | startup + compile (s) |
|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

## Profiles (torch.profiler)

{profile_text}

## Loader: CPU cores per GPU

{loader}

## Starting point (from the GPU issue; NVIDIA H200, torch 2.11, plain torch without DeepSpeed, not this script)

hdvila-paper stage 1, bf16 autocast, channels_last, fused AdamW, synthetic uint8 inputs, 1.71 TFLOP per sample:

| setting | batch | samples/s | model TFLOP/s | MFU (989 TFLOP/s) |
|---|---|---|---|---|
{start}
"""


if __name__ == "__main__":
    main()
