"""The discrete chain of a diffusion Schrödinger bridge: step sizes, reference processes, and how a network's output
becomes the next state and what it is trained to predict.

States x_0 .. x_N run from the data end (k = 0, p_data) to the prior end (k = N, p_prior), with interpolation
times t_k = k / N. Two networks walk the chain in opposite directions (De Bortoli et al. 2021):

    forward   F: x_k     -> x_{k+1} ~ N(F_k(x_k), 2 γ_{k+1} I)          data -> prior
    backward  B: x_{k+1} -> x_k     ~ N(B_{k+1}(x_{k+1}), 2 γ_{k+1} I)  prior -> data (the generator)

IPF fits B on trajectories simulated forwards (by F, or a reference process at iteration 0), then F on trajectories
simulated backwards by B, and so on. For a network that moves from step `k_from` to `k_to` on a trajectory that was
simulated from the other end (its start point x_start is where this network's walk ends), the parameterisations
(Tang et al., Simplified DSB) are:

    mean      the network predicts the next state's mean. Targets:
                dsb         x_from + G(x_to) − G(x_from)   (G: the mean function that simulated the trajectory)
                simplified  x_to                            (regress the adjacent state)
    terminal  the network predicts its walk's end point x_start; the next mean is rebuilt on the straight line
              through that end and the other end solved from the current state:
                x_other = (x_from − (1 − s_from) x̂_start) / s_from,  mean = (1 − s_to) x̂_start + s_to x_other
              with s = the distance in time from the end the walk heads to (t for B, 1 − t for F)
    flow      the network predicts a velocity v = (x_start − x_from) / s_from; mean = x_from + (s_from − s_to) v̂
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from diffusion.process import broadcast

DIRECTIONS = ("forward", "backward")
PARAMETERISATIONS = ("mean", "terminal", "flow")
TARGETS = ("dsb", "simplified")  # what a "mean" network regresses onto
REFERENCES = ("ou", "flow")


def gamma_schedule(steps: int, start: float, end: float) -> torch.Tensor:
    """γ_1 .. γ_N: linear from `start` to `end` over the first half of the steps, mirrored back over the second
    (the middle step of an odd N is `end`), as SDSB's `linear_a_b`."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not (0 < start and 0 < end):
        raise ValueError(f"step sizes must be positive, got {start} and {end}")
    half = steps // 2
    rise = torch.linspace(start, end, half, dtype=torch.float64) if half > 1 else torch.full((half,), start,
                                                                                               dtype=torch.float64)
    middle = torch.full((steps % 2,), end, dtype=torch.float64)
    return torch.cat([rise, middle, rise.flip(0)])


@dataclass(frozen=True)
class Chain:
    steps: int
    gammas: torch.Tensor  # [N]: γ_{k+1} is the variance scale of the step between x_k and x_{k+1}

    @classmethod
    def make(cls, steps: int, gamma_start: float, gamma_end: float) -> "Chain":
        return cls(steps, gamma_schedule(steps, gamma_start, gamma_end))

    def time(self, k: int | torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(k, dtype=torch.float32) / self.steps

    def noise_std(self, k_low: int) -> float:
        """sqrt(2 γ) of the step between x_{k_low} and x_{k_low + 1}."""
        return float(torch.sqrt(2.0 * self.gammas[k_low]))


def _heading(direction: str, t: torch.Tensor) -> torch.Tensor:
    """The time left to the end the walk heads to: t for backward (to the data end), 1 − t for forward."""
    return t if direction == "backward" else 1.0 - t


def next_mean(parameterisation: str, direction: str, output: torch.Tensor, x_from: torch.Tensor,
              t_from: torch.Tensor, t_to: torch.Tensor) -> torch.Tensor:
    """The mean of the next state from a network's output (see the module docstring)."""
    if parameterisation == "mean":
        return output
    s_from = broadcast(_heading(direction, t_from), x_from)
    s_to = broadcast(_heading(direction, t_to), x_from)
    if parameterisation == "terminal":
        other = (x_from - (1.0 - s_from) * output) / s_from
        return (1.0 - s_to) * output + s_to * other
    if parameterisation == "flow":
        return x_from + (s_from - s_to) * output
    raise ValueError(f"parameterisation must be one of {PARAMETERISATIONS}, got {parameterisation!r}")


def training_target(parameterisation: str, target: str, direction: str, x_from: torch.Tensor, x_to: torch.Tensor,
                    x_start: torch.Tensor, t_from: torch.Tensor,
                    simulator_mean: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """What the network that steps x_from -> x_to regresses onto, on a trajectory simulated from x_start.

    `simulator_mean(x)` is the mean map of the process that simulated the trajectory in the other direction
    (needed by the original DSB target only)."""
    if parameterisation == "mean":
        if target == "simplified":
            return x_to
        if target == "dsb":
            if simulator_mean is None:
                raise ValueError("the DSB target needs the mean map of the process that simulated the trajectory")
            return x_from + simulator_mean(x_to) - simulator_mean(x_from)
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if parameterisation == "terminal":
        return x_start
    if parameterisation == "flow":
        return (x_start - x_from) / broadcast(_heading(direction, t_from), x_from)
    raise ValueError(f"parameterisation must be one of {PARAMETERISATIONS}, got {parameterisation!r}")


# ------------------------------------------------------------------------------------------------ references

def ou_mean(chain: Chain, k_low: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The OU reference's forward mean map of step k_low -> k_low + 1: x − γ x (an Euler step of
    dX = −X dt + √2 dW)."""
    gamma = float(chain.gammas[k_low])
    return lambda x: (1.0 - gamma) * x


def reference_trajectory(reference: str, chain: Chain, x_data: torch.Tensor, x_prior: torch.Tensor | None,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """States [N + 1, B, ...] of the iteration-0 reference process, from x_data at k = 0.

    ou:    x_{k+1} = (1 − γ_{k+1}) x_k + sqrt(2 γ_{k+1}) z  (x_prior unused)
    flow:  x_k = (1 − t_k) x_data + t_k x_prior + sqrt(2 γ_k) z_k for 0 < k < N, exact at both ends: the
           interpolation of an independent coupling, so the first half-bridge is a flow-matching model
    """
    states = [x_data]
    if reference == "ou":
        x = x_data
        for k in range(chain.steps):
            x = ou_mean(chain, k)(x) + chain.noise_std(k) * torch.randn(x.shape, generator=generator).to(x.device)
            states.append(x)
        return torch.stack(states)
    if reference == "flow":
        if x_prior is None or x_prior.shape != x_data.shape:
            raise ValueError("the flow reference needs prior samples shaped like the data samples")
        for k in range(1, chain.steps + 1):
            t = k / chain.steps
            x = (1.0 - t) * x_data + t * x_prior
            if k < chain.steps:
                x = x + chain.noise_std(k - 1) * torch.randn(x.shape, generator=generator).to(x.device)
            states.append(x)
        return torch.stack(states)
    raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")


__all__ = ["Chain", "DIRECTIONS", "PARAMETERISATIONS", "REFERENCES", "TARGETS", "gamma_schedule", "next_mean",
           "ou_mean", "reference_trajectory", "training_target"]
