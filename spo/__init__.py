"""SPO in miniature: step-by-step preference optimisation of a diffusion model with its step-aware preference
model (Liang et al., "Aesthetic Post-Training Diffusion Models from Generic Preferences with Step-by-step
Preference Optimization"), built on the diffusion core and the shared trainer.

    spo.steps          the formulas: DDIM η transition density, clipped-ratio DPO loss, pair selection
    spo.policy         a diffusion model seen as a chain of DDIM η transitions (DenoiserPolicy)
    spo.stable_diffusion  the same interface on a diffusers StableDiffusionPipeline from a local folder (LoRA)
    spo.preference     the miniature's hidden aesthetic and its noisy labeller
    spo.spm            the step-aware preference model and its training
    spo.collect        pairs: SPO's step-wise resampler and the trajectory-level DPO baseline
    spo.train          SPOConfig, SPOObjective, run_train (the shared trainer), LoRA or full fine-tuning
    spo.evaluate       aesthetic, class accuracy and FD of a policy's samples
"""
