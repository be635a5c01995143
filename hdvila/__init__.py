"""HD-VILA models, training recipes and the `hdvila` command line.

    import hdvila
    model = hdvila.load_pretrained("runs/demo/pretrain/pretrained")
    scores = model.encode_text(["a red circle moves left"]) @ model.encode_video(["clip.mp4"]).T
"""
from pathlib import Path

from data_tools.config import register_config_root

__version__ = "0.1.0"
CONFIGS = Path(__file__).resolve().parent / "configs"  # recipe YAMLs by name: pretrain/small, diffusion/digits-dit
register_config_root(CONFIGS)


def load_pretrained(path, device="cpu"):
    """A pretrained folder as an encoder with encode_text / encode_video / save_pretrained (see hdvila.encoder)."""
    from .encoder import load_pretrained as _load  # lazy: `hdvila --help` should not import torch

    return _load(path, device)
