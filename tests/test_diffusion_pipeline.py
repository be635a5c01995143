"""Diffusion registries (did-you-mean errors, overrides on config objects), the exported-model pretrained folder
(round trip, the older layout through its legacy reader and migration, the FD classifier's older layout), and
the sampling CLI's validated overrides."""
import json
from dataclasses import asdict

import pytest
import torch

from data_tools.config import ConfigError, dump_config
from data_tools.pretrained import is_pretrained_folder, migrate_pretrained, read_pretrained
from data_tools.registry import RegistryError
from diffusion.config import DiffusionConfig, SamplerConfig, with_overrides
from diffusion.metrics import FeatureClassifier
from diffusion.models import DENOISERS, DenoiserConfig, create_model, get_model_config, list_models
from diffusion.pipeline import RUN_CONFIG_FILE, DiffusionPipeline, generate
from diffusion.samplers import SAMPLERS
from diffusion.schedules import SCHEDULES, get_schedule
from diffusion.train import DiffusionObjective
from diffusion.weighting import WEIGHTINGS, loss_weight
from hdvila.cli import main as cli_main

TINY = dict(width=32, depth=1, heads=2)


# ------------------------------------------------------------------------------------------------ registries

def test_registries_list_names_and_suggest_the_closest():
    assert list_models() == DENOISERS.list() and "dit-digits" in list_models()
    assert set(SAMPLERS) == {"ddim", "euler", "heun", "euler_ancestral"}
    assert {"cosine", "laplace", "mixture"} <= set(SCHEDULES)
    assert {"constant", "min_snr", "importance"} <= set(WEIGHTINGS)
    cases = [(lambda: create_model("dit-digit"), "unknown diffusion model 'dit-digit' (did you mean 'dit-digits'?)"),
             (lambda: get_schedule("lapalce"), "did you mean 'laplace'?"),
             (lambda: SAMPLERS.get("hune"), "unknown sampler 'hune' (did you mean 'heun'?)"),
             (lambda: loss_weight("min_snrr", 0.0, "eps"), "did you mean 'min_snr'?")]
    for call, message in cases:
        with pytest.raises(RegistryError) as raised:
            call()
        assert message in str(raised.value)
        assert isinstance(raised.value, ValueError) and isinstance(raised.value, KeyError)


def test_overrides_apply_to_a_config_object_too():
    base = get_model_config("dit-digits")
    model = create_model(base, **TINY)
    assert (model.config.width, model.config.depth, model.config.heads) == (32, 1, 2)
    assert base.width == 128  # the caller's config is not changed
    assert create_model("dit-digits", **TINY).config == model.config
    assert DENOISERS.get("dit-digits").width == 128  # nor the registered one
    with pytest.raises(ValueError, match="unknown model config keys"):
        create_model(base, widht=32)
    with pytest.raises(RegistryError, match="denoiser backbone 'dti'"):
        create_model(DenoiserConfig(kind="dti"))


def test_run_config_validates_registry_names_and_values():
    cfg = DiffusionConfig()
    assert with_overrides(cfg, {"sampler.name": "heun", "sampler.steps": 7}).sampler.steps == 7
    assert cfg.sampler.steps == 50  # a copy
    for overrides, message in [(["sampler.name=hune"], "did you mean 'heun'"), (["sampler.steps=0"], ">= 1"),
                               (["sampler.steps=abc"], "expected an integer"),
                               (["sampler.name=euler", "sampler.eta=0.5"], "only a stochastic sampler"),
                               (["sampler.grid=quadratic"], "sampler.grid"), (["target=eps2"], "target"),
                               (["schedule.name=lapalce"], "did you mean 'laplace'"),
                               (["weighting.params={gama: 5}"], "does not take"),
                               (["model=dit-digit"], "did you mean 'dit-digits'")]:
        with pytest.raises(ConfigError, match=message):
            with_overrides(cfg, overrides)
    with pytest.raises(ConfigError):
        SamplerConfig(logsnr_min=3.0, logsnr_max=3.0)


# ------------------------------------------------------------------------------------------------ pretrained

def _trained_objective(tmp_path, **cfg_overrides):
    cfg = with_overrides(DiffusionConfig(), {"model_overrides": TINY, "sampler.steps": 4, "ema_decay": 0.5,
                                             "output_dir": str(tmp_path / "run"), **cfg_overrides})
    torch.manual_seed(0)
    model = create_model(cfg.model, **cfg.model_overrides)
    objective = DiffusionObjective(cfg, model, None, tmp_path)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    images = torch.rand(16, 1, 8, 8) * 2 - 1
    for step in range(3):
        loss = objective.loss(model, {"images": images, "labels": torch.zeros(16, dtype=torch.long)}, step)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        objective.after_step(model, step)
    return cfg, model, objective


def test_exported_folder_samples_like_the_in_memory_ema_model(tmp_path):
    cfg, model, objective = _trained_objective(tmp_path)
    ema = objective.ema.module
    assert not torch.equal(next(ema.parameters()), next(model.parameters()))  # the average, not the live weights
    expected = generate(ema, cfg, 6, seed=3)
    folder = DiffusionPipeline(ema, cfg).save_pretrained(tmp_path / "model")
    assert is_pretrained_folder(folder) and (folder / RUN_CONFIG_FILE).is_file()
    record = read_pretrained(folder)
    assert record.kind == "diffusion-denoiser" and record.config == asdict(ema.config)
    assert record.meta["target"] == cfg.target and RUN_CONFIG_FILE in record.files
    pipe = DiffusionPipeline.from_pretrained(folder)
    assert pipe.config == cfg
    assert torch.equal(pipe.sample(6, seed=3), expected)
    pipe = DiffusionPipeline.from_pretrained(folder)
    model2, cfg2 = pipe.model, pipe.config
    assert torch.equal(generate(model2, cfg2, 6, seed=3), expected)
    heun = pipe.with_overrides(["sampler.name=heun"])
    assert heun.config.sampler.name == "heun" and pipe.config.sampler.name == "ddim"


def _write_v0_folder(path, model, cfg):
    """The layout the old `diffusion.train.save_model` wrote: config.yaml + denoiser.json + model.safetensors."""
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    (path / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
    (path / "denoiser.json").write_text(json.dumps(asdict(model.config)), encoding="utf-8")
    save_file({k: v.detach().float().contiguous() for k, v in model.state_dict().items()},
              str(path / "model.safetensors"))


def test_old_exported_folder_loads_and_migrates(tmp_path):
    cfg, _, objective = _trained_objective(tmp_path, target="v")
    ema = objective.ema.module
    expected = generate(ema, cfg, 5, seed=1)
    old = tmp_path / "old-model"
    _write_v0_folder(old, ema, cfg)
    assert read_pretrained(old).legacy == "diffusion-denoiser-v0"
    pipe = DiffusionPipeline.from_pretrained(old)
    assert pipe.config.target == "v" and torch.equal(pipe.sample(5, seed=1), expected)

    migrate_pretrained(old)
    assert is_pretrained_folder(old) and read_pretrained(old).legacy is None
    assert read_pretrained(old).checksums["model"] is not None  # the new folder checks its weights
    pipe = DiffusionPipeline.from_pretrained(old)
    model, migrated_cfg = pipe.model, pipe.config
    assert migrated_cfg == cfg and torch.equal(generate(model, migrated_cfg, 5, seed=1), expected)


def test_old_feature_classifier_folder_loads_and_migrates(tmp_path):
    import hashlib

    from safetensors.torch import save

    torch.manual_seed(0)
    clf = FeatureClassifier((1, 8, 8), 10, (16,), "mlp", meta={"seed": 0, "test_accuracy": 0.5})
    old = tmp_path / "clf"
    old.mkdir()
    blob = save({k: v.contiguous() for k, v in clf.state_dict().items()})
    (old / "weights.safetensors").write_bytes(blob)
    (old / "config.json").write_text(json.dumps({
        "format_version": 1, "in_shape": [1, 8, 8], "num_classes": 10, "hidden": [16], "arch": "mlp",
        "meta": clf.meta, "weights_sha256": hashlib.sha256(blob).hexdigest()}))
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    loaded = FeatureClassifier.from_pretrained(old)
    assert loaded.test_accuracy == 0.5 and torch.equal(loaded.features(x), clf.features(x))
    migrate_pretrained(old)
    assert is_pretrained_folder(old)
    assert torch.equal(FeatureClassifier.from_pretrained(old).features(x), clf.features(x))


# ------------------------------------------------------------------------------------------------ CLI

def test_sample_command_validates_sampler_flags_and_overrides(tmp_path, capsys):
    cfg, _, objective = _trained_objective(tmp_path)
    folder = DiffusionPipeline(objective.ema.module, cfg).save_pretrained(tmp_path / "model")
    base = ["--quiet", "diffusion", "sample", "--model", str(folder), "--n", "4", "--out", str(tmp_path / "g.png")]
    for extra, message in [(["--steps", "0"], "sampler.steps must be >= 1"),
                           (["--sampler", "hune"], "did you mean 'heun'"),
                           (["--sampler", "heun", "--eta", "0.5"], "sampler.eta"),
                           (["sampler.stpes=3"], "unknown config key 'sampler.stpes' (did you mean 'steps'?)")]:
        with pytest.raises(SystemExit) as raised:
            cli_main(base + extra)
        assert raised.value.code == 2
        assert message in capsys.readouterr().err
    assert cli_main(base + ["--sampler", "euler", "--steps", "3", "sampler.guidance=1.0"]) == 0
    assert "euler 3 steps" in capsys.readouterr().out and (tmp_path / "g.png").is_file()
