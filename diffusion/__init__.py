"""Diffusion training on the shared data layer and trainer: continuous logSNR schedules, Min-SNR-γ and other
loss weightings, ε / x0 / v targets, DDIM / Euler / Heun samplers, UNet and DiT backbones.

    diffusion.config     DiffusionConfig and its parts (validated against the registries below)
    diffusion.models     DENOISERS (named configs), BACKBONES, create_model; denoisers are pretrained-folder models
    diffusion.schedules  SCHEDULES;   diffusion.weighting  WEIGHTINGS;   diffusion.samplers  SAMPLERS
    diffusion.pipeline   DiffusionPipeline.from_pretrained(dir).sample(n, seed), evaluate_model (inference only)
    diffusion.train      DiffusionObjective and run_train (training only)
    diffusion.metrics    the FD feature classifier and sample_quality

Importing the package registers the readers of the older folder layouts (exported models, feature
classifiers) with `data_tools.pretrained`, so `hdvila pretrained migrate` understands them.
"""
from . import metrics as _metrics, models as _models  # noqa: F401  (legacy pretrained-folder readers)
