"""SPO on a real text-to-image model: a diffusers StableDiffusionPipeline from a local folder, as a policy with
the interface of `spo.policy` (latents, text prompts, classifier-free guidance, VAE decoding for the scorer).

    pipe = load_stable_diffusion("path/to/sd-folder")              # diffusers layout; nothing is downloaded
    policy = StableDiffusionPolicy(pipe, ["a cat on a sofa", ...], steps=20, guidance=5.0)

Timesteps follow the pipeline's own scheduler (`set_timesteps(steps)`, e.g. 901, 801, ..., 1 for 10 steps of SD's
"leading" spacing) and end at timestep 0, where diffusers' last DDIM step lands (ᾱ_0 = 0.9991; with
`set_alpha_to_one` diffusers would land on ᾱ = 1 instead). Each maps to its logSNR λ = log(ᾱ / (1 − ᾱ)), so
`steps` transitions, their densities and the samplers are the core's (`x = α x0 + σ ε` with α² = ᾱ). Like the
core's samplers, the chain returns the x0 prediction at the last grid point, where diffusers returns the state
itself (the same image up to 3% of noise). The UNet is what SPO trains, with LoRA adapters through peft
(`spo.train.add_lora`, targets: the attention projections).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from diffusion.process import predict_x0_eps

from .policy import randn_like_on

# peft target regex for a Stable Diffusion UNet: the attention projections, as SPO's and most LoRA recipes do
SD_LORA_TARGETS = r".*(to_q|to_k|to_v|to_out\.0)"


def load_stable_diffusion(folder: str | Path) -> Any:
    """A StableDiffusionPipeline from a local folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/,
    scheduler/), weights from safetensors only, no safety checker, nothing fetched from a hub."""
    from diffusers import StableDiffusionPipeline

    path = Path(folder)
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"{path}: no model_index.json (expected a Stable Diffusion folder in diffusers' "
                                "layout)")
    return StableDiffusionPipeline.from_pretrained(str(path), local_files_only=True, use_safetensors=True,
                                                   safety_checker=None, requires_safety_checker=False)


class StableDiffusionPolicy:
    def __init__(self, pipe: Any, prompts: Sequence[str], steps: int = 20, guidance: float = 5.0, eta: float = 1.0):
        if not prompts:
            raise ValueError("a Stable Diffusion policy needs at least one prompt")
        self.pipe = pipe
        self.model: nn.Module = pipe.unet
        self.prompts = [str(p) for p in prompts]
        self.guidance = float(guidance)
        self.eta = float(eta)
        self.rows_per_call = 2 if self.guidance != 1.0 else 1
        prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
        targets = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
        if prediction not in targets:
            raise ValueError(f"unsupported prediction_type {prediction!r}")
        self.target = targets[prediction]
        scheduler = pipe.scheduler
        scheduler.set_timesteps(steps)
        timesteps = scheduler.timesteps.long().cpu()  # descending: noisiest first
        if int(timesteps[-1]) == 0:
            raise ValueError("the scheduler's timesteps end at 0 (trailing spacing or steps_offset 0): its last step "
                             "would land beyond the grid; use SD's leading spacing with steps_offset 1")
        # the last DDIM step lands on ᾱ_0: timestep 0 is the grid's clean end
        timesteps = torch.cat([timesteps, torch.zeros(1, dtype=torch.long)])
        self.timesteps = timesteps
        alpha_bar = scheduler.alphas_cumprod.double()[self.timesteps]
        lam = torch.log(alpha_bar) - torch.log1p(-alpha_bar)
        self.grid = [float(v) for v in lam]
        if any(b <= a for a, b in zip(self.grid, self.grid[1:])):
            raise ValueError("the scheduler's timesteps do not give an increasing logSNR grid")
        self._grid = lam.float()
        latent = pipe.unet.config.sample_size
        self.shape = (pipe.unet.config.in_channels, latent, latent)
        self._embeddings: dict[int, torch.Tensor] = {}
        self._null: torch.Tensor | None = None

    @torch.no_grad()
    def _encode(self, texts: list[str]) -> torch.Tensor:
        tokenizer, encoder = self.pipe.tokenizer, self.pipe.text_encoder
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        return encoder(ids.to(encoder.device))[0]

    def condition(self, prompt_ids: torch.Tensor) -> torch.Tensor:
        """Text-encoder states [B, L, D] of the prompts (each prompt encoded once and cached)."""
        missing = sorted({int(i) for i in prompt_ids} - set(self._embeddings))
        if missing:
            for index, states in zip(missing, self._encode([self.prompts[i] for i in missing])):
                self._embeddings[index] = states
        return torch.stack([self._embeddings[int(i)] for i in prompt_ids])

    def _null_states(self, like: torch.Tensor) -> torch.Tensor:
        if self._null is None:
            self._null = self._encode([""])[0]
        return self._null.to(like.device, like.dtype).expand_as(like)

    def _timesteps_for(self, logsnr: torch.Tensor) -> torch.Tensor:
        logsnr = logsnr.reshape(-1) if logsnr.dim() else logsnr.reshape(1)
        index = (logsnr.float().cpu()[:, None] - self._grid[None]).abs().argmin(dim=1)
        if not bool(torch.allclose(self._grid[index], logsnr.float().cpu(), atol=1e-4)):
            raise ValueError("logsnr values off the scheduler's grid: a Stable Diffusion UNet is called at its "
                             "own timesteps only")
        return self.timesteps[index]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def start(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return randn_like_on((n, *self.shape), generator, self.device)

    def predict(self, net: Any, x: torch.Tensor, logsnr: torch.Tensor, cond: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        t = self._timesteps_for(logsnr).to(x.device)
        states = cond.to(x.device)
        if self.guidance != 1.0:
            both = net(torch.cat([x, x]), torch.cat([t, t]),
                       encoder_hidden_states=torch.cat([states, self._null_states(states)])).sample
            conditional, unconditional = both.chunk(2)
            prediction = unconditional + self.guidance * (conditional - unconditional)
        else:
            prediction = net(x, t, encoder_hidden_states=states).sample
        return predict_x0_eps(prediction.to(x.dtype), x, logsnr.to(x.device, x.dtype), self.target)

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        scale = getattr(vae.config, "scaling_factor", 0.18215)
        images = vae.decode((x0 / scale).to(vae.device, vae.dtype)).sample
        return images.float().clamp(-1.0, 1.0)


def stable_diffusion_policy(folder: str | Path, prompts: Sequence[str], steps: int, guidance: float | None,
                            eta: float) -> StableDiffusionPolicy:
    guidance = 5.0 if guidance is None else guidance  # SPO's CFG for SD-1.5
    return StableDiffusionPolicy(load_stable_diffusion(folder), prompts, steps, guidance, eta)


__all__ = ["SD_LORA_TARGETS", "StableDiffusionPolicy", "load_stable_diffusion", "stable_diffusion_policy"]
