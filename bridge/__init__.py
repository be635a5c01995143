"""Simplified diffusion Schrödinger bridge (Tang, Hang, Gu, Chen, Guo: "Simplified Diffusion Schrödinger Bridge")
in miniature, on the diffusion core and the shared trainer.

    bridge.chain      the discrete chain: γ schedule, reference processes, parameterisations and targets
    bridge.ends       the two distributions (2-D toys, digit images, Gaussians)
    bridge.networks   ResMLP (2-D) and the core's denoisers (images) as bridge networks
    bridge.ipf        BridgeConfig and run_ipf: half-bridges on the shared trainer, caches, flow-matching hand-over
    bridge.evaluate   distances of both ends, transport cost
"""
