from dataclasses import dataclass, field

import pytest
import yaml

from data_tools.config import ConfigError, dump_config, load_config, save_config
from data_tools.ingest.config import BuildConfig


@dataclass
class Train:
    max_steps: int = 10
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.98)
    name: str | None = None


@dataclass
class Root:
    train: Train = field(default_factory=Train)
    shards: list[str] = field(default_factory=list)
    bf16: bool = False


def test_defaults_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_steps: 100\n  lr: 3.0e-4\nshards: [a.tar]\n")
    cfg = load_config(Root, path, ["train.max_steps=20", "bf16=true", "train.betas=[0.8, 0.9]", "train.name=x"])
    assert cfg.train.max_steps == 20
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.train.betas == (0.8, 0.9)
    assert cfg.shards == ["a.tar"] and cfg.bf16 is True and cfg.train.name == "x"


def test_int_given_for_float_and_null_for_optional():
    cfg = load_config(Root, None, ["train.lr=1", "train.name=null"])
    assert isinstance(cfg.train.lr, float) and cfg.train.name is None


def test_exponent_without_a_dot_is_a_number(tmp_path):
    # YAML 1.1 (PyYAML) reads 5e-3 as a string; a float field still takes it
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 5e-3\n")
    assert load_config(Root, path, []).train.lr == pytest.approx(5e-3)
    assert load_config(Root, None, ["train.lr=2e-4"]).train.lr == pytest.approx(2e-4)


@pytest.mark.parametrize("override, message", [
    ("train.max_step=3", "'train.max_step'.*did you mean 'max_steps'"),
    ("train.max_steps=abc", "train.max_steps: expected an integer"),
    ("train.lr=fast", "train.lr: expected a number"),
    ("bf16=3", "expected true/false"),
    ("train.betas=[1]", "expected 2 items"),
    ("noequals", "key=value"),
])
def test_bad_overrides_are_clear(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Root, None, [override])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(BuildConfig, None, ["workers=3", "transcode.fps=6", "sentences.max_duration=12.5"])
    save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(BuildConfig, tmp_path / "run" / "config.yaml")
    assert again == cfg
    assert yaml.safe_load(dump_config(cfg))["transcode"]["fps"] == 6


def test_repo_build_yaml_matches_dataclass_defaults():
    import hdvila  # noqa: F401  (registers the packaged recipe configs)

    assert load_config(BuildConfig, "data/build") == BuildConfig()


def test_every_shipped_pretrain_config_loads_and_names_a_registered_model():
    from hdvila import CONFIGS
    from hdvila.models import list_models
    from hdvila.recipes.pretrain import PretrainConfig

    folder = CONFIGS / "pretrain"
    for path in sorted(folder.glob("*.yaml")):
        cfg = load_config(PretrainConfig, path)
        assert cfg.model in list_models(), path
        assert cfg.recipe in ("stage1", "stage2", "joint")


def test_config_names_resolve_in_registered_roots_and_paths_win(tmp_path, monkeypatch):
    from data_tools import config as config_module
    from data_tools.config import register_config_root, resolve_config

    monkeypatch.setattr(config_module, "_CONFIG_ROOTS", [])
    (tmp_path / "root" / "pretrain").mkdir(parents=True)
    (tmp_path / "root" / "pretrain" / "small.yaml").write_text("workers: 3\n")
    register_config_root(tmp_path / "root")
    named = tmp_path / "root" / "pretrain" / "small.yaml"
    assert resolve_config("pretrain/small") == named.resolve() == resolve_config("pretrain/small.yaml")
    assert load_config(BuildConfig, "pretrain/small").workers == 3
    own = tmp_path / "own.yaml"
    own.write_text("workers: 5\n")
    assert resolve_config(own) == own and load_config(BuildConfig, str(own)).workers == 5
    with pytest.raises(ConfigError, match="close names: pretrain/small"):
        resolve_config("pretrain/smal")


def test_deepspeed_config_names_resolve_to_the_shipped_jsons():
    from data_tools.training.trainer import DEEPSPEED_CONFIGS, resolve_deepspeed_config

    assert resolve_deepspeed_config("zero2") == DEEPSPEED_CONFIGS / "zero2.json"
    with pytest.raises(FileNotFoundError, match="zero3"):
        resolve_deepspeed_config("zero4")
