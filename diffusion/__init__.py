"""Diffusion training on the shared data layer and trainer: continuous logSNR schedules, Min-SNR-γ and other
loss weightings, ε / x0 / v targets, DDIM / Euler / Heun samplers, UNet and DiT backbones."""
