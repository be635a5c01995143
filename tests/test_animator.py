"""The language-guided face animator end to end at toy size: frame 0 is the inversion, the generator stays
frozen while the motion generator trains, losses stay finite, and `animate run` writes mp4 / gif + a sheet."""

import numpy as np
import pytest
import torch

import hdvila
from animation.animator import AnimatorConfig, FaceAnimator, run_train_animator
from animation.faces import render_faces, sample_factors
from animation.gan import GANConfig, run_train_gan
from animation.stylegan2 import Generator
from data_tools.config import load_config
from data_tools.training.metrics import read_metrics
from hdvila.cli import main as cli_main
from hdvila.encoder import InferenceConfig, VideoTextEncoder
from hdvila.models import create_model



@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("animator")
    run_train_gan(load_config(GANConfig, "animation/faces32-gan", [
        "gan=sg2-tiny16", f"output_dir={root / 'gan'}", "data.options.count=32", "train.batch_size=8", "train.max_steps=2",
        "train.val_every=0", "train.save_every=0", "train.progress=false", "eval.grid_images=4"]))
    torch.manual_seed(0)
    VideoTextEncoder(create_model("hdvila-tiny").eval(), None, InferenceConfig(n_segments=2, backend="pyav")
                     ).save_pretrained(root / "text")
    text_encoder = hdvila.load_pretrained(root / "text").encode_text
    cfg = load_config(AnimatorConfig, "animation/faces32-animator", [
        f"gan_dir={root / 'gan' / 'gan'}", "inversion_dir=", f"text_model={root / 'text'}",
        f"cache_dir={root / 'cache'}",
        f"output_dir={root / 'anim'}", "oracle={count: 128, epochs: 1, eval_count: 32}",
        "scorer={steps: 6, batch_size: 8, eval_per_action: 1}", "data.faces=24", "data.identities=40",
        "data.encoder_steps=10", "data.invert_steps=2", "h_dim=16", "run_frames=4", "train.max_steps=6",
        "train.batch_size=4", "train.val_every=3", "train.save_every=0", "train.log_every=1", "train.progress=false"])
    initial_generator = Generator.from_pretrained(cfg.gan_dir).state_dict()
    run_train_animator(cfg, text_encoder, progress=False)
    return root, cfg, text_encoder, initial_generator


def test_training_keeps_losses_finite_and_writes_previews(trained):
    root, cfg, _, _ = trained
    records = [r for r in read_metrics(root / "anim" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, 7))
    for name in ("loss", "anchor", "identity", "smoothness", "endpoint", "text"):
        assert all(np.isfinite(r[name]) for r in records), name
    assert (root / "anim" / "samples" / "step0000003.png").is_file()
    assert (root / "anim" / "contact_sheet.png").is_file()


def test_generator_stays_frozen_while_the_motion_generator_trains(trained):
    root, cfg, text_encoder, initial_generator = trained
    runner = FaceAnimator.from_pretrained(root / "anim" / "animator", text_encoder)
    for name, value in runner.animator.generator.state_dict().items():
        assert torch.equal(value, initial_generator[name]), name
    assert not any(p.requires_grad for p in runner.animator.generator.parameters())
    fresh = type(runner.animator)(Generator.from_pretrained(cfg.gan_dir), 64, cfg)
    moved = [n for n, p in runner.animator.motion.state_dict().items()
             if not torch.equal(p, fresh.motion.state_dict()[n])]
    assert moved  # the motion generator did learn something


def test_frame_zero_is_the_inversion_and_motion_follows_the_text(trained):
    root, _, text_encoder, _ = trained
    runner = FaceAnimator.from_pretrained(root / "anim" / "animator", text_encoder)
    faces = render_faces(sample_factors(2, np.random.default_rng(3)), 16)
    images = runner.prepare_images(faces)
    w_inv = torch.randn(2, runner.animator.generator.num_ws, runner.animator.generator.w_dim)
    with torch.no_grad():
        text = text_encoder(["the person smiles", "she turns left"]).float()
        frames, dw, ws = runner.animator(images, w_inv, text, 5, decay="linear")
        expected = runner.animator.generator.synthesis(w_inv, noise_mode="const")
    assert frames.shape == (2, 5, 3, 16, 16) and torch.equal(dw[:, 0], torch.zeros_like(dw[:, 0]))
    assert torch.allclose(frames[:, 0], expected, atol=1e-5)
    assert not torch.allclose(frames[:, -1], frames[:, 0])  # something moves


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_animate_run_command_writes_the_animation_and_a_contact_sheet(trained, tmp_path, suffix, capsys):
    from PIL import Image

    root, _, _, _ = trained
    face = tmp_path / "face.png"
    Image.fromarray(render_faces(sample_factors(1, np.random.default_rng(5)), 64)[0]).save(face)
    out = tmp_path / f"smile{suffix}"
    assert cli_main(["--quiet", "animate", "run", "--model", str(root / "anim" / "animator"), "--image", str(face),
                     "--text", "the person smiles", "--frames", "6", "--out", str(out)]) == 0
    assert out.stat().st_size > 0 and out.with_suffix(".png").is_file()
    if suffix == ".gif":
        with Image.open(out) as gif:
            assert gif.n_frames == 6
    else:
        import av

        with av.open(str(out)) as container:
            assert sum(1 for _ in container.decode(video=0)) == 6


def test_animate_eval_command_scores_held_out_clips(trained, tmp_path, capsys):
    import json

    root, _, _, _ = trained
    out = tmp_path / "eval.json"
    assert cli_main(["--quiet", "animate", "eval", "--model", str(root / "anim" / "animator"), "--faces", "1",
                     "--frames", "4", "--out", str(out), "--gan-ceiling"]) == 0
    metrics = json.loads(out.read_text())
    model, truth, gan = metrics["model"], metrics["ground_truth"], metrics["gan_ceiling"]
    assert gan["clips"] == 24 and gan["frames"] == 4
    # the renderer's clips pass through the tiny GAN: the oracle reads less of each action from them
    assert 0 <= gan["text_match"] <= 1 and gan["frame0_l1"] > truth["frame0_l1"] == 0
    assert model["clips"] == 24 and model["frames"] == 4
    for key in ("text_match", "direction", "monotone_steps", "identity_error", "smoothness_latent", "acd_identity"):
        assert np.isfinite(model[key]) and np.isfinite(truth.get(key, 0.0)), key
    assert 0 <= model["text_match"] <= 1 and model["chance"] == pytest.approx(1 / 24)
    assert out.with_suffix(".png").is_file()


def test_inversions_are_cached_for_the_next_run(trained, monkeypatch):
    from animation import animator as animator_mod
    from animation import inversion as inversion_mod
    from animation.oracle import get_scorer

    root, cfg, text_encoder, _ = trained
    assert len(list((root / "cache").glob("inverted-*"))) == 1
    monkeypatch.setattr(inversion_mod, "invert", lambda *a, **k: pytest.fail("inverted again despite the cache"))
    generator = Generator.from_pretrained(cfg.gan_dir)
    data = animator_mod.prepare_data(cfg, generator, text_encoder, get_scorer(cfg.cache_dir, size=16, **cfg.scorer),
                                     None, progress=False, cache_dir=cfg.cache_dir)
    assert data.w_inv.shape == (cfg.data.faces, generator.num_ws, generator.w_dim)


def test_text_noise_perturbs_the_motion_input_only():
    from animation.animator import AnimatorBatches, AnimatorData

    gen = torch.Generator().manual_seed(0)
    data = AnimatorData(images=torch.zeros(6, 3, 16, 16), w_inv=torch.zeros(6, 4, 8), sentences=["s"] * 48,
                        sentence_action=torch.arange(48) % 24, text_emb=torch.randn(48, 64, generator=gen) * 3,
                        scorer_emb=torch.randn(48, 16, generator=gen))

    def first_batch(noise, epoch=0):
        batches = AnimatorBatches(data, batch_size=8, seed=1, steps_per_epoch=1, text_noise=noise)
        batches.set_epoch(epoch)
        return next(iter(batches))

    clean, noisy = first_batch(0.0), first_batch(0.5)
    assert torch.equal(clean["action"], noisy["action"]) and torch.equal(clean["scorer_emb"], noisy["scorer_emb"])
    # noise of norm ~0.5 on the unit embedding (the motion generator normalises its input anyway)
    delta = noisy["text_emb"] - torch.nn.functional.normalize(clean["text_emb"], dim=-1)
    assert delta.norm(dim=-1).mean().item() == pytest.approx(0.5, rel=0.25)
    assert torch.equal(first_batch(0.5)["text_emb"], noisy["text_emb"])  # seeded
    assert not torch.equal(first_batch(0.5, epoch=1)["text_emb"], noisy["text_emb"])


def test_a_given_inversion_encoder_is_used_instead_of_training_one(trained, tmp_path):
    """A heads prior's generator was never sampled from z, so the animator takes its encoder (`inversion_dir`);
    the inversions cached with it are keyed by its weights, apart from the trained encoder's."""
    from dataclasses import replace

    from animation.animator import prepare_frozen_parts
    from animation.inversion import InversionEncoder

    root, cfg, text_encoder, _ = trained
    generator = Generator.from_pretrained(cfg.gan_dir)
    given = InversionEncoder.for_generator(generator, seed=5)
    given.save_pretrained(tmp_path / "inversion")
    encoders_before = sorted((root / "cache").glob("inversion-encoder-*"))
    inverted_before = set((root / "cache").glob("inverted-*"))
    parts = prepare_frozen_parts(replace(cfg, inversion_dir=str(tmp_path / "inversion")), text_encoder,
                                 progress=False)
    for name, value in given.state_dict().items():
        assert torch.equal(parts.inversion_encoder.state_dict()[name], value), name
    assert sorted((root / "cache").glob("inversion-encoder-*")) == encoders_before  # nothing trained
    assert len(set((root / "cache").glob("inverted-*")) - inverted_before) == 1  # its own inversions
    assert parts.data.w_inv.shape == (cfg.data.faces, generator.num_ws, generator.w_dim)
