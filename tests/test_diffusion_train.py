"""Diffusion on the shared trainer: a tiny run lowers the loss, EMA lives in checkpoints, export / sample /
eval commands, the video-frame data path, and every registry model builds (paper sizes on the meta device)."""
import json
from pathlib import Path

import pytest
import torch

from data_tools.config import load_config
from data_tools.training.metrics import read_metrics
from diffusion.config import DiffusionConfig
from diffusion.models import create_model, list_models
from diffusion.pipeline import DiffusionPipeline, generate
from diffusion.train import run_train
from hdvila.cli import main as cli_main

CONFIG = "diffusion/digits-dit"


def tiny_overrides(out: Path, **extra) -> list[str]:
    items = {"output_dir": str(out), "model_overrides": "{width: 32, depth: 1, heads: 2}",
             "train.max_steps": 60, "train.batch_size": 32, "train.log_every": 10, "train.val_every": 30,
             "train.save_every": 30, "train.progress": "false", "optim.lr": 3e-3, "optim.warmup_steps": 0,
             "eval.samples": 64, "eval.grid_images": 16, "sampler.steps": 8,
             "eval.classifier_cache": str(out.parent / "classifiers")}
    items.update(extra)
    return [f"{k}={v}" for k, v in items.items()]


@pytest.mark.parametrize("name", list_models())
def test_every_registry_model_builds_and_keeps_the_shape(name):
    model = create_model(name)
    cfg = model.config
    if cfg.image_size > 28 or cfg.num_classes:  # paper-size DiTs: build on the meta device only
        with torch.device("meta"):
            model = create_model(name)
            x = torch.empty(2, cfg.channels, cfg.image_size, cfg.image_size)
            labels = torch.zeros(2, dtype=torch.long) if cfg.num_classes else None
            assert model(x, torch.zeros(2), labels).shape == x.shape
        if name == "dit-s2":
            assert sum(p.numel() for p in model.parameters()) == pytest.approx(33e6, rel=0.02)  # DiT-S/2: 33M
        if name == "dit-xl2":
            assert sum(p.numel() for p in model.parameters()) == pytest.approx(675e6, rel=0.01)  # DiT-XL/2: 675M
        return
    x = torch.randn(2, cfg.channels, cfg.image_size, cfg.image_size)
    assert model(x, torch.tensor([-5.0, 5.0])).shape == x.shape


def test_dit_starts_as_zero_and_conditions_on_noise_level_and_label():
    model = create_model("dit-digits", num_classes=10)
    x = torch.randn(4, 1, 8, 8)
    assert torch.count_nonzero(model(x, torch.zeros(4))) == 0  # adaLN-Zero head
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    a = model(x, torch.zeros(4), torch.zeros(4, dtype=torch.long))
    assert not torch.allclose(a, model(x, torch.full((4,), 3.0), torch.zeros(4, dtype=torch.long)))
    assert not torch.allclose(a, model(x, torch.zeros(4), torch.ones(4, dtype=torch.long)))


def test_tiny_run_lowers_the_loss_keeps_ema_in_checkpoints_and_exports(tmp_path):
    out = tmp_path / "run"
    cfg = load_config(DiffusionConfig, CONFIG, tiny_overrides(out, target="v", **{
        "weighting.name": "min_snr", "weighting.params": "{gamma: 5.0}"}))
    run_train(cfg)
    records = read_metrics(out / "metrics.jsonl")
    first, last = records[0], records[-1]
    assert last["step"] == 60 and last["loss"] < 0.8 * first["loss"]
    validated = [r for r in records if "val/fd" in r]
    assert [r["step"] for r in validated] == [30, 60] and all(r["val/fd"] > 0 for r in validated)
    assert (out / "samples" / "step0000030.png").is_file() and (out / "samples.png").is_file()
    pipe = DiffusionPipeline.from_pretrained(out / "model")
    model, loaded_cfg = pipe.model, pipe.config
    assert loaded_cfg.target == "v" and loaded_cfg.weighting.name == "min_snr"
    a = generate(model, loaded_cfg, 8, seed=3)
    assert a.shape == (8, 1, 8, 8) and torch.equal(a, generate(model, loaded_cfg, 8, seed=3))

    # resume from the step-30 checkpoint: the EMA comes back too, so the continuation matches
    resumed = tmp_path / "resumed"
    cfg30 = load_config(DiffusionConfig, CONFIG, tiny_overrides(resumed, target="v", **{
        "weighting.name": "min_snr", "weighting.params": "{gamma: 5.0}", "train.max_steps": 30}))
    run_train(cfg30)
    cfg60 = load_config(DiffusionConfig, CONFIG, tiny_overrides(resumed, target="v", **{
        "weighting.name": "min_snr", "weighting.params": "{gamma: 5.0}"}))
    run_train(cfg60, resume=True)
    pipe = DiffusionPipeline.from_pretrained(resumed / "model")
    resumed_model, _ = pipe.model, pipe.config
    for (name, p), q in zip(model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-5), name


def test_sample_and_eval_commands(tmp_path, capsys):
    out = tmp_path / "run"
    run_train(load_config(DiffusionConfig, CONFIG, tiny_overrides(out, **{
        "train.max_steps": 10, "train.val_every": 0, "train.save_every": 0})))
    assert cli_main(["--quiet", "diffusion", "sample", "--model", str(out / "model"), "--out",
                     str(tmp_path / "grid.png"), "--n", "16", "--sampler", "heun", "--steps", "4"]) == 0
    assert (tmp_path / "grid.png").stat().st_size > 100
    assert cli_main(["--quiet", "diffusion", "eval", "--model", str(out / "model"), "--samples", "50",
                     "--steps", "4", "--out", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["fd"] > 0 and metrics["swd"] > 0


def test_video_shards_feed_frames_through_the_shared_data_layer(tmp_path):
    from data_tools.ingest.build import build_shards
    from data_tools.ingest.config import BuildConfig
    from data_tools.synth import SynthConfig, synthesize_corpus

    synthesize_corpus(tmp_path / "corpus", load_config(SynthConfig, None, [
        "num_videos=2", "num_heldout_videos=0", "height=48", "width=64", "event_seconds=2.0"]), progress=False)
    build_shards([str(tmp_path / "corpus" / "train")], tmp_path / "shards", load_config(BuildConfig, None, [
        "sentences.min_duration=1.0", "transcode.preset=ultrafast", "workers=1"]), progress=False)
    out = tmp_path / "run"
    cfg = load_config(DiffusionConfig, "diffusion/bbb-frames", [
        f"output_dir={out}", f"data.shards=[{tmp_path / 'shards' / '*.tar'}]", "data.num_workers=0",
        "data.size=16", "data.epoch_samples=16", "model_overrides={image_size: 16}", "train.max_steps=3",
        "train.batch_size=4", "train.save_every=0", "train.log_every=1", "train.progress=false",
        "sampler.steps=4", "eval.grid_images=4"])
    summary = run_train(cfg)
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records if "loss" in r)
    pipe = DiffusionPipeline.from_pretrained(out / "model")
    model, loaded = pipe.model, pipe.config
    assert model.config.channels == 3 and model.config.image_size == 16 and loaded.data.kind == "video"
    assert (out / "samples.png").stat().st_size > 100 and summary is not None
