"""animation's models on the one pretrained-folder format: round trips, and folders written by the older code
(each package had its own layout) still load through the legacy readers and migrate."""
import hashlib
import json
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import save, save_file

import animation  # noqa: F401  (registers the legacy readers and the "faces" image set)
from animation.animator import Animator, AnimatorConfig, FaceAnimator, exported_run_config
from animation.inversion import InversionEncoder
from animation.legacy import run_config_file
from animation.oracle import FaceOracle
from animation.stylegan2 import Discriminator, Generator, create_gan, get_gan_config
from data_tools.config import dump_config
from data_tools.pretrained import is_pretrained_folder, migrate_pretrained, read_pretrained
from data_tools.registry import RegistryError


def _equal(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture()
def gan():
    torch.manual_seed(0)
    return create_gan("sg2-tiny16")


def _old_gan_folder(path, generator, discriminator):
    """What animation.gan.save_gan wrote before the one format."""
    path.mkdir()
    (path / "config.yaml").write_text("gan: sg2-tiny16\n")
    (path / "stylegan2.json").write_text(json.dumps(asdict(generator.cfg)))
    save_file({k: v.contiguous() for k, v in generator.state_dict().items()}, str(path / "generator.safetensors"))
    save_file({k: v.contiguous() for k, v in discriminator.state_dict().items()},
              str(path / "discriminator.safetensors"))
    return path


def _old_sha256_folder(path, kind, config, state, meta):
    """What InversionEncoder.save / oracle._save wrote: weights.safetensors + config.json with its sha256."""
    path.mkdir()
    blob = save({k: v.contiguous() for k, v in state.items()})
    (path / "weights.safetensors").write_bytes(blob)
    record = {**config, "kind": kind, "format_version": 1, "meta": meta,
              "weights_sha256": hashlib.sha256(blob).hexdigest()}
    (path / "config.json").write_text(json.dumps(record))
    return path


def test_gan_round_trip_holds_both_networks(gan, tmp_path):
    generator, discriminator = gan
    folder = generator.save_pretrained(tmp_path / "gan", discriminator=discriminator,
                                       extra_files={"run_config.yaml": "gan: sg2-tiny16\n"})
    record = json.loads((folder / "config.json").read_text())
    assert record["kind"] == "stylegan2" and set(record["weights"]) == {"model", "discriminator"}
    g, d = Generator.from_pretrained(folder), Discriminator.from_pretrained(folder)
    _equal(g, generator)
    _equal(d, discriminator)
    assert not g.training and not any(p.requires_grad for p in g.parameters())
    assert run_config_file(folder).name == "run_config.yaml"


def test_gan_config_registry_suggests_names():
    with pytest.raises(RegistryError, match="did you mean 'sg2-tiny16'"):
        get_gan_config("sg2-tiny")


def test_old_gan_folder_loads_and_migrates(gan, tmp_path):
    generator, discriminator = gan
    old = _old_gan_folder(tmp_path / "old", generator, discriminator)
    folder = read_pretrained(old)
    assert folder.legacy == "animation-gan-v0" and folder.kind == "stylegan2"
    _equal(Generator.from_pretrained(old), generator)
    _equal(Discriminator.from_pretrained(old), discriminator)
    assert run_config_file(old).name == "config.yaml"

    new = migrate_pretrained(old, tmp_path / "new")
    assert is_pretrained_folder(new) and (new / "config.yaml").read_text() == "gan: sg2-tiny16\n"
    _equal(Generator.from_pretrained(new), generator)
    _equal(Discriminator.from_pretrained(new), discriminator)
    from hdvila.cli import main

    assert main(["--quiet", "pretrained", "migrate", str(old)]) == 0  # in place
    assert is_pretrained_folder(old) and read_pretrained(old).legacy is None
    _equal(Generator.from_pretrained(old), generator)


def test_old_inversion_encoder_folder_loads_checks_its_sha256_and_migrates(gan, tmp_path):
    generator, _ = gan
    encoder = InversionEncoder.for_generator(generator, seed=0)
    encoder.meta["steps"] = 7
    old = _old_sha256_folder(tmp_path / "old", "inversion_encoder", {"encoder": asdict(encoder.cfg)},
                             encoder.state_dict(), encoder.meta)
    loaded = InversionEncoder.from_pretrained(old)
    _equal(loaded, encoder)
    assert loaded.meta == encoder.meta and not loaded.training
    assert read_pretrained(old).checksums["model"] == json.loads((old / "config.json").read_text())["weights_sha256"]

    new = migrate_pretrained(old, tmp_path / "new")
    _equal(InversionEncoder.from_pretrained(new), encoder)
    assert json.loads((new / "config.json").read_text())["kind"] == "inversion-encoder"

    blob = (old / "weights.safetensors").read_bytes()
    (old / "weights.safetensors").write_bytes(blob[:-4] + b"\0\0\0\0")
    with pytest.raises(ValueError, match="does not match"):
        InversionEncoder.from_pretrained(old)


def test_oracle_round_trip_and_old_folder(tmp_path):
    torch.manual_seed(0)
    oracle = FaceOracle(16, channels=(4, 4), width=8, head_width=4, meta={"settings": {"seed": 0}})
    new = oracle.save_pretrained(tmp_path / "new")
    loaded = FaceOracle.from_pretrained(new)
    _equal(loaded, oracle)
    assert loaded.meta == oracle.meta and not any(p.requires_grad for p in loaded.parameters())

    config = {k: v for k, v in oracle.pretrained_config().items()}
    old = _old_sha256_folder(tmp_path / "old", "face_oracle", config, oracle.state_dict(), oracle.meta)
    assert read_pretrained(old).kind == "face-oracle"
    _equal(FaceOracle.from_pretrained(old), oracle)
    with pytest.raises(ValueError, match="not a 'inversion-encoder'|not a"):
        InversionEncoder.from_pretrained(old)  # the kind is checked


def test_animator_round_trip_and_old_folder(gan, tmp_path):
    generator, _ = gan
    gan_dir = generator.save_pretrained(tmp_path / "gan")
    cfg = AnimatorConfig(gan_dir=str(gan_dir), h_dim=16, text_model="some/text-model")
    torch.manual_seed(1)
    animator = Animator(Generator.from_pretrained(gan_dir), 8, cfg)
    encoder = InversionEncoder.for_generator(animator.generator, seed=0)

    def text_encoder(sentences):
        return torch.ones(len(sentences), 8)

    new = FaceAnimator(animator, encoder, text_encoder, 3).save_pretrained(tmp_path / "new", run_config=cfg)
    runner = FaceAnimator.from_pretrained(new, text_encoder)
    _equal(runner.animator, animator)
    _equal(runner.inversion_encoder, encoder)
    assert exported_run_config(new).h_dim == 16 and runner.invert_steps == cfg.data.invert_steps
    with pytest.raises(ValueError, match="8-d"):
        FaceAnimator.from_pretrained(new, lambda s: torch.ones(len(s), 5))

    # the layout save_animator wrote: config.yaml, animator.safetensors, inversion/ (a sha256 encoder folder)
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.yaml").write_text(dump_config(cfg))
    save_file({k: v.contiguous() for k, v in animator.trainable_state().items()}, str(old / "animator.safetensors"))
    _old_sha256_folder(old / "inversion", "inversion_encoder", {"encoder": asdict(encoder.cfg)},
                       encoder.state_dict(), encoder.meta)
    assert read_pretrained(old).legacy == "animation-animator-v0"
    for folder in (old, migrate_pretrained(old, tmp_path / "migrated")):
        runner = FaceAnimator.from_pretrained(folder, text_encoder)
        _equal(runner.animator, animator)
        _equal(runner.inversion_encoder, encoder)
        assert exported_run_config(folder).text_model == "some/text-model"


def test_faces_are_a_registered_image_set():
    from animation.faces import SyntheticFaces
    from data_tools.image_datasets import load_image_dataset

    images, labels = load_image_dataset("faces", "train", test_fraction=0, options={"count": 6, "seed": 2, "size": 16})
    assert images.shape == (6, 3, 16, 16) and torch.equal(labels, torch.zeros(6, dtype=torch.long))
    assert torch.equal(images, SyntheticFaces(6, size=16, seed=2).tensors())
