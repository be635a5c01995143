"""Iterative proportional fitting (IPF) of a diffusion Schrödinger bridge, one half-bridge at a time on the shared
trainer.

    hdvila bridge train --config bridge/<name> [key=value ...]

Half-bridge n trains one direction: even n the backward network B (prior -> data) on trajectories simulated
forwards from data samples (by the reference process at n = 0, by F after), odd n the forward network F on
trajectories simulated backwards by B from prior samples. Each half-bridge:

1. simulates a cache of `cache_trajectories` trajectories with the other direction (no gradient) and turns every
   (trajectory, step) into a regression example (input state, its time, target; `bridge.chain`);
2. trains its network on them with the shared trainer (its own run folder `ipfNN-<direction>/`, its own
   optimizer; the weights start from that direction's previous network);
3. exports the network (`ipfNN-<direction>/net`) and scores both ends (`bridge.evaluate`).

Finished half-bridges are reused, so a stopped run resumes at the first unfinished one. `init_backward` names a
backward network trained as flow matching with the same chain (`reference: flow`, terminal or flow
parameterisation); it stands in for half-bridge 0, and IPF continues from half-bridge 1.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from data_tools.config import ConfigError, save_config, to_dict
from data_tools.files import atomic_write_json
from data_tools.logs import get_logger
from data_tools.training import distributed as D
from data_tools.training.config import OptimConfig, TrainConfig
from data_tools.training.trainer import Trainer

from .chain import (PARAMETERISATIONS, REFERENCES, TARGETS, Chain, next_mean, ou_mean, reference_trajectory,
                    training_target)
from .ends import EndConfig, sample_end
from .networks import BridgeNet, BridgeNetConfig

log = get_logger(__name__)

CACHES = ("auto", "simulated", "coupled")


@dataclass
class BridgeEvalConfig:
    samples: int = 2048
    seed: int = 1234
    projections: int = 256  # sliced Wasserstein
    exact_ot_points: int = 1024  # 2-D: exact W2 on this many points per side (POT); 0 = off
    class_kept: bool = False  # image to image, when both sets label the same classes (digits <-> MNIST)


@dataclass
class BridgeConfig:
    data: EndConfig = field(default_factory=lambda: EndConfig(kind="toy2d", name="checkerboard"))  # k = 0
    prior: EndConfig = field(default_factory=lambda: EndConfig(kind="toy2d", name="gaussian"))  # k = N
    steps: int = 16
    gamma: list = field(default_factory=lambda: [1e-4, 1e-3])  # linear from a to b over the first half, mirrored
    reference: str = "ou"  # ou | flow: the iteration-0 process
    parameterisation: str = "mean"  # mean | terminal | flow
    target: str = "simplified"  # mean networks: dsb | simplified
    network: BridgeNetConfig = field(default_factory=BridgeNetConfig)
    half_bridges: int = 6
    cache_trajectories: int = 4096
    # from half-bridge 1 on, "coupled" keeps only the end points of each simulated trajectory and redraws the
    # states between them on the flow reference's line (the states a terminal or flow network assumes);
    # "simulated" trains on the other network's own states; "auto": coupled for terminal / flow, else simulated
    cache: str = "auto"
    init_backward: str = ""  # a flow-matching backward network folder: replaces half-bridge 0
    output_dir: str = "runs/bridge/checkerboard"
    eval: BridgeEvalConfig = field(default_factory=BridgeEvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # per half-bridge
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self) -> None:
        if self.reference not in REFERENCES:
            raise ConfigError(f"reference must be one of {REFERENCES}, got {self.reference!r}")
        if self.parameterisation not in PARAMETERISATIONS:
            raise ConfigError(f"parameterisation must be one of {PARAMETERISATIONS}, got {self.parameterisation!r}")
        if self.target not in TARGETS:
            raise ConfigError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.parameterisation == "mean" and self.target == "dsb" and self.reference != "ou":
            raise ConfigError("the original DSB target needs a Markov reference with a mean map: reference: ou")
        if self.parameterisation != "mean" and self.reference == "ou":
            raise ConfigError("terminal and flow networks rebuild states on the straight line between the ends: "
                              "use reference: flow")
        if self.cache not in CACHES:
            raise ConfigError(f"cache must be one of {CACHES}, got {self.cache!r}")
        if self.cache_kind == "coupled" and self.parameterisation == "mean":
            raise ConfigError("cache: coupled is for terminal and flow networks; DSB / SDSB (mean) networks need the "
                              "simulated transitions: use cache: simulated or auto")
        if len(self.gamma) != 2 or self.steps < 2 or self.half_bridges < 1 or self.cache_trajectories < 1:
            raise ConfigError("need gamma: [a, b], steps >= 2, half_bridges >= 1 and cache_trajectories >= 1")

    @property
    def cache_kind(self) -> str:
        if self.cache != "auto":
            return self.cache
        return "simulated" if self.parameterisation == "mean" else "coupled"

    @property
    def chain(self) -> Chain:
        return Chain.make(self.steps, float(self.gamma[0]), float(self.gamma[1]))


def direction_of(half_bridge: int) -> str:
    return "backward" if half_bridge % 2 == 0 else "forward"


# ------------------------------------------------------------------------------------------------ simulation

def mean_map(cfg: BridgeConfig, net: BridgeNet, direction: str, chain: Chain
             ) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """(x at step k_from, k_from) -> the mean of the next state, from a trained network."""
    step = 1 if direction == "forward" else -1

    def fn(x: torch.Tensor, k_from: int) -> torch.Tensor:
        t_from, t_to = chain.time(k_from), chain.time(k_from + step)
        return next_mean(cfg.parameterisation, direction, net(x, t_from), x, t_from, t_to)

    return fn


@torch.no_grad()
def simulate(cfg: BridgeConfig, net: BridgeNet, direction: str, start: torch.Tensor,
             generator: torch.Generator | None = None, last_noise: bool = True) -> torch.Tensor:
    """States [N + 1, B, ...] indexed by k (k = 0 the data end), walked by `net` from `start` at its end.
    `last_noise=False` ends on the last step's mean (for samples to look at and score)."""
    chain = cfg.chain
    was = net.training
    net.eval()
    mean = mean_map(cfg, net, direction, chain)
    n = chain.steps
    ks = range(n) if direction == "forward" else range(n, 0, -1)
    states = [start]
    x = start
    try:
        for i, k in enumerate(ks):
            x = mean(x, k)
            noise_k = k if direction == "forward" else k - 1
            if last_noise or i < n - 1:
                x = x + chain.noise_std(noise_k) * torch.randn(x.shape, generator=generator).to(x.device)
            states.append(x)
    finally:
        net.train(was)
    stacked = torch.stack(states)
    return stacked if direction == "forward" else stacked.flip(0)


# ------------------------------------------------------------------------------------------------ the cache

@dataclass
class RegressionCache:
    inputs: torch.Tensor  # [M, ...] the state a network steps from
    times: torch.Tensor  # [M] its t
    targets: torch.Tensor  # [M, ...]

    def __len__(self) -> int:
        return int(self.times.shape[0])

    def batches(self, batch_size: int, seed: int) -> Callable[[int], Iterator[dict]]:
        """An epoch factory for the trainer: shuffled batches, the order drawn from (seed, epoch)."""
        def epoch(index: int) -> Iterator[dict]:
            order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed * 100_003 + index))
            for i in range(0, len(self) - batch_size + 1, batch_size):
                idx = order[i:i + batch_size]
                yield {"x": self.inputs[idx], "t": self.times[idx], "target": self.targets[idx]}

        return epoch


def build_cache(cfg: BridgeConfig, direction: str, trajectories: torch.Tensor,
                simulator_mean: Optional[Callable[[torch.Tensor, int], torch.Tensor]]) -> RegressionCache:
    """Regression examples for the `direction` network from trajectories [N + 1, M, ...] simulated the other way.

    simulator_mean(x, k) is the simulating process's mean map from step k (DSB targets only)."""
    chain = cfg.chain
    n = chain.steps
    x_start = trajectories[0] if direction == "backward" else trajectories[n]  # where this network's walk ends
    inputs, times, targets = [], [], []
    for k in range(n):
        if direction == "backward":  # x_{k+1} -> x_k on a forward trajectory
            x_from, x_to, t_from, k_sim = trajectories[k + 1], trajectories[k], chain.time(k + 1), k
        else:  # x_k -> x_{k+1} on a backward trajectory
            x_from, x_to, t_from, k_sim = trajectories[k], trajectories[k + 1], chain.time(k), k + 1
        sim = None if simulator_mean is None else (lambda x, k_sim=k_sim: simulator_mean(x, k_sim))
        with torch.no_grad():
            target = training_target(cfg.parameterisation, cfg.target, direction, x_from, x_to, x_start, t_from, sim)
        inputs.append(x_from)
        times.append(torch.full((x_from.shape[0],), float(t_from)))
        targets.append(target)
    return RegressionCache(torch.cat(inputs), torch.cat(times), torch.cat(targets))


class RegressionObjective:
    """MSE of the network's output against the cached target."""

    def loss(self, model: Any, batch: dict, step: int) -> dict[str, torch.Tensor]:
        out = model(batch["x"], batch["t"])
        return {"loss": (out - batch["target"]).pow(2).flatten(1).mean()}


# ------------------------------------------------------------------------------------------------ the loop

def new_network(cfg: BridgeConfig, direction: str, half_bridge: int, shape: tuple[int, ...]) -> BridgeNet:
    net_cfg = cfg.network
    if net_cfg.kind == "resmlp" and net_cfg.dim != shape[-1]:
        net_cfg = BridgeNetConfig(**{**to_dict(net_cfg), "dim": shape[-1]})
    return BridgeNet(net_cfg, {"direction": direction, "half_bridge": half_bridge, **recipe_facts(cfg)})


def recipe_facts(cfg: BridgeConfig) -> dict[str, Any]:
    """What a finished half-bridge must share with the run that reuses it (kept in the network's meta)."""
    return {"parameterisation": cfg.parameterisation, "target": cfg.target, "steps": cfg.steps,
            "gamma": [float(g) for g in cfg.gamma], "reference": cfg.reference, "cache": cfg.cache_kind,
            "max_steps": cfg.train.max_steps, "lr": float(cfg.optim.lr), "schedule": cfg.optim.schedule}


def _check_reuse(cfg: BridgeConfig, folder: Path) -> None:
    """A finished half-bridge is reused only by a run of the same recipe: a stale folder would silently mix two."""
    from data_tools.pretrained import read_pretrained

    meta = read_pretrained(folder / "net", BridgeNet.pretrained_kind).meta  # the config and meta, not the weights
    differ = {k: (meta.get(k), v) for k, v in recipe_facts(cfg).items() if meta.get(k) != v}
    if differ:
        raise ValueError(f"{folder} was trained with another recipe (" + ", ".join(
            f"{k}: {got!r}, this run: {want!r}" for k, (got, want) in differ.items()) +
            "); use a new output_dir or delete the folder")


def half_bridge_dir(out: Path, half_bridge: int) -> Path:
    return out / f"ipf{half_bridge:02d}-{direction_of(half_bridge)}"


def trajectories_for(cfg: BridgeConfig, half_bridge: int, nets: dict[str, BridgeNet | None],
                     generator: torch.Generator) -> tuple[torch.Tensor, Optional[Callable]]:
    """The cache's trajectories and the simulating mean map (for DSB targets)."""
    m = cfg.cache_trajectories
    direction = direction_of(half_bridge)
    if direction == "backward":
        x_data = sample_end(cfg.data, m, generator)
        if nets["forward"] is None:  # half-bridge 0: the reference process
            prior = sample_end(cfg.prior, m, generator) if cfg.reference == "flow" else None
            chain = cfg.chain
            return (reference_trajectory(cfg.reference, chain, x_data, prior, generator),
                    (lambda x, k: ou_mean(chain, k)(x)) if cfg.reference == "ou" else None)
        forward = nets["forward"]
        return simulate(cfg, forward, "forward", x_data, generator), mean_map(cfg, forward, "forward", cfg.chain)
    backward = nets["backward"]
    x_prior = sample_end(cfg.prior, m, generator)
    return (simulate(cfg, backward, "backward", x_prior, generator),
            mean_map(cfg, backward, "backward", cfg.chain))


def coupled_states(cfg: BridgeConfig, trajectories: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The flow reference's states between each trajectory's own end points (x_0, x_N): the simulated coupling
    with straight-line states. A terminal or flow network rebuilds its next state on the line through its
    current state and its predicted end; trained on curved simulated states, its secant steps leave the
    simulated marginals (docs/bridge.md)."""
    return reference_trajectory("flow", cfg.chain, trajectories[0], trajectories[-1], generator)


def run_ipf(cfg: BridgeConfig, progress: bool = True) -> list[dict[str, Any]]:
    """Train the bridge; returns (and writes to output_dir/ipf.json) the scores after every half-bridge."""
    from .evaluate import evaluate_bridge

    out = Path(cfg.output_dir)
    D.init_distributed()
    if D.world_size() > 1:
        raise RuntimeError("IPF runs on one process: its half-bridges are small and sequential")
    out.mkdir(parents=True, exist_ok=True)
    for n in range(cfg.half_bridges):  # before anything is written: refuse a folder of another recipe
        if (half_bridge_dir(out, n) / "net" / "config.json").exists():
            _check_reuse(cfg, half_bridge_dir(out, n))
    save_config(cfg, out / "config.yaml")
    shape = tuple(sample_end(cfg.data, 1, torch.Generator().manual_seed(0)).shape[1:])
    nets: dict[str, BridgeNet | None] = {"forward": None, "backward": None}
    history: list[dict[str, Any]] = []
    first = 0
    if cfg.init_backward:
        nets["backward"] = BridgeNet.from_pretrained(cfg.init_backward)
        _check_handover(cfg, nets["backward"])
        history.append({"half_bridge": 0, "direction": "backward", "from": cfg.init_backward,
                        **evaluate_bridge(cfg, nets)})
        first = 1
    for n in range(first, cfg.half_bridges):
        direction = direction_of(n)
        folder = half_bridge_dir(out, n)
        if (folder / "net" / "config.json").exists():  # finished before: reuse
            nets[direction] = BridgeNet.from_pretrained(folder / "net")
        else:
            generator = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + n)
            trajectories, sim_mean = trajectories_for(cfg, n, nets, generator)
            if cfg.cache_kind == "coupled" and n > 0:
                trajectories = coupled_states(cfg, trajectories, generator)
            cache = build_cache(cfg, direction, trajectories, sim_mean)
            net = new_network(cfg, direction, n, shape)
            if nets[direction] is not None:  # warm start from this direction's previous network
                net.load_state_dict(nets[direction].state_dict())
            train_cfg = TrainConfig(**{**to_dict(cfg.train), "seed": cfg.train.seed + n, "progress": progress})
            trainer = Trainer(train_cfg, cfg.optim, net, RegressionObjective(),
                              cache.batches(cfg.train.batch_size, train_cfg.seed), folder)
            trainer.fit()
            trained = trainer.engine.module
            trained.meta.update({"cache_examples": len(cache)})
            trained.save_pretrained(folder / "net")
            nets[direction] = BridgeNet.from_pretrained(folder / "net")
        record = {"half_bridge": n, "direction": direction, **evaluate_bridge(cfg, nets)}
        history.append(record)
        log.info("half-bridge %d (%s): %s", n, direction, json.dumps({k: v for k, v in record.items()
                                                                     if isinstance(v, float)}))
        atomic_write_json(out / "ipf.json", {"config": to_dict(cfg), "history": history})
    atomic_write_json(out / "ipf.json", {"config": to_dict(cfg), "history": history})
    return history


def _check_handover(cfg: BridgeConfig, net: BridgeNet) -> None:
    """A flow-matching network can stand in for half-bridge 0 only if it was trained on the same chain."""
    meta = net.meta
    mismatched = {key: (meta.get(key), want) for key, want in
                  (("direction", "backward"), ("parameterisation", cfg.parameterisation), ("steps", cfg.steps))
                  if meta.get(key) != want}
    if mismatched:
        raise ValueError(f"{cfg.init_backward} cannot start this bridge: " +
                         ", ".join(f"{k} is {got!r}, the bridge needs {want!r}" for k, (got, want) in
                                   mismatched.items()))


__all__ = ["BridgeConfig", "BridgeEvalConfig", "CACHES", "RegressionCache", "RegressionObjective", "build_cache",
           "coupled_states", "direction_of", "half_bridge_dir", "mean_map", "new_network", "recipe_facts", "run_ipf",
           "simulate", "trajectories_for"]
