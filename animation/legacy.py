"""Readers of the folders the animation package wrote before the one pretrained-folder format
(`data_tools.pretrained`), registered in `LEGACY_FORMATS` so that `from_pretrained` still loads them and
`migrate_pretrained` (`hdvila pretrained migrate DIR`) rewrites them. Light on purpose: no model code is imported.

    animation-gan-v0      stylegan2.json + generator.safetensors [+ discriminator.safetensors] + config.yaml
    animation-sha256-v0   config.json (kind face_oracle | face_text_scorer | inversion_encoder, weights_sha256)
                          + weights.safetensors
    animation-animator-v0 config.yaml (the run config) + animator.safetensors + inversion/ (an encoder folder)
"""
from __future__ import annotations

import json
from pathlib import Path

from data_tools.pretrained import DEFAULT_WEIGHTS, LEGACY_FORMATS, PretrainedFolder

# the new kinds of the three sha256-checked folders, by their old kind
SHA256_KINDS = {"face_oracle": "face-oracle", "face_text_scorer": "face-text-scorer",
                "inversion_encoder": "inversion-encoder"}
# what of an AnimatorConfig rebuilds the animator (the rest of the run config is kept as run_config.yaml)
ANIMATOR_MODEL_KEYS = ("gan_dir", "text_model", "frames", "run_frames", "h_dim", "residual", "pixel_norm",
                       "match_travel", "image_width")


def read_gan_v0(path: Path) -> PretrainedFolder | None:
    if not ((path / "stylegan2.json").is_file() and (path / "generator.safetensors").is_file()):
        return None
    weights = {DEFAULT_WEIGHTS: path / "generator.safetensors"}
    if (path / "discriminator.safetensors").is_file():
        weights["discriminator"] = path / "discriminator.safetensors"
    config = json.loads((path / "stylegan2.json").read_text(encoding="utf-8"))
    files = ["config.yaml"] if (path / "config.yaml").is_file() else []
    return PretrainedFolder(path, "stylegan2", config, {}, weights, {name: None for name in weights}, files)


def read_sha256_v0(path: Path) -> PretrainedFolder | None:
    if not ((path / "config.json").is_file() and (path / "weights.safetensors").is_file()):
        return None
    try:
        record = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("kind") not in SHA256_KINDS or record.get("format_version") != 1:
        return None
    kind = SHA256_KINDS[record["kind"]]
    if kind == "inversion-encoder":
        config = dict(record["encoder"])
    else:
        config = {k: v for k, v in record.items() if k not in ("kind", "format_version", "meta", "weights_sha256")}
    return PretrainedFolder(path, kind, config, dict(record.get("meta") or {}),
                            {DEFAULT_WEIGHTS: path / "weights.safetensors"},
                            {DEFAULT_WEIGHTS: record.get("weights_sha256")}, [])


def animator_model_config(run_config: dict, text_dim: int, invert_steps: int) -> dict:
    config = {k: run_config[k] for k in ANIMATOR_MODEL_KEYS if k in run_config}
    return {**config, "text_dim": int(text_dim), "invert_steps": int(invert_steps)}


def read_animator_v0(path: Path) -> PretrainedFolder | None:
    weights = path / "animator.safetensors"
    if not (weights.is_file() and (path / "config.yaml").is_file() and (path / "inversion").is_dir()):
        return None
    import yaml
    from safetensors import safe_open

    run_config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
    with safe_open(str(weights), framework="pt") as fh:  # the image encoder's last Linear gives the text width
        linears = [k for k in fh.keys() if k.startswith("image_encoder.body.") and k.endswith(".weight")]
        last = max(linears, key=lambda k: int(k.split(".")[2]))
        text_dim = fh.get_slice(last).get_shape()[0]
    config = animator_model_config(run_config, text_dim, (run_config.get("data") or {}).get("invert_steps", 30))
    return PretrainedFolder(path, "face-animator", config, {}, {DEFAULT_WEIGHTS: weights}, {DEFAULT_WEIGHTS: None},
                            ["config.yaml", "inversion"])


LEGACY_FORMATS.register("animation-gan-v0", read_gan_v0)
LEGACY_FORMATS.register("animation-sha256-v0", read_sha256_v0)
LEGACY_FORMATS.register("animation-animator-v0", read_animator_v0)


def run_config_file(directory: str | Path) -> Path:
    """The training run's config kept in an exported folder: run_config.yaml, or config.yaml in a folder
    written (or migrated from one written) before the one pretrained format."""
    directory = Path(directory)
    new = directory / "run_config.yaml"
    return new if new.is_file() or not (directory / "config.yaml").is_file() else directory / "config.yaml"
