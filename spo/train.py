"""SPO (and the trajectory-level DPO baseline) on the shared trainer.

    hdvila spo train --config spo/digits [method=trajectory_dpo continue_rule=winner finetune=lora ...]

One optimizer step: draw a batch of prompts; with the current model and no gradient, collect preference pairs
(`spo.collect`: SPO's step-wise resampler, or two full trajectories labelled by their final images); then, for a
random subset of at most `max_pairs` pairs, evaluate the policy (with gradient) and the frozen reference at each
pair's parent, and take the clipped-ratio DPO loss (`spo.steps.clipped_dpo_loss`) on the DDIM η log densities of
the preferred and dispreferred next states. The reference is the base model: a frozen copy for full
fine-tuning, the same network with its LoRA adapters switched off (peft) for `finetune: lora`.

Every denoiser row is counted (`nfe`: sampling, the policy's forward and backward, the reference), so arms are
compared at equal compute; validation scores samples of the live model (`spo.evaluate`) against that count.
The run folder follows the other recipes; model/ holds the fine-tuned (LoRA merged) denoiser as a diffusion
pretrained folder that `hdvila diffusion sample` reads, and lora/ the adapter alone when LoRA was used.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from data_tools.config import ConfigError, to_dict
from data_tools.files import atomic_directory, atomic_write_json
from data_tools.logs import get_logger
from data_tools.training import distributed as D
from data_tools.training.config import OptimConfig, TrainConfig
from data_tools.training.run import run_summary, start_run, step_generator
from data_tools.training.trainer import Trainer

from .collect import Transitions, step_pairs, trajectory_pairs
from .evaluate import PolicyJudge, SPOEvalConfig
from .policy import DenoiserPolicy
from .scorers import load_scorer
from .steps import clipped_dpo_loss, ddim_transition, gaussian_log_prob, transition_kl

log = get_logger(__name__)

METHODS = ("spo", "trajectory_dpo")
CONTINUE_RULES = ("random", "winner")
BACKWARD_COST = 2  # a backward pass counted as two forward passes in the compute budget


BASE_KINDS = ("diffusion", "stable-diffusion")
# peft target regexes (target_modules as a string: a full match over module names) per base kind
DIT_LORA_TARGETS = r".*blocks\.\d+\.(mlp\.0|mlp\.2|ada\.1)"  # the DiT's MLPs and adaLN layers


@dataclass
class LoraSettings:
    rank: int = 4
    alpha: float = 4.0
    targets: Optional[str] = None  # None: the base kind's default (DIT_LORA_TARGETS, or SD's attention projections)


@dataclass
class SPOConfig:
    base: str = "runs/spo/digits-base/model"  # a diffusion pretrained folder (hdvila diffusion train's <run>/model)
    base_kind: str = "diffusion"  # diffusion | stable-diffusion (a local diffusers folder; LoRA only)
    prompts: list = field(default_factory=list)  # stable-diffusion: the training prompts (diffusion: the classes)
    scorer: str = "runs/spo/spm/step-aware"  # a preference-model folder, or a registered scorer (spo.scorers)
    method: str = "spo"  # spo | trajectory_dpo
    continue_rule: str = "random"  # spo: which candidate continues the chain (random | winner)
    k: int = 4  # candidates per parent
    divert_start: int = 2  # steps sampled before pairs are collected
    threshold: float = 0.3  # spo: keep a pair when softmax([s_best, s_worst]) differ by more than this
    dpo_threshold: float = 0.0  # trajectory_dpo: the same filter on the final images (Diffusion-DPO keeps all)
    beta: float = 10.0
    clip: float = 0.1  # ε of the ratio clip
    kl: float = 0.0  # weight of KL(π_θ ‖ π_ref) of the pairs' transitions, per dimension (0: SPO as published)
    steps: int = 10  # DDIM steps
    guidance: Optional[float] = None  # None: the base model's sampler guidance
    eta: float = 1.0
    finetune: str = "full"  # full | lora
    lora: LoraSettings = field(default_factory=LoraSettings)
    max_pairs: int = 256  # pairs per optimizer step (a random subset of those collected)
    output_dir: str = "runs/spo/digits"
    eval: SPOEvalConfig = field(default_factory=SPOEvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # train.batch_size = prompts per step
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.continue_rule not in CONTINUE_RULES:
            raise ConfigError(f"continue_rule must be one of {CONTINUE_RULES}, got {self.continue_rule!r}")
        if self.finetune not in ("full", "lora"):
            raise ConfigError(f"finetune must be 'full' or 'lora', got {self.finetune!r}")
        if self.base_kind not in BASE_KINDS:
            raise ConfigError(f"base_kind must be one of {BASE_KINDS}, got {self.base_kind!r}")
        if self.base_kind == "stable-diffusion" and (self.finetune != "lora" or not self.prompts):
            raise ConfigError("a stable-diffusion base is fine-tuned with finetune: lora and needs prompts")
        if self.k < 2 or self.steps < 1 or not 0 <= self.divert_start < self.steps:
            raise ConfigError(f"need k >= 2, steps >= 1 and 0 <= divert_start < steps; got k={self.k}, "
                              f"steps={self.steps}, divert_start={self.divert_start}")
        if not 0 < self.clip < 1 or self.beta <= 0 or self.eta <= 0 or self.max_pairs < 1 or self.kl < 0:
            raise ConfigError("need 0 < clip < 1, beta > 0, eta > 0, max_pairs >= 1 and kl >= 0")
        if not (0 <= self.threshold < 1 and 0 <= self.dpo_threshold < 1):
            raise ConfigError("threshold and dpo_threshold are softmax-probability margins in [0, 1), got "
                              f"{self.threshold} and {self.dpo_threshold}")


def add_lora(model: nn.Module, settings: LoraSettings, default_targets: str = DIT_LORA_TARGETS) -> nn.Module:
    """The model wrapped by peft with LoRA adapters on `settings.targets` (base weights frozen)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, target_modules=settings.targets or default_targets,
                        lora_dropout=0.0, bias="none")
    return get_peft_model(model, config)


def prompt_batches(num_prompts: int, batch_size: int, seed: int):
    """An epoch factory for the trainer: 100 batches of prompt ids per epoch, drawn from (seed, epoch)."""
    def epoch(index: int):
        generator = torch.Generator().manual_seed(seed * 7919 + index)
        for _ in range(100):
            yield {"prompt_ids": torch.randint(num_prompts, (batch_size,), generator=generator)}

    return epoch


class SPOObjective:
    def __init__(self, cfg: SPOConfig, policy: DenoiserPolicy, scorer, reference: nn.Module | None,
                 judge: PolicyJudge | None):
        self.cfg = cfg
        self.policy = policy
        self.scorer = scorer
        self.reference = reference  # None with LoRA: the reference is the adapter-free network
        self.judge = judge
        self.nfe = 0  # denoiser rows spent so far (sampling + policy forward/backward + reference)
        self.pairs_seen = 0
        self._draws = (-1, 0)  # (step, micro-batches drawn at it): each micro-batch draws its own noise

    def collect(self, net: Any, prompt_ids: torch.Tensor, generator: torch.Generator) -> tuple[Transitions, int]:
        cfg = self.cfg
        if cfg.method == "spo":
            return step_pairs(self.policy, net, self.scorer, prompt_ids, cfg.k, cfg.divert_start, cfg.threshold,
                              cfg.continue_rule, generator)
        return trajectory_pairs(self.policy, net, self.scorer, prompt_ids, cfg.dpo_threshold, generator)

    def _transitions(self, net: Any, pairs: Transitions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """The DDIM η means of `net`'s step from the winner's and the loser's parents, their std, and the rows
        it took."""
        grid = torch.tensor(self.policy.grid, dtype=torch.float64)
        lam, lam_next = grid[pairs.step], grid[pairs.step + 1]
        cond = self.policy.condition(pairs.prompt_ids)
        lam_f = lam.float()
        x0, eps = self.policy.predict(net, pairs.parent_win, lam_f, cond)
        mean_w, std = ddim_transition(x0, eps, lam, lam_next, self.policy.eta)
        rows = len(pairs) * self.policy.rows_per_call
        if pairs.shared_parent:
            mean_l = mean_w
        else:
            x0, eps = self.policy.predict(net, pairs.parent_lose, lam_f, cond)
            mean_l, _ = ddim_transition(x0, eps, lam, lam_next, self.policy.eta)
            rows *= 2
        return mean_w, mean_l, std, rows

    def _reference_transitions(self, model: Any, pairs: Transitions
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        with torch.no_grad():
            if self.reference is not None:
                return self._transitions(self.reference, pairs)
            peft_model = model.module if hasattr(model, "module") else model
            with peft_model.disable_adapter():
                return self._transitions(peft_model, pairs)

    def _generator(self, step: int) -> torch.Generator:
        """The step's generator; micro-batches after the first (grad_accum > 1) draw from shifted seeds."""
        micro = self._draws[1] + 1 if self._draws[0] == step else 0
        self._draws = (step, micro)
        return step_generator(self.cfg.train.seed + 7919 * micro, step)

    def loss(self, model: Any, batch: dict, step: int) -> dict[str, torch.Tensor]:
        """The pairs' clipped DPO loss. `rows` is this step's compute in denoiser rows (its mean over a logging
        window times the window's steps is exact); the running total is `val/nfe` at each validation."""
        generator = self._generator(step)
        live = model.module if hasattr(model, "module") else model
        pairs, rows = self.collect(live, batch["prompt_ids"].cpu(), generator)
        stats = {"pairs_kept": torch.tensor(float(pairs.stats["pairs_kept"])),
                 "keep_rate": torch.tensor(pairs.stats["pairs_kept"] / max(1, pairs.stats["pairs_offered"])),
                 "score_spread": torch.tensor(pairs.stats["score_spread"])}
        if len(pairs) == 0:
            # nothing passed the margin: a zero loss that reaches every trainable weight. The optimizer still
            # steps: with a zero gradient AdamW moves the weights by its momentum and weight decay only.
            self.nfe += rows
            zero = torch.zeros((), device=next(model.parameters()).device)
            for p in model.parameters():
                if p.requires_grad:
                    zero = zero + (p * 0).sum()
            return {"loss": zero, **stats, "rows": torch.tensor(float(rows))}
        if len(pairs) > self.cfg.max_pairs:
            pairs = pairs.subset(torch.randperm(len(pairs), generator=generator)[:self.cfg.max_pairs])
        mean_w, mean_l, std, train_rows = self._transitions(model, pairs)
        ref_mean_w, ref_mean_l, _, ref_rows = self._reference_transitions(model, pairs)
        rows += train_rows * (1 + BACKWARD_COST) + ref_rows
        self.nfe += rows
        self.pairs_seen += len(pairs)
        log_probs = [gaussian_log_prob(x, mean, std) for x, mean in
                     ((pairs.win, mean_w), (pairs.win, ref_mean_w), (pairs.lose, mean_l), (pairs.lose, ref_mean_l))]
        out = clipped_dpo_loss(*log_probs, self.cfg.beta, self.cfg.clip)
        # the KL of the two Gaussian steps from the same parent, which the ratio clip does not bound: it pulls the
        # policy back to the reference where the clip has stopped pushing it
        kl = transition_kl(mean_w, ref_mean_w, std)
        if not pairs.shared_parent:
            kl = (kl + transition_kl(mean_l, ref_mean_l, std)) / 2
        out["kl"] = kl.mean().detach()
        if self.cfg.kl > 0:
            out["loss"] = out["loss"] + self.cfg.kl * kl.mean()
        return {**out, **stats, "rows": torch.tensor(float(rows))}

    def state_dict(self) -> dict:
        return {"nfe": self.nfe, "pairs_seen": self.pairs_seen}

    def load_state_dict(self, state: dict) -> None:
        self.nfe, self.pairs_seen = int(state["nfe"]), int(state["pairs_seen"])

    @torch.no_grad()
    def validate(self, model: Any, step: int) -> dict[str, float]:
        if self.judge is None:
            return {"nfe": float(self.nfe)}
        live = model.module if hasattr(model, "module") else model
        return {**self.judge(self.policy, live), "nfe": float(self.nfe)}


def load_base(cfg: SPOConfig):
    from diffusion.pipeline import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(cfg.base)


def merged_denoiser(model: nn.Module) -> nn.Module:
    """A plain denoiser with any LoRA adapter merged into its weights (the live model is left as it is)."""
    live = getattr(model, "module", model)
    if hasattr(live, "merge_and_unload"):
        return copy.deepcopy(live).merge_and_unload()
    return copy.deepcopy(live)


def save_adapter(peft_model: Any, folder: Path) -> Path:
    """peft's adapter folder (adapter_config.json + adapter_model.safetensors), published as a whole."""
    with atomic_directory(folder) as tmp:
        peft_model.save_pretrained(str(tmp), safe_serialization=True)
    return Path(folder)


def build_policy(cfg: SPOConfig, base: Any = None) -> Any:
    """The base model as a policy (`spo.policy` interface) with its network in policy.model; `base` is the loaded
    diffusion pipeline, if the caller has it."""
    if cfg.base_kind == "stable-diffusion":
        from .stable_diffusion import stable_diffusion_policy

        return stable_diffusion_policy(cfg.base, cfg.prompts, cfg.steps, cfg.guidance, cfg.eta)
    return DenoiserPolicy.from_pipeline(base if base is not None else load_base(cfg), cfg.steps, cfg.guidance,
                                        cfg.eta)


def run_train(cfg: SPOConfig, resume: bool = False) -> dict[str, Any] | None:
    """Fine-tune the base with SPO or the trajectory baseline; exports model/ (a diffusion base) and lora/ (LoRA),
    and writes base_eval.json (the base model's scores on the evaluation samples)."""
    from diffusion.pipeline import DiffusionPipeline

    out = start_run(cfg)
    device = D.pick_device()  # the trainer's; the reference and the preference model live there too
    base = load_base(cfg) if cfg.base_kind == "diffusion" else None
    policy = build_policy(cfg, base)
    if cfg.base_kind == "stable-diffusion":
        policy.pipe.to(device)  # the VAE and the text encoder; the trainer moves the UNet
    # eval.samples 0 (or a Stable Diffusion base, which has no digits to judge): validation logs the count only
    judge = (PolicyJudge(cfg.eval) if cfg.train.val_every > 0 and cfg.eval.samples > 0
             and cfg.base_kind == "diffusion" else None)
    if judge is not None and D.is_main() and not (out / "base_eval.json").exists():
        policy.model.to(device)  # still the untouched base: score it before fine-tuning starts
        atomic_write_json(out / "base_eval.json", judge(policy, policy.model))
    model = policy.model.train().requires_grad_(True)
    reference = None
    if cfg.finetune == "lora":
        from .stable_diffusion import SD_LORA_TARGETS

        model = add_lora(model, cfg.lora, SD_LORA_TARGETS if cfg.base_kind == "stable-diffusion" else DIT_LORA_TARGETS)
    else:
        reference = copy.deepcopy(policy.model).eval().requires_grad_(False).to(device)
    policy.model = model
    objective = SPOObjective(cfg, policy, load_scorer(cfg.scorer, cfg.train.seed, device), reference, judge)
    if D.is_main():
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info("%s on %s: %s fine-tuning (%.3fM trainable), k=%d, divert_start=%d, threshold %.2f, continue %s",
                 cfg.method, cfg.base, cfg.finetune, trainable / 1e6, cfg.k, cfg.divert_start, cfg.threshold,
                 cfg.continue_rule)
    batches = prompt_batches(len(policy.prompts), cfg.train.batch_size, cfg.train.seed)
    trainer = Trainer(cfg.train, cfg.optim, model, objective, batches, out, resume=resume)
    summary = trainer.fit()
    if D.is_main():
        if cfg.base_kind == "diffusion":
            DiffusionPipeline(merged_denoiser(trainer.engine), base.config).save_pretrained(
                out / "model", meta={"fine_tuned_by": cfg.method, "base": cfg.base, "spo_config": to_dict(cfg)})
        if cfg.finetune == "lora":
            save_adapter(trainer.engine.module, out / "lora")
    D.barrier()
    return run_summary(summary, cfg)


__all__ = ["BASE_KINDS", "CONTINUE_RULES", "DIT_LORA_TARGETS", "LoraSettings", "METHODS", "SPOConfig",
           "SPOObjective", "add_lora", "build_policy", "merged_denoiser", "prompt_batches", "run_train",
           "save_adapter"]
