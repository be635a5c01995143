"""The shared parts every package builds on: registry, pretrained folders, small-fit helper, cache, EMA, image data."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from data_tools.cache import cache_key, cached
from data_tools.config import deep_update, replace_checked
from data_tools.ema import EMA, ema_decay_from_half_life
from data_tools.files import TextFileError, read_utf8_text
from data_tools.image_datasets import IMAGE_DATASETS, DatasetInfo, ImageDataConfig, load_image_dataset, make_image_data
from data_tools.pretrained import (LEGACY_FORMATS, PretrainedError, PretrainedFolder, PretrainedMixin,
                                   is_pretrained_folder, migrate_pretrained, read_pretrained, save_pretrained_folder)
from data_tools.registry import Registry, RegistryError
from data_tools.training.config import OptimConfig
from data_tools.training.optim import lr_factor
from data_tools.training.run import step_generator
from data_tools.training.small_fit import SmallFitConfig, fit_small, seeded, shuffled_batches, steps_for_epochs


# ------------------------------------------------------------------------------------------------ registry

def test_registry_register_get_create_and_list():
    reg = Registry("widget")

    @reg.register("b-widget")
    def make_b(width=1):
        return ("b", width)

    reg.register("a-widget", lambda: "a")
    assert reg.list() == ["a-widget", "b-widget"] and "a-widget" in reg and len(reg) == 2
    assert reg.create("b-widget", width=3) == ("b", 3)
    assert reg.get("a-widget")() == "a"


def test_registry_unknown_name_suggests_the_closest_and_is_key_and_value_error():
    reg = Registry("diffusion model")
    reg.register("dit-digits", object())
    with pytest.raises(RegistryError) as info:
        reg.get("dit-digit")
    message = str(info.value)
    assert "unknown diffusion model 'dit-digit'" in message and "did you mean 'dit-digits'" in message
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    assert "did you mean" not in str(reg.unknown("zzzzzz"))


def test_registry_refuses_silent_shadowing():
    reg = Registry("sampler")
    reg.register("ddim", 1)
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("ddim", 2)
    reg.register("ddim", 2, replace=True)
    assert reg.get("ddim") == 2
    with pytest.raises(RegistryError):
        reg.register("", 3)


# ------------------------------------------------------------------------------------------------ pretrained

class TinyNet(PretrainedMixin, nn.Module):
    pretrained_kind = "tiny-net"

    def __init__(self, width: int = 4, meta: dict | None = None):
        super().__init__()
        self.width = width
        self.meta = dict(meta or {})
        self.linear = nn.Linear(3, width)

    def pretrained_config(self) -> dict:
        return {"width": self.width}

    @classmethod
    def from_pretrained_config(cls, config, meta):
        return cls(config["width"], meta)


def test_pretrained_round_trip_keeps_weights_config_meta_and_extra_files(tmp_path):
    torch.manual_seed(0)
    net = TinyNet(5, meta={"accuracy": 0.75})
    folder = net.save_pretrained(tmp_path / "net", extra_files={"notes.txt": "hello", "blob.bin": b"\x00\x01"})
    assert is_pretrained_folder(folder)
    record = json.loads((folder / "config.json").read_text())
    assert record["kind"] == "tiny-net" and record["config"] == {"width": 5}
    assert set(record["weights"]) == {"model"} and len(record["weights"]["model"]["sha256"]) == 64
    again = TinyNet.from_pretrained(folder)
    assert again.width == 5 and again.meta == {"accuracy": 0.75}
    for key, value in net.state_dict().items():
        assert torch.equal(value, again.state_dict()[key])
    assert (folder / "notes.txt").read_text() == "hello" and (folder / "blob.bin").read_bytes() == b"\x00\x01"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_pretrained_rejects_other_kinds_and_damaged_weights(tmp_path):
    folder = save_pretrained_folder(tmp_path / "x", "other-kind", {}, {"model": {"w": torch.ones(2)}})
    with pytest.raises(PretrainedError, match="other-kind"):
        TinyNet.from_pretrained(folder)
    TinyNet(2).save_pretrained(tmp_path / "net")
    weights = tmp_path / "net" / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(PretrainedError, match="sha256"):
        TinyNet.from_pretrained(tmp_path / "net")


def test_pretrained_refuses_paths_outside_the_folder(tmp_path):
    with pytest.raises(ValueError, match="outside"):
        save_pretrained_folder(tmp_path / "x", "k", {}, {"model": {"w": torch.ones(1)}}, extra_files={"../evil": "x"})
    assert not (tmp_path / "evil").exists() and not (tmp_path / "x").exists()
    folder = save_pretrained_folder(tmp_path / "y", "k", {}, {"model": {"w": torch.ones(1)}})
    record = json.loads((folder / "config.json").read_text())
    record["weights"]["model"]["file"] = "../../etc/passwd"
    (folder / "config.json").write_text(json.dumps(record))
    with pytest.raises(PretrainedError, match="outside"):
        read_pretrained(folder)


def test_save_failure_leaves_the_old_folder_intact(tmp_path):
    net = TinyNet(3)
    folder = net.save_pretrained(tmp_path / "net")
    before = (folder / "model.safetensors").read_bytes()

    def boom(path):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        TinyNet(3).save_pretrained(folder, extra_files={"x": boom})
    assert (folder / "model.safetensors").read_bytes() == before
    TinyNet.from_pretrained(folder)


def test_reading_repairs_a_folder_left_between_the_two_renames(tmp_path):
    net = TinyNet(3)
    folder = net.save_pretrained(tmp_path / "net")
    folder.rename(tmp_path / ".net.old-1234abcd")  # the state a writer killed mid fallback-publish leaves
    again = TinyNet.from_pretrained(tmp_path / "net")
    assert torch.equal(again.linear.weight, net.linear.weight) and folder.is_dir()


def test_legacy_layout_loads_through_its_reader_and_migrates(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    net = TinyNet(6)
    old = tmp_path / "old"
    old.mkdir()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(old / "weights.safetensors"))
    (old / "tiny.json").write_text(json.dumps({"width": 6}))
    (old / "tokenizer").mkdir()
    (old / "tokenizer" / "vocab.txt").write_text("[PAD]\n")

    def reader(path):
        if not (path / "tiny.json").is_file():
            return None
        return PretrainedFolder(path, "tiny-net", json.loads((path / "tiny.json").read_text()),
                                weights={"model": path / "weights.safetensors"}, checksums={"model": None},
                                files=["tokenizer"])

    LEGACY_FORMATS.register("tiny-net-v0", reader)
    try:
        loaded = TinyNet.from_pretrained(old)
        assert torch.equal(loaded.linear.weight, net.linear.weight)
        assert read_pretrained(old).legacy == "tiny-net-v0"
        migrate_pretrained(old)
        assert is_pretrained_folder(old) and read_pretrained(old).legacy is None
        assert (old / "tokenizer" / "vocab.txt").read_text() == "[PAD]\n"
        assert torch.equal(TinyNet.from_pretrained(old).linear.weight, net.linear.weight)
    finally:
        LEGACY_FORMATS.unregister("tiny-net-v0")
    with pytest.raises(PretrainedError, match="not a pretrained folder"):
        read_pretrained(tmp_path)


# ------------------------------------------------------------------------------------------------ small fit

def _regression(seed: int, steps: int = 300):
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(256, 3, generator=gen)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3
    with seeded(seed):
        model = nn.Linear(3, 1)
    batches = shuffled_batches(len(x), 32, torch.Generator().manual_seed(seed))

    def loss_fn(m, step):
        idx = next(batches)
        return {"loss": (m(x[idx]) - y[idx]).pow(2).mean(), "step": torch.tensor(float(step))}

    cfg = SmallFitConfig(steps=steps, seed=seed, optim=OptimConfig(name="adam", lr=0.05, weight_decay=0.0,
                                                                 schedule="cosine", warmup_steps=10))
    return model, fit_small(model, loss_fn, cfg)


def test_fit_small_learns_and_is_deterministic():
    model_a, result_a = _regression(0)
    model_b, result_b = _regression(0)
    model_c, _ = _regression(1)
    assert result_a.losses[-1] < 0.01 * result_a.losses[0]
    assert result_a.last["step"] == 299 and len(result_a.losses) == 300
    assert torch.equal(model_a.weight, model_b.weight)
    assert not torch.equal(model_a.weight, model_c.weight)
    assert not model_a.training
    torch.testing.assert_close(model_a.weight, torch.tensor([[1.0, -2.0, 0.5]]), atol=0.05, rtol=0)


def test_fit_small_trains_only_the_given_part_and_restores_threads_and_rng():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    frozen_before = model[0].weight.clone()
    threads = torch.get_num_threads()
    rng_before = torch.random.get_rng_state()
    with torch.no_grad():  # the helper trains even when called under no_grad
        fit_small(model, lambda m, step: m(torch.ones(4, 2)).pow(2).mean(),
                  SmallFitConfig(steps=5, threads=1), params_from=model[1])
    assert torch.equal(model[0].weight, frozen_before)
    assert torch.get_num_threads() == threads and torch.equal(torch.random.get_rng_state(), rng_before)


def test_shuffled_batches_cover_each_epoch_once():
    batches = shuffled_batches(10, 4, torch.Generator().manual_seed(0))
    epoch = [next(batches) for _ in range(3)]
    assert [len(b) for b in epoch] == [4, 4, 2]
    assert sorted(torch.cat(epoch).tolist()) == list(range(10))
    assert steps_for_epochs(10, 4, 5) == 15


def test_lr_step_schedule_and_adam_are_shared():
    factors = [lr_factor(s, max_steps=100, warmup=0, schedule="step", min_lr_ratio=0.0) for s in (0, 49, 50, 75, 99)]
    assert factors == pytest.approx([1.0, 1.0, 0.1, 0.01, 0.01])
    from data_tools.training.optim import build_optimizer

    assert type(build_optimizer(nn.Linear(2, 2), OptimConfig(name="adam"))) is torch.optim.Adam


# ------------------------------------------------------------------------------------------------ cache

def test_cache_builds_once_then_loads_and_rebuilds_damaged_entries(tmp_path, caplog):
    calls = []

    def build():
        calls.append(1)
        return {"value": len(calls)}

    def save(obj, path):
        path.mkdir(parents=True, exist_ok=True)
        (path / "v.json").write_text(json.dumps(obj))

    def load(path):
        return json.loads((path / "v.json").read_text())

    settings = {"size": 32, "seed": 0, "hidden": (64, 32)}
    kwargs = dict(build=build, load=load, save=save, readable=("size", "seed"))
    assert cached(tmp_path, "clf", settings, **kwargs) == {"value": 1}
    assert cached(tmp_path, "clf", settings, **kwargs) == {"value": 1} and len(calls) == 1
    assert cached(tmp_path, "clf", {**settings, "seed": 1}, **kwargs) == {"value": 2}
    key = cache_key("clf", settings, readable=("size", "seed"))
    assert key.startswith("clf-size32-seed0-") and key.endswith("-v1")
    (tmp_path / key / "v.json").write_text("{broken")
    assert cached(tmp_path, "clf", settings, **kwargs) == {"value": 3}
    assert "unreadable" in caplog.text


# ------------------------------------------------------------------------------------------------ EMA

def test_ema_averages_parameters_and_copies_buffers():
    model = nn.BatchNorm1d(2)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(3.0)
        model.running_mean.fill_(7.0)
    ema.update(model)
    torch.testing.assert_close(ema.module.weight, torch.full((2,), 2.0))  # 0.5 * 1 + 0.5 * 3
    torch.testing.assert_close(ema.module.running_mean, torch.full((2,), 7.0))
    assert not any(p.requires_grad for p in ema.parameters()) and not ema.module.training
    assert not isinstance(ema, nn.Module)  # never nested into a parent's state dict under a second layout
    fresh = EMA(nn.BatchNorm1d(2), decay=0.9)
    fresh.load_state_dict(ema.state_dict())
    torch.testing.assert_close(fresh.module.weight, ema.module.weight)
    assert ema_decay_from_half_life(64, 64) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        EMA(model, decay=1.5)


def test_ema_follow_moves_the_average_to_the_live_model_then_updates():
    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0.5)
    before = ema.module.weight.detach().clone()
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.follow(model)  # same device: a plain update
    torch.testing.assert_close(ema.module.weight, 0.5 * before + 0.5)
    model.to("meta")  # stands in for the trainer moving the model (to a GPU) after the objective built its EMA
    ema.follow(model)
    assert ema.module.weight.device.type == "meta" and ema.updates == 2


def test_replace_checked_copies_and_refuses_unknown_keys():
    cfg = OptimConfig()
    changed = replace_checked(cfg, "optim config", lr=0.5)
    assert changed.lr == 0.5 and cfg.lr != 0.5
    with pytest.raises(ValueError, match="unknown optim config keys \\['lrr'\\]"):
        replace_checked(cfg, "optim config", lrr=0.5)


# ------------------------------------------------------------------------------------------------ image data

def test_image_data_config_serves_registered_sets_with_a_held_out_split():
    data = make_image_data(ImageDataConfig(kind="array", name="digits"), size=8, batch_size=16, seed=0)
    batch = next(iter(data.batches))
    assert batch["images"].shape == (16, 1, 8, 8) and data.reference.shape[1:] == (1, 8, 8)
    assert -1.0 <= float(batch["images"].min()) and float(batch["images"].max()) <= 1.0
    train, _ = load_image_dataset("digits", "train")
    assert len(train) + len(data.reference) == 1797


def test_image_data_registry_takes_loader_options_and_test_fraction_zero():
    def squares(count: int = 3):
        images = np.zeros((count, 1, 4, 4), np.float32)
        return images, np.zeros(count, np.int64)

    IMAGE_DATASETS.register("squares", DatasetInfo("squares", squares, 1, 4, 1, "test set"))
    try:
        cfg = ImageDataConfig(kind="array", name="squares", options={"count": 5}, test_fraction=0.0)
        data = make_image_data(cfg, size=4, batch_size=2, seed=0)
        assert len(data.reference) == 5  # no held-out part: scored against the training images
    finally:
        IMAGE_DATASETS.unregister("squares")
    with pytest.raises(RegistryError, match="did you mean 'digits'"):
        make_image_data(ImageDataConfig(kind="array", name="digit"), size=8, batch_size=2, seed=0)


# ------------------------------------------------------------------------------------------------ small helpers

def test_read_utf8_text_names_the_problem(tmp_path):
    good = tmp_path / "a.txt"
    good.write_bytes("\ufeffcafé".encode("utf-8"))
    assert read_utf8_text(good) == "café"
    bad = tmp_path / "b.txt"
    bad.write_bytes(b"ok\xff")
    with pytest.raises(TextFileError, match="byte offset 2"):
        read_utf8_text(bad)
    with pytest.raises(TextFileError, match="not found"):
        read_utf8_text(tmp_path / "missing.txt")
    with pytest.raises(TextFileError, match="folder"):
        read_utf8_text(tmp_path)


def test_deep_update_merges_but_replaces_named_keys():
    base = {"a": {"x": 1, "y": 2}, "kw": {"p": 1}}
    deep_update(base, {"a": {"y": 3}, "kw": {"q": 2}}, replace_keys=("kw",))
    assert base == {"a": {"x": 1, "y": 3}, "kw": {"q": 2}}


def test_step_generator_depends_on_seed_and_step():
    def draw(seed, step):
        return torch.rand(3, generator=step_generator(seed, step))

    assert torch.equal(draw(0, 5), draw(0, 5))
    assert not torch.equal(draw(0, 5), draw(0, 6)) and not torch.equal(draw(0, 5), draw(1, 5))


def _modules_loaded_by(code: str) -> list[str]:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code + "; import sys; print('\\n'.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return out.stdout.split()


def test_floor_imports_no_higher_package():
    code = ("import importlib, pkgutil, data_tools; "
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(data_tools.__path__, 'data_tools.')]")
    loaded = _modules_loaded_by(code)
    assert "data_tools.training.small_fit" in loaded and "data_tools.decoders.pyav_backend" in loaded
    assert [m for m in loaded if m.split(".")[0] in ("hdvila", "diffusion", "animation", "instruct", "spo",
                                                             "bridge", "cca")] == []


def test_model_packages_import_no_cli_and_inference_no_training_module():
    loaded = _modules_loaded_by("import diffusion.pipeline, animation, hdvila.models, hdvila.recipes.pretrain, "
                                "hdvila.recipes.retrieval, hdvila.encoder, spo.train, spo.stable_diffusion, "
                                "bridge.ipf, bridge.pipeline, cca.loop, cca.evaluate")
    assert [m for m in loaded if m.startswith("hdvila.cli")] == []
    # the diffusion core is below the packages built on it
    core = _modules_loaded_by("import diffusion.train, diffusion.pipeline")
    assert [m for m in core if m.split(".")[0] in ("spo", "bridge")] == []
    assert "diffusion.train" not in _modules_loaded_by("import diffusion.pipeline")
