"""Language-guided face motion: a recurrent generator of W+ offsets, and the losses that train it.

A still face is inverted to W+ (``w_inv`` [B, num_ws, w_dim]); a sentence is embedded by a text encoder
(``e_txt`` [B, D]) and the image by an image encoder (``e_img`` [B, D]). The motion generator turns the two
embeddings into a sequence of W+ offsets, and frame t is ``G.synthesis(w_inv + dw[:, t])``:

    motion = MotionGenerator(z_dim=D, num_ws=G.num_ws, w_dim=G.w_dim)
    dw = motion(e_txt, e_img, num_frames=16, decay="linear", generator=gen)   # [B, T, num_ws, w_dim]
    ws = frame_latents(w_inv, dw)                                             # [B, T, num_ws, w_dim]
    frames = G.synthesis(ws.flatten(0, 1), noise_mode="const")                # [B * T, C, H, W]

Two parts:

- ``LatentRecurrent`` walks a latent z from z_0 = normalize(e_txt) + stopgrad(normalize(e_img)) with a small
  residual recurrent cell (hidden state h), step sizes set by a decay schedule; it returns the offsets
  o_t = z_t - z_0 (so o_0 = 0 exactly).
- ``WPlusMapper`` maps an offset o_t to a W+ offset with PixelNorm and three equalized-lr linear layers
  (``EqualLinear`` from ``animation.stylegan2``). ``WPlusMapper.offsets(o) = mapper(o) - mapper(0)`` so that
  frame 0 is exactly the inversion (see the class docstring: this differs from the reference design).

Losses are plain functions returning scalar tensors; there is no training loop here.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from animation.stylegan2 import EqualLinear

__all__ = [
    "DECAYS", "decay_factors", "pixel_norm", "LatentRecurrent", "WPlusMapper", "MotionGenerator", "frame_latents",
    "smoothness_loss", "endpoint_loss", "latent_anchor_loss", "feature_identity_loss", "contrastive_text_loss",
    "single_text_loss",
]

DECAYS = ("const", "linear", "sqrt", "exp")


# --------------------------------------------------------------------------------------------- helpers
def decay_factors(num_frames: int, decay: str = "const", device=None, dtype=torch.float32) -> Tensor:
    """d(t, T) for t = 1 .. T-1, as a tensor of shape [T - 1] (empty for T = 1).

    "const":  1                        (training)
    "linear": (T - t) / T              (default at inference: the motion settles)
    "sqrt":   sqrt((T - t) / T)
    "exp":    1 - exp(t / T - 1)
    """
    if decay not in DECAYS:
        raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    big_t = float(num_frames)
    formula = {
        "const": lambda t: 1.0,
        "linear": lambda t: (big_t - t) / big_t,
        "sqrt": lambda t: math.sqrt((big_t - t) / big_t),
        "exp": lambda t: 1.0 - math.exp(t / big_t - 1.0),
    }[decay]
    # computed in Python floats (float64) and built on the target device: no float64 tensor needed there
    return torch.tensor([formula(t) for t in range(1, num_frames)], device=device, dtype=dtype)


def pixel_norm(x: Tensor, eps: float = 1e-8) -> Tensor:
    """x / sqrt(mean(x^2, last dim) + eps): StyleGAN's PixelNorm (the formula of ``MappingNetwork.map_z``).

    The eps keeps it finite at x = 0, where it returns exactly 0 (no NaN in the value or the gradient)."""
    return x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + eps)


def frame_latents(w_inv: Tensor, dw: Tensor) -> Tensor:
    """W+ latents of every frame: w_inv [B, num_ws, w_dim] + dw [B, T, num_ws, w_dim] -> [B, T, num_ws, w_dim]."""
    return w_inv.unsqueeze(1) + dw


# --------------------------------------------------------------------------------------------- recurrent latent
class LatentRecurrent(nn.Module):
    """Residual recurrent walk in the joint text/image embedding space.

        z_0 = normalize(e_txt) + stopgrad(normalize(e_img))          (L2 normalisation of each)
        h_0 = 0.01 * N(0, I)                                          ([B, h_dim], from `generator` if given)
        for t = 1 .. T-1:
            u_t = [lrelu(W1 z_{t-1}), h_{t-1}]
            r_t = (residual / T) * d(t, T)                            (d: see `decay_factors`)
            z_t = z_{t-1} + r_t * lrelu(W2 u_t)
            h_t = h_{t-1} + r_t * lrelu(W3 u_t)
        o_t = z_t - z_0                                               ([B, T, z_dim], o_0 = 0 exactly)

    W1: z_dim -> h_dim, W2: 2 h_dim -> z_dim, W3: 2 h_dim -> h_dim are ``EqualLinear`` layers (equalized learning
    rate, with bias); "lrelu" is StyleGAN's leaky ReLU (slope 0.2) with gain sqrt(2). z_dim must equal the
    embedding size D of e_txt and e_img.
    """

    def __init__(self, z_dim: int, h_dim: int = 384, residual: float = 0.8, travel: Optional[float] = None):
        super().__init__()
        if z_dim < 1 or h_dim < 1:
            raise ValueError(f"z_dim and h_dim must be >= 1, got {z_dim}, {h_dim}")
        if travel is not None and travel <= 0:
            raise ValueError(f"travel must be positive or None, got {travel}")
        self.z_dim, self.h_dim, self.residual = z_dim, h_dim, float(residual)
        self.travel = travel
        self.w1 = EqualLinear(z_dim, h_dim, activation=True)
        self.w2 = EqualLinear(2 * h_dim, z_dim, activation=True)
        self.w3 = EqualLinear(2 * h_dim, h_dim, activation=True)

    def step_sizes(self, num_frames: int, decay: str = "const", device=None, dtype=torch.float32) -> Tensor:
        """r_t = (residual / T) * d(t, T) for t = 1 .. T-1: shape [T - 1].

        With `travel` set, the same shape is rescaled so that sum_t r_t = travel for any T and decay: a clip
        covers the same distance however many frames it is rendered with (the reference's PixelNorm mapper
        ignores |o|; a mapper that sees |o| needs this to infer at T = 16 what it learned at T = 4)."""
        steps = decay_factors(num_frames, decay, device=device, dtype=dtype) * (self.residual / num_frames)
        if self.travel is not None and num_frames > 1:
            steps = steps * (self.travel / steps.sum().clamp_min(1e-12))
        return steps

    def initial_state(self, e_txt: Tensor, e_img: Tensor,
                      generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
        """(z_0, h_0). The image embedding is detached: only the text path carries gradient into z_0."""
        if e_txt.ndim != 2 or e_txt.shape != e_img.shape or e_txt.shape[1] != self.z_dim:
            raise ValueError(f"e_txt and e_img must both be [B, {self.z_dim}], got {tuple(e_txt.shape)} and "
                             f"{tuple(e_img.shape)}")
        z0 = F.normalize(e_txt, dim=-1) + F.normalize(e_img.detach(), dim=-1).to(e_txt.dtype)
        shape = (e_txt.shape[0], self.h_dim)
        if generator is None:
            h0 = torch.randn(shape, device=e_txt.device, dtype=e_txt.dtype)
        else:  # draw where the generator lives (e.g. a CPU generator for CUDA inputs), then move
            h0 = torch.randn(shape, generator=generator, device=generator.device, dtype=e_txt.dtype)
            h0 = h0.to(e_txt.device)
        return z0, 0.01 * h0

    def forward(self, e_txt: Tensor, e_img: Tensor, num_frames: int, decay: str = "const",
                generator: Optional[torch.Generator] = None, return_z: bool = False):
        """e_txt, e_img [B, z_dim] -> offsets o [B, T, z_dim] (and z [B, T, z_dim] if return_z)."""
        z, h = self.initial_state(e_txt, e_img, generator)
        z0 = z
        steps = self.step_sizes(num_frames, decay, device=e_txt.device, dtype=e_txt.dtype)
        zs = [z]
        for t in range(1, num_frames):
            u = torch.cat([self.w1(z), h], dim=-1)
            r = steps[t - 1]
            z, h = z + r * self.w2(u), h + r * self.w3(u)
            zs.append(z)
        z_seq = torch.stack(zs, dim=1)
        offsets = z_seq - z0.unsqueeze(1)  # row 0 is z0 - z0 = 0 exactly
        return (offsets, z_seq) if return_z else offsets


# --------------------------------------------------------------------------------------------- W+ mapper
class WPlusMapper(nn.Module):
    """Maps a latent offset o [.., z_dim] to a W+ offset [.., num_ws, w_dim]:

        PixelNorm -> EqualLinear(z_dim, hidden) + lrelu -> EqualLinear(hidden, hidden) + lrelu
                  -> EqualLinear(hidden, num_ws * w_dim) [+ lrelu if final_activation]

    Use ``offsets(o)``, not ``forward``, to get W+ offsets. Deviation from the reference design (deliberate):
    PixelNorm(0) = 0, so mapper(0) is a constant made of the biases, not zero, and frame 0 would not be the
    inversion. ``offsets(o) = mapper(o) - mapper(0)`` is exactly 0 for o = 0 (rows that are all zero are set to
    0 explicitly, so no rounding of the subtraction can leak through), which makes frame 0 equal ``w_inv``.

    Last layer: linear by default (``final_activation=False``); the reference applies an lrelu there too. A W+
    offset is a signed direction, and the lrelu would shrink every negative coordinate five-fold (and scale by
    sqrt(2)); pass ``final_activation=True`` to reproduce the reference.

    Note that with ``pixel_norm=True`` (the reference) the mapper only sees the direction of o: mapper(c * o) =
    mapper(o) for any c > 0 once mean(o^2) >> eps (1e-8). The size of the motion then comes from how the direction
    of o changes, not from |o|; ``pixel_norm=False`` feeds o as it is.
    """

    def __init__(self, z_dim: int, num_ws: int, w_dim: int, hidden: Optional[int] = None,
                 final_activation: bool = False, pixel_norm: bool = True, eps: float = 1e-8):
        super().__init__()
        hidden = w_dim if hidden is None else hidden
        if min(z_dim, num_ws, w_dim, hidden) < 1:
            raise ValueError(f"z_dim, num_ws, w_dim and hidden must be >= 1, got {z_dim}, {num_ws}, {w_dim}, {hidden}")
        self.z_dim, self.num_ws, self.w_dim, self.hidden = z_dim, num_ws, w_dim, hidden
        self.use_pixel_norm, self.eps = pixel_norm, eps
        self.fc0 = EqualLinear(z_dim, hidden, activation=True)
        self.fc1 = EqualLinear(hidden, hidden, activation=True)
        self.out = EqualLinear(hidden, num_ws * w_dim, activation=final_activation)

    def forward(self, o: Tensor) -> Tensor:
        """Raw mapping o [.., z_dim] -> [.., num_ws, w_dim]; NOT zero at o = 0 (see ``offsets``)."""
        x = pixel_norm(o, self.eps) if self.use_pixel_norm else o
        x = self.out(self.fc1(self.fc0(x)))
        return x.reshape(*o.shape[:-1], self.num_ws, self.w_dim)

    def offsets(self, o: Tensor) -> Tensor:
        """W+ offsets mapper(o) - mapper(0): [.., z_dim] -> [.., num_ws, w_dim], exactly 0 where o is all zero."""
        base = self.forward(o.new_zeros(1, self.z_dim))[0]  # [num_ws, w_dim]
        dw = self.forward(o) - base
        is_zero = (o == 0).all(dim=-1)[..., None, None]
        return dw.masked_fill(is_zero, 0.0)


# --------------------------------------------------------------------------------------------- motion generator
class MotionGenerator(nn.Module):
    """LatentRecurrent + WPlusMapper: (e_txt, e_img) -> W+ offsets dw [B, T, num_ws, w_dim] with dw[:, 0] == 0.

    Train with decay="const"; sample with decay="linear" (the default of ``sample``) so the motion settles."""

    def __init__(self, z_dim: int, num_ws: int, w_dim: int, h_dim: int = 384, residual: float = 0.8,
                 hidden: Optional[int] = None, final_activation: bool = False, pixel_norm: bool = True,
                 travel: Optional[float] = None):
        super().__init__()
        self.recurrent = LatentRecurrent(z_dim, h_dim=h_dim, residual=residual, travel=travel)
        self.mapper = WPlusMapper(z_dim, num_ws, w_dim, hidden=hidden, final_activation=final_activation,
                                  pixel_norm=pixel_norm)
        self.z_dim, self.num_ws, self.w_dim = z_dim, num_ws, w_dim

    def forward(self, e_txt: Tensor, e_img: Tensor, num_frames: int, decay: str = "const",
                generator: Optional[torch.Generator] = None, return_offsets: bool = False):
        """-> dw [B, T, num_ws, w_dim] (and the latent offsets o [B, T, z_dim] if return_offsets)."""
        o = self.recurrent(e_txt, e_img, num_frames, decay=decay, generator=generator)
        dw = self.mapper.offsets(o)
        return (dw, o) if return_offsets else dw

    def sample(self, e_txt: Tensor, e_img: Tensor, num_frames: int, decay: str = "linear",
               generator: Optional[torch.Generator] = None) -> Tensor:
        """Inference helper: forward with the settling "linear" decay by default."""
        return self.forward(e_txt, e_img, num_frames, decay=decay, generator=generator)


# --------------------------------------------------------------------------------------------- losses
def smoothness_loss(dw: Tensor) -> Tensor:
    """Constant-velocity penalty on a trajectory dw [B, T, ...]:

        L = mean over b, t = 1 .. T-2 and all coordinates of (dw_{t+1} - 2 dw_t + dw_{t-1})^2

    i.e. ||second difference||^2 averaged over frames and divided by the number of coordinates. This is the
    motion paper's "path length regularisation" (straight, evenly paced paths); it is NOT StyleGAN2's path length
    penalty on the generator's Jacobian (``animation.stylegan2.PathLengthPenalty``). 0 when T < 3.
    """
    if dw.ndim < 2:
        raise ValueError(f"dw must be [B, T, ...], got {tuple(dw.shape)}")
    if dw.shape[1] < 3:
        return dw.sum() * 0
    second = dw[:, 2:] - 2 * dw[:, 1:-1] + dw[:, :-2]
    return second.square().mean()


def endpoint_loss(dw: Tensor) -> Tensor:
    """First-vs-last consistency: mean over b and coordinates of (dw_{T-1} - dw_0)^2.

    With ``MotionGenerator`` dw_0 = 0, so this is an L2 penalty on the final offset (the face returns to the
    inverted still by the end of the clip)."""
    if dw.ndim < 2:
        raise ValueError(f"dw must be [B, T, ...], got {tuple(dw.shape)}")
    return (dw[:, -1] - dw[:, 0]).square().mean()


def latent_anchor_loss(ws: Tensor, w_inv: Tensor) -> Tensor:
    """Mean over frames of MSE(w_t, w_inv): ws [B, T, num_ws, w_dim], w_inv [B, num_ws, w_dim] (or [B, 1, ...]).

    Every frame has the same number of coordinates, so this equals the mean of (ws - w_inv)^2 over everything."""
    if w_inv.ndim == ws.ndim - 1:
        w_inv = w_inv.unsqueeze(1)
    if w_inv.ndim != ws.ndim:
        raise ValueError(f"w_inv {tuple(w_inv.shape)} does not match ws {tuple(ws.shape)}")
    return (ws - w_inv).square().mean()


def feature_identity_loss(feature_fn: Callable[[Tensor], Tensor], first_frames: Tensor, last_frames: Tensor,
                          inputs: Tensor, detach_target: bool = True) -> Tensor:
    """Identity preservation at both ends of the clip:

        L = MSE(f(first_frames), f(inputs)) + MSE(f(last_frames), f(inputs))

    `feature_fn` f is any differentiable image -> feature tensor callable (e.g. an attribute oracle's identity
    features); images are [B, C, H, W]. The input image's features are the target and are computed without
    gradient unless ``detach_target=False``."""
    if detach_target:
        with torch.no_grad():
            target = feature_fn(inputs)
    else:
        target = feature_fn(inputs)
    return F.mse_loss(feature_fn(first_frames), target) + F.mse_loss(feature_fn(last_frames), target)


def contrastive_text_loss(image_emb: Tensor, text_emb: Tensor, temperature: float = 0.07,
                          same_text: Optional[Tensor] = None) -> Tensor:
    """Image-to-text contrastive loss. With both embeddings L2-normalised and S = image_emb @ text_emb^T [B, B]:

        L = mean_i log(1 + sum_{j != i, j not same text as i} exp((S_ij - S_ii) / temperature))

    `same_text` is an optional [B, B] bool mask of pairs that share a sentence (or an action): those j are not
    negatives for i. A row with no negatives contributes log(1) = 0. Computed in float32 as a logsumexp over
    [0, logits], so it is finite and NaN-free even when every negative is masked."""
    if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(f"image_emb and text_emb must both be [B, D], got {tuple(image_emb.shape)} and "
                         f"{tuple(text_emb.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    batch = image_emb.shape[0]
    img = F.normalize(image_emb.float(), dim=-1)
    txt = F.normalize(text_emb.float(), dim=-1)
    sim = img @ txt.t()
    logits = (sim - sim.diagonal().unsqueeze(1)) / temperature
    excluded = torch.eye(batch, dtype=torch.bool, device=sim.device)
    if same_text is not None:
        if same_text.shape != (batch, batch):
            raise ValueError(f"same_text must be [{batch}, {batch}], got {tuple(same_text.shape)}")
        excluded = excluded | same_text.to(device=sim.device, dtype=torch.bool)
    logits = logits.masked_fill(excluded, -math.inf)
    with_one = torch.cat([logits.new_zeros(batch, 1), logits], dim=1)  # the "1 +" term: exp(0)
    return torch.logsumexp(with_one, dim=1).mean()


def single_text_loss(image_emb: Tensor, text_emb: Tensor) -> Tensor:
    """Non-contrastive fallback: mean over the batch of 1 - cos(image_emb, text_emb)."""
    return (1 - F.cosine_similarity(image_emb, text_emb, dim=-1)).mean()
