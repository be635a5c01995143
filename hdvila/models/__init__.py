"""HD-VILA models: config tree, registry, the model and its building blocks."""
from __future__ import annotations

from .config import HDVILAConfig, LossWeights, TextConfig, VideoEncoderConfig, config_from_dict
from .hdvila import HDVILA, aggregate_segments, sample_hard_negatives
from .losses import contrastive_loss
from .mlm import mask_tokens
from .registry import create_model, get_model_config, list_models, register_model_config

__all__ = [
    "HDVILA", "HDVILAConfig", "LossWeights", "TextConfig", "VideoEncoderConfig", "aggregate_segments",
    "config_from_dict", "contrastive_loss", "create_model", "get_model_config", "list_models", "mask_tokens",
    "register_model_config", "sample_hard_negatives",
]
