"""HD-VILA model configuration: a dataclass tree, read from and written to YAML via data_tools.config.

Defaults follow the paper model (hdvila.md 1.2-1.3: ResNet-50 x2, d=1024, BERT-large split 12/12), except
the token ids, which default to the committed tokenizer (pad 0, unk 1, cls 2, sep 3, mask 4).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from data_tools.config import deep_update, from_dict, to_dict

# free-form keyword mappings: an override replaces them whole instead of merging into them
REPLACE_KEYS = ("backbone_kwargs",)


@dataclass
class VideoEncoderConfig:
    """Hybrid video encoder: HR keyframe CNN + LR neighbour CNN + divided space-time Transformer."""

    backbone: str = "resnet50"  # timm name of the keyframe (HR) backbone
    lr_backbone: str | None = None  # timm name of the neighbour (LR) backbone; None = same as backbone
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm kwargs for both (e.g. channels)
    # timm feature indices: (stage 4, stage 5) of the HR backbone and stage 4 of the LR one. ResNets: 3 / 4
    # (strides 16 / 32); a ViT uses block indices (all stride 16), e.g. [8, 11] and 8 for 12 blocks.
    hr_out_indices: tuple[int, int] = (3, 4)
    lr_out_index: int = 3
    d: int = 1024  # width of the grid projections and the temporal Transformer
    temporal_depth: int = 4
    temporal_heads: int = 16
    temporal_mlp_ratio: float = 4.0
    temporal_time_conv: bool = False  # a depthwise space-time convolution before the blocks (temporal.py)
    temporal_time_conv_std: float = 0.0  # its initial weights: 0 = zeros (the identity), else normal(0, std)
    drop_path: float = 0.1  # largest rate; block i gets drop_path * i / (depth - 1)
    num_frm: int = 7  # frames per segment, odd: the middle one is the HR keyframe
    hr_size: tuple[int, int] = (640, 1024)  # keyframe (height, width)
    lr_factor: int = 4  # neighbours are hr_size / lr_factor
    norm_eval: bool = False  # keep every BatchNorm in eval mode while training (running stats frozen)
    # With norm_eval: fold each frozen BatchNorm of the backbones into the convolution before it (one conv
    # with per-channel scaled weights and a bias instead of conv + a memory-bound pass over the activations).
    # The same function, weights and checkpoints; not with ZeRO-3 (the conv reads the BatchNorm's parameters).
    fold_norm: bool = False
    channels_last: bool = True  # backbone activations in channels_last (NHWC) memory format
    pretrained_path: str | None = None  # local .safetensors/.pth for the HR backbone (timm key names)
    lr_pretrained_path: str | None = None  # for the LR backbone; None = pretrained_path

    @property
    def lr_size(self) -> tuple[int, int]:
        return self.hr_size[0] // self.lr_factor, self.hr_size[1] // self.lr_factor

    def nominal_grid(self, reduction: int = 16) -> tuple[int, int]:
        """Visual token grid at the configured size: the LR stage-4 map (stride 16, padded convs round up)."""
        h, w = self.lr_size
        return math.ceil(h / reduction), math.ceil(w / reduction)


@dataclass
class TextConfig:
    """BERT split into `text_layers` (text encoder) + `cross_layers` (cross-modal Transformer)."""

    vocab_size: int = 30522
    hidden: int = 1024
    text_layers: int = 12
    cross_layers: int = 12
    heads: int = 16
    intermediate: int = 4096
    max_len: int = 512  # position embeddings
    type_vocab_size: int = 2
    max_grid: int = 100  # rows / columns of the visual position embeddings
    dropout: float = 0.1
    init_from: str | None = None  # local HF BERT folder (layers 0..L1-1 -> text, L1.. -> cross)


@dataclass
class LossWeights:
    vtc: float = 1.0
    mlm: float = 1.0
    vtm: float = 1.0


@dataclass
class HDVILAConfig:
    name: str = "hdvila"
    video: VideoEncoderConfig = field(default_factory=VideoEncoderConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 1024  # joint video/text embedding size (v_proj / t_proj output)
    temperature: float = 0.05
    loss_weights: LossWeights = field(default_factory=LossWeights)
    mlm_prob: float = 0.15
    vtm: bool = False  # build the video-text matching head
    pad_id: int = 0
    cls_id: int = 2
    sep_id: int = 3
    mask_id: int = 4
    special_ids: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])  # never masked by MLM

    def __post_init__(self) -> None:
        if self.video.fold_norm and not self.video.norm_eval:
            raise ValueError("video.fold_norm needs video.norm_eval: only a frozen BatchNorm is a fixed affine map")
        if self.video.num_frm < 1 or self.video.num_frm % 2 != 1:
            raise ValueError(f"video.num_frm must be odd (the middle frame is the keyframe), got {self.video.num_frm}")
        if self.video.d % self.video.temporal_heads:
            raise ValueError(f"video.d={self.video.d} is not a multiple of temporal_heads={self.video.temporal_heads}")
        if self.text.hidden % self.text.heads:
            raise ValueError(f"text.hidden={self.text.hidden} is not a multiple of text.heads={self.text.heads}")
        for name in ("pad_id", "cls_id", "sep_id", "mask_id"):
            if not 0 <= getattr(self, name) < self.text.vocab_size:
                raise ValueError(f"{name}={getattr(self, name)} is outside the vocabulary ({self.text.vocab_size})")


def config_from_dict(data: dict | None) -> HDVILAConfig:
    """Defaults updated by a (possibly partial, nested) mapping; keys and types are checked."""
    merged = to_dict(HDVILAConfig())
    deep_update(merged, data or {}, replace_keys=REPLACE_KEYS)
    return from_dict(HDVILAConfig, merged)
