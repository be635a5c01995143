"""A diffusion model seen as a policy: a chain of DDIM η transitions over a fixed logSNR grid, with the model's
prediction guided (classifier-free) and its x0 estimate decoded into the images a preference model scores.

Two policies share one interface, so the SPO loop, the trajectory-DPO baseline and evaluation never ask which:

    DenoiserPolicy         a denoiser of the diffusion core (digits, MNIST, ...); the prompt is a class label
    StableDiffusionPolicy  a diffusers StableDiffusionPipeline from a local folder (spo.stable_diffusion): latents,
                           text prompts, VAE decoding

Interface (`net` is the network to evaluate: the live model, a DeepSpeed engine around it, or the reference):

    policy.grid                      increasing logSNR values λ_0 < ... < λ_N; step i goes λ_i -> λ_{i+1}
    policy.condition(prompt_ids)     the conditioning of a batch of prompts (labels, text embeddings)
    policy.start(n, generator)       x at λ_0, on the policy's device (drawn on the generator's device, then moved,
                                     so a seed gives the same chain on CPU and GPU)
    policy.predict(net, x, logsnr [B], cond) -> (x0_hat, eps_hat), guided and clipped
    policy.decode(x0_hat)            images in [-1, 1] for the scorer
    policy.rows_per_call             network rows per predicted image (2 with classifier-free guidance)
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from diffusion.process import alpha_sigma, broadcast, predict_x0_eps
from diffusion.samplers import guided, logsnr_grid


def randn_like_on(shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device (the CPU by default), then moved to `device`."""
    return torch.randn(tuple(shape), generator=generator).to(device)


class DenoiserPolicy:
    """A diffusion-core denoiser (`diffusion.models.Denoiser`) sampled with DDIM η on a cosine logSNR grid."""

    def __init__(self, model: nn.Module, target: str, steps: int, guidance: float = 1.0, eta: float = 1.0,
                 logsnr_min: float = -10.0, logsnr_max: float = 10.0, clip_x0: Sequence[float] | None = (-1.0, 1.0),
                 prompts: Sequence[int] | None = None):
        cfg = model.config
        self.model = model
        self.target = target
        self.num_classes = int(cfg.num_classes)
        self.grid = [float(v) for v in logsnr_grid(steps, "cosine", logsnr_min, logsnr_max)]
        self.guidance = float(guidance) if self.num_classes > 0 else 1.0
        self.eta = float(eta)
        self.clip_x0 = tuple(clip_x0) if clip_x0 else None
        self.shape = (cfg.channels, cfg.image_size, cfg.image_size)
        self.prompts = list(prompts) if prompts is not None else list(range(max(1, self.num_classes)))
        self.rows_per_call = 2 if self.guidance != 1.0 else 1

    @classmethod
    def from_pipeline(cls, pipeline: Any, steps: int | None = None, guidance: float | None = None,
                      eta: float = 1.0) -> "DenoiserPolicy":
        """From a `diffusion.pipeline.DiffusionPipeline`: its target, grid bounds and (unless given) steps and
        guidance."""
        s = pipeline.config.sampler
        return cls(pipeline.model, pipeline.config.target, steps or s.steps,
                   s.guidance if guidance is None else guidance, eta, s.logsnr_min, s.logsnr_max, s.clip_x0)

    def condition(self, prompt_ids: torch.Tensor) -> torch.Tensor | None:
        if self.num_classes <= 0:
            return None
        return torch.as_tensor([self.prompts[int(i)] for i in prompt_ids], dtype=torch.long)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def start(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return randn_like_on((n, *self.shape), generator, self.device)

    def predict(self, net: Any, x: torch.Tensor, logsnr: torch.Tensor, cond: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        def fn(x_, lam, c):
            return net(x_, lam, c)

        model_fn = guided(fn, self.guidance, null_cond=self.num_classes) if self.guidance != 1.0 else fn
        logsnr = logsnr.to(device=x.device, dtype=x.dtype)
        if logsnr.dim() == 0:
            logsnr = logsnr.expand(x.shape[0])
        prediction = model_fn(x, logsnr, None if cond is None else cond.to(x.device))
        x0, eps = predict_x0_eps(prediction.to(x.dtype), x, logsnr, self.target)
        if self.clip_x0 is not None:  # as the core's samplers do: clip x0 and keep x = α x0 + σ ε
            alpha, sigma = alpha_sigma(broadcast(logsnr, x))
            x0 = x0.clamp(*self.clip_x0)
            eps = (x - alpha * x0) / sigma
        return x0, eps

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return x0.clamp(-1.0, 1.0)


__all__ = ["DenoiserPolicy", "randn_like_on"]
