"""StyleGAN2 on the shared trainer: each loss moves only its own network, a tiny run keeps everything finite,
the EMA generator lives in checkpoints and exports without pickle, and the command runs."""
from pathlib import Path

import torch

from animation.gan import GANConfig, GANPair, build_gan, lazy_param_groups, run_train_gan, sample_images
from animation.stylegan2 import Discriminator, Generator, lazy_adam_params
from data_tools.config import load_config
from data_tools.training.metrics import read_metrics
from hdvila.cli import main as cli_main

CONFIG = "animation/faces32-gan"


def tiny(out: Path, **extra) -> list[str]:
    items = {"gan": "sg2-tiny16", "output_dir": str(out), "data.options.count": 64, "train.batch_size": 8,
             "train.max_steps": 8, "train.save_every": 4, "train.val_every": 4, "train.log_every": 1,
             "train.progress": "false", "eval.grid_images": 8, "eval.samples": 32, "ema_kimg": 0.05}
    items.update(extra)
    return [f"{k}={v}" for k, v in items.items()]


def grads_of(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad for p in module.parameters() if p.grad is not None and p.grad.abs().sum() > 0]


def test_each_loss_moves_only_its_own_network():
    torch.manual_seed(0)
    pair = build_gan(load_config(GANConfig, CONFIG, ["gan=sg2-tiny16"]))
    real, z = torch.rand(4, 3, 16, 16) * 2 - 1, torch.randn(4, 32)
    for term, moves, stays in (("g_loss", pair.generator, pair.discriminator),
                               ("d_loss", pair.discriminator, pair.generator),
                               ("r1", pair.discriminator, pair.generator),
                               ("pl_penalty", pair.generator, pair.discriminator)):
        pair.zero_grad(set_to_none=True)
        out = pair(real, z, torch.randn(4, 32), mixing=0.9, r1_weight=1.0, pl_weight=1.0, pl_batch=2)
        out[term].backward()
        assert grads_of(moves), term
        assert not grads_of(stays), term


def test_alternating_steps_train_one_network_each_with_its_own_lazy_regulariser():
    from animation.gan import GANObjective

    cfg = load_config(GANConfig, CONFIG, ["gan=sg2-tiny16", "loss.r1_interval=2", "loss.pl_interval=2"])
    assert cfg.loss.alternate and cfg.train.grad_clip == 0
    torch.manual_seed(0)
    pair = build_gan(cfg)
    objective = GANObjective(cfg, pair, None, Path("unused"))
    batch = {"images": torch.rand(4, 3, 16, 16) * 2 - 1}
    seen = []
    for step in range(6):
        pair.zero_grad(set_to_none=True)
        out = objective.loss(pair, batch, step)
        out["loss"].backward()
        trains_g = step % 2 == 0
        assert bool(grads_of(pair.generator)) == trains_g and bool(grads_of(pair.discriminator)) != trains_g
        assert ("g_loss" in out) == trains_g and ("d_loss" in out) != trains_g
        seen.append(sorted(k for k in out if k in ("r1", "pl_penalty")))
    # phase steps 0, 1, 2 of each network; the interval 2 regularises phase steps 0 and 2
    assert seen == [["pl_penalty"], ["r1"], [], [], ["pl_penalty"], ["r1"]]


def test_lazy_regularisation_sets_group_lr_and_betas():
    cfg = load_config(GANConfig, CONFIG, [])
    groups = {g.name: g for g in lazy_param_groups(cfg).param_groups}
    assert (groups["generator"].lr, groups["generator"].betas) == lazy_adam_params(0.0025, (0.0, 0.99), 4)
    assert (groups["discriminator"].lr, groups["discriminator"].betas) == lazy_adam_params(0.0025, (0.0, 0.99), 16)
    assert groups["discriminator"].lr == 0.0025 * 16 / 17


def test_tiny_run_is_finite_checkpoints_the_ema_and_exports(tmp_path):
    out = tmp_path / "run"
    run_train_gan(load_config(GANConfig, CONFIG, tiny(out)))
    records = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, 9))
    for r in records:
        assert all(torch.isfinite(torch.tensor(v)) for k, v in r.items() if isinstance(v, float))
    assert any("r1" in r for r in records) and any("pl_penalty" in r for r in records)
    validated = [r for r in read_metrics(out / "metrics.jsonl") if "val/swd" in r]
    assert [r["step"] for r in validated] == [4, 8] and all(r["val/swd"] > 0 for r in validated)
    assert (out / "samples" / "step0000004.png").is_file() and (out / "samples.png").is_file()
    generator, discriminator = Generator.from_pretrained(out / "gan"), Discriminator.from_pretrained(out / "gan")
    images = sample_images(generator, 4, seed=0)
    assert images.shape == (4, 3, 16, 16) and torch.equal(images, sample_images(generator, 4, seed=0))
    assert torch.isfinite(discriminator(images)).all()
    assert not any(p.requires_grad for p in generator.parameters())

    # resume from step 4: the EMA generator comes back with the checkpoint, so the continuation matches
    resumed = tmp_path / "resumed"
    run_train_gan(load_config(GANConfig, CONFIG, tiny(resumed, **{"train.max_steps": 4})))
    run_train_gan(load_config(GANConfig, CONFIG, tiny(resumed)), resume=True)
    again = Generator.from_pretrained(resumed / "gan")
    for (name, p), q in zip(generator.state_dict().items(), again.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-5), name


def test_train_gan_command(tmp_path):
    out = tmp_path / "cli"
    assert cli_main(["--quiet", "animate", "train-gan", "--config", str(CONFIG),
                     *tiny(out, **{"train.max_steps": 2, "train.val_every": 0, "train.save_every": 0})]) == 0
    assert isinstance(build_gan(load_config(GANConfig, out / "config.yaml", [])), GANPair)
    assert sorted(p.name for p in (out / "gan").iterdir()) == [
        "config.json", "discriminator.safetensors", "model.safetensors", "run_config.yaml"]
    assert isinstance(build_gan(load_config(GANConfig, out / "gan" / "run_config.yaml", [])), GANPair)
