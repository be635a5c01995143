"""A non-editable install runs every recipe from another folder, with configs given by name.

`pip install --no-deps --no-build-isolation --target SITE .` of the checkout, then `python -m hdvila.cli` with
PYTHONPATH=SITE and a temporary working directory: the packaged configs (hdvila/configs, resolved by name)
and DeepSpeed JSONs (data_tools/training/deepspeed) must be found without the repository.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from data_tools.shard_summary import iter_shard_captions

REPO = Path(__file__).resolve().parent.parent

TINY_SYNTH = ["num_videos=8", "num_heldout_videos=2", "height=72", "width=96", "event_seconds=2.0"]
TINY_BUILD = ["sentences.min_duration=1.0", "transcode.preset=ultrafast", "shards.samples_per_shard=4", "workers=2"]
QUIET_TRAIN = ["train.save_every=0", "train.val_every=0", "train.log_every=1"]
# set in this process by earlier in-process runs (a world of one); a child would join that group's store
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def clean_env(site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    return {**env, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    # a copy of the source tree, so the build's own build/ and *.egg-info folders stay out of the checkout
    source = tmp_path_factory.mktemp("source")
    for name in ("setup.py", "requirements.txt", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for package in ("data_tools", "hdvila", "diffusion", "animation", "instruct", "spo", "bridge", "cca"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    site = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--no-compile", "--target", str(site), str(source)],
                          capture_output=True, text=True, timeout=300, cwd=site)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    work = tmp_path_factory.mktemp("elsewhere")
    env = clean_env(site)

    def run(*args: str, module: str = "hdvila.cli") -> str:
        cmd = [sys.executable, "-m", module, *args] if module else [sys.executable, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work, timeout=300)
        assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    return site, work, run


def test_the_installed_copy_is_imported_and_ships_its_configs(installed):
    site, work, run = installed
    printed = run("-c", "import json, data_tools, hdvila, diffusion, animation, instruct, spo, bridge, cca.loop;"
                        "from data_tools.config import resolve_config;"
                        "from data_tools.training.trainer import resolve_deepspeed_config;"
                        "print(json.dumps([m.__file__ for m in (data_tools, hdvila, diffusion, animation, instruct,"
                        " spo, bridge, cca.loop)] + [str(resolve_config(name)) for name in ('pretrain/small', 'spo/digits',"
                        " 'bridge/toy')] + [str(resolve_deepspeed_config('zero1'))]"
                        " + [str(p) for p in __import__('importlib.resources').resources.files('hdvila.serve')"
                        ".joinpath('static').iterdir()]))",
                  module="")
    paths = json.loads(printed)
    assert {"index.html", "app.js", "style.css"} <= {Path(p).name for p in paths}  # the search page ships
    for path in paths:
        assert Path(path).resolve().is_relative_to(site.resolve()), path
        assert not Path(path).resolve().is_relative_to(REPO), path
    assert "pretrain" in run("--help") and "--instruct-model" in run("agents", "edit", "--help")


def test_a_config_name_that_is_not_shipped_lists_close_names(installed):
    site, work, run = installed
    proc = subprocess.run([sys.executable, "-m", "hdvila.cli", "pretrain", "--config", "pretrain/smal"],
                          capture_output=True, text=True, cwd=work, timeout=120,
                          env=clean_env(site))
    assert proc.returncode == 2 and "pretrain/small" in proc.stderr


def test_every_recipe_runs_from_the_installed_package_by_config_name(installed):
    site, work, run = installed
    run("--quiet", "data", "synth", "--out", "corpus", *TINY_SYNTH)
    for split in ("train", "heldout"):  # the default build config is the packaged data/build
        run("--quiet", "data", "build", f"corpus/{split}", "--out", f"shards/{split}", *TINY_BUILD)
    loader = ["data.num_workers=0", "data.decode_timeout=0", "data.backend=pyav"]

    run("--quiet", "pretrain", "--config", "pretrain/tiny", "output_dir=pre", "data.train_shards=[shards/train/*.tar]",
        "data.val_shards=[shards/heldout/*.tar]", *loader, "train.max_steps=2", "train.batch_size=2", *QUIET_TRAIN)
    assert (work / "pre" / "pretrained").is_dir()
    resolved = (work / "pre" / "config.yaml").read_text()
    assert "deepspeed_config: zero1" in resolved

    with open(work / "captions.jsonl", "w") as fh:  # the clips' own captions as retrieval annotations
        for _, meta, text in iter_shard_captions(str(work / "shards" / "train" / "*.tar")):
            fh.write(json.dumps({"clip_id": meta["clip_id"], "caption": text}) + "\n")
    loader += ["data.test_segments=1", "data.canvas_short_side=null", "eval.num_workers=0"]
    run("--quiet", "retrieval", "finetune", "--config", "retrieval/demo", "--model", "pre/pretrained", "output_dir=ret",
        "data.dataset=jsonl", "data.train_annotations=captions.jsonl", "data.test_annotations=captions.jsonl",
        "data.train_shards=[shards/train/*.tar]", "data.test_shards=[shards/train/*.tar]", *loader,
        "train.max_steps=2", "train.batch_size=2", *QUIET_TRAIN)
    assert (work / "ret" / "pretrained").is_dir()
    run("--quiet", "retrieval", "eval", "--config", "retrieval/demo.yaml", "--model", "ret/pretrained", "--out", "report",
        "data.train_shards=[shards/train/*.tar]", "data.test_shards=[shards/heldout/*.tar]", *loader)
    assert (work / "report" / "results.json").is_file()

    run("--quiet", "diffusion", "train", "--config", "diffusion/digits-dit", "output_dir=dit",
        "model_overrides={width: 32, depth: 1, heads: 2}", "train.max_steps=2", "train.batch_size=16",
        *QUIET_TRAIN, "eval.samples=16", "eval.grid_images=4", "sampler.steps=2", "eval.classifier_cache=classifiers")
    assert (work / "dit" / "model").is_dir()

    run("--quiet", "animate", "train-gan", "--config", "animation/faces32-gan", "gan=sg2-tiny16", "output_dir=gan",
        "data.options.count=32", "train.batch_size=8", "train.max_steps=2", *QUIET_TRAIN, "eval.grid_images=4",
        "eval.samples=16")
    assert (work / "gan" / "gan").is_dir()

    # the animator against that GAN, with the tiny pretrained model as its text encoder
    run("--quiet", "animate", "train", "--config", "animation/faces32-animator", "gan_dir=gan/gan", "inversion_dir=",
        "text_model=pre/pretrained", "cache_dir=anim-cache", "output_dir=anim",
        "oracle={count: 128, epochs: 1, eval_count: 32}", "scorer={steps: 6, batch_size: 8, eval_per_action: 1}",
        "data.faces=24", "data.identities=40", "data.encoder_steps=10", "data.invert_steps=2", "h_dim=16",
        "run_frames=4", "train.max_steps=2", "train.batch_size=4", *QUIET_TRAIN)
    assert (work / "anim" / "animator").is_dir()
