"""InstructDiffusion training on the shared trainer: one denoiser for every task, steered by the instruction.

    hdvila instruct train --config instruct/small [key=value ...]

One step: draw λ from the training schedule, noise the target image, and predict the target (ε, x0 or v) from
the noisy target, the source image and the instruction's token states; the loss is the per-sample MSE times
the weighting's weight of λ. Condition dropout (the paper's, not InstructPix2Pix's): per sample r ~ U(0, 1);
r < p_text drops the text (instruction -> ""), p_text <= r < p_text + p_image drops the image (source -> zeros),
never both, so the guidance's ε(I, ∅) and ε(∅, T) branches are trained and ε(∅, ∅) is not. An EMA of the
weights is kept in the objective (saved in checkpoints); validation edits a fixed held-out set with the EMA
model and scores it (instruct.decode), and writes a grid of source | target | output rows.

The run folder follows the other recipes: config.yaml, metrics.jsonl, tensorboard/, checkpoints/, samples/
and model/ (the EMA model as a pretrained folder, see `instruct.pipeline`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data_tools.config import ConfigError, to_dict
from data_tools.ema import EMA
from data_tools.logs import get_logger
from data_tools.training import distributed as D
from data_tools.training.config import OptimConfig, TrainConfig
from data_tools.training.run import run_summary, start_run, step_generator
from data_tools.training.trainer import Trainer
from diffusion.config import ScheduleConfig, WeightingConfig
from diffusion.process import add_noise, target_of
from diffusion.schedules import get_schedule
from diffusion.weighting import loss_weight

from .evaluate import InstructEvalConfig, edit_examples, evaluate, example_rows
from .model import InstructUNet, create_model, get_model_config
from .pipeline import EditConfig, InstructPipeline
from .tasks import (InstructDataConfig, InstructExample, check_config, example_grid, make_eval_set,
                    make_instruct_batches)
from .text import DEFAULT_TEXT_ENCODER, FrozenTextEncoder, load_text_encoder

log = get_logger(__name__)


@dataclass
class InstructConfig:
    model: str = "instruct-small"  # a registered size (instruct.model.INSTRUCT_MODELS)
    model_overrides: dict = field(default_factory=dict)
    text_encoder: str = DEFAULT_TEXT_ENCODER  # frozen (instruct.text): packaged:<name> or hdvila:<folder>
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    weighting: WeightingConfig = field(default_factory=WeightingConfig)
    text_dropout: float = 0.075  # instruction -> "" (the paper's rate)
    image_dropout: float = 0.075  # source -> zeros, never together with the text
    ema_decay: float = 0.999
    output_dir: str = "runs/instruct"
    data: InstructDataConfig = field(default_factory=InstructDataConfig)
    edit: EditConfig = field(default_factory=EditConfig)  # edit.target is what the network learns to predict
    eval: InstructEvalConfig = field(default_factory=InstructEvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self) -> None:
        for name in ("text_dropout", "image_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.text_dropout + self.image_dropout > 1.0:
            raise ConfigError("text_dropout + image_dropout must be <= 1 (a sample never drops both)")
        if self.weighting.name == "importance":
            raise ConfigError("weighting.name: importance weighting is not wired into the instruct recipe; use "
                              "constant, min_snr, soft_min_snr, snr or trunc_snr")
        try:
            get_model_config(self.model, **self.model_overrides)
            check_config(self.data)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def condition_dropout(batch: int, generator: torch.Generator, text_p: float,
                      image_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(drop_text, drop_image) bool [batch] from one r ~ U(0, 1) per sample: text where r < text_p, image where
    text_p <= r < text_p + image_p, so never both."""
    r = torch.rand(batch, generator=generator)
    return r < text_p, (r >= text_p) & (r < text_p + image_p)


def build_model(cfg: InstructConfig, text_encoder: FrozenTextEncoder) -> InstructUNet:
    """The registered size with the run's text encoder (its spec as the encoder resolved it, e.g. an absolute
    HD-VILA folder), its width and the data's image size filled in where model_overrides leave them open."""
    overrides = {"text_encoder": text_encoder.spec, "cross_attention_dim": text_encoder.width,
                 "image_size": cfg.data.size, **cfg.model_overrides}
    model = create_model(cfg.model, **overrides)
    if model.config.image_channels != 3:
        raise ConfigError(f"{cfg.model} works on {model.config.image_channels}-channel latents; the instruct "
                          "recipe trains in RGB pixel space (image_channels: 3)")
    if model.config.image_size != cfg.data.size:
        raise ConfigError(f"model image_size {model.config.image_size} != data.size {cfg.data.size}")
    return model


# ------------------------------------------------------------------------------------------------ objective

class InstructObjective:
    """Weighted denoising loss with condition dropout, EMA after every optimizer step, edit-and-score validation."""

    def __init__(self, cfg: InstructConfig, model: nn.Module, text_encoder: FrozenTextEncoder,
                 eval_examples: list[InstructExample], output_dir: Path):
        self.cfg = cfg
        self.schedule = get_schedule(cfg.schedule.name, **cfg.schedule.params)
        self.text_encoder = text_encoder
        self.ema = EMA(model, cfg.ema_decay)
        self.eval_examples = eval_examples
        self.output_dir = output_dir

    def prepare_batch(self, batch: dict, device: torch.device) -> dict:
        return {"source": batch["source"].to(device), "target": batch["target"].to(device),
                "instruction": list(batch["instruction"]), "task": list(batch["task"])}

    def loss(self, model: nn.Module, batch: dict, step: int) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        x0, source = batch["target"], batch["source"]
        b, device = x0.shape[0], x0.device
        # noise levels, noise and dropout from a generator keyed by (seed, step, rank): resumable, rank-distinct
        generator = step_generator(cfg.train.seed, step)
        logsnr = self.schedule.sample_logsnr(b, generator=generator).to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        drop_text, drop_image = condition_dropout(b, generator, cfg.text_dropout, cfg.image_dropout)
        texts = ["" if drop else text for drop, text in zip(drop_text.tolist(), batch["instruction"])]
        states, mask = self.text_encoder.encode(texts, device)
        source = torch.where(drop_image.to(device).view(-1, 1, 1, 1), torch.zeros_like(source), source)
        prediction = model(add_noise(x0, noise, logsnr), logsnr, source, states, mask)
        regression = target_of(x0, noise, logsnr, cfg.edit.target)
        mse = (prediction.float() - regression.float()).pow(2).flatten(1).mean(dim=1)
        weight = loss_weight(cfg.weighting.name, logsnr, cfg.edit.target, **cfg.weighting.params).float()
        out = {"loss": (weight * mse).mean(), "mse": mse.mean().detach(), "weight": weight.mean().detach(),
               "dropped_text": drop_text.float().mean(), "dropped_image": drop_image.float().mean()}
        tasks = batch["task"]
        for task in sorted(set(tasks)):  # per-task curves, for multi-task vs single-task runs
            rows = torch.tensor([t == task for t in tasks], device=device)
            out[f"mse/{task}"] = mse.detach()[rows].mean()
        return out

    @torch.no_grad()
    def after_step(self, model: nn.Module, step: int) -> None:
        self.ema.follow(model)

    def state_dict(self) -> dict:
        return {"ema": self.ema.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state["ema"])

    def pipeline(self) -> InstructPipeline:
        """The EMA model as an editing pipeline (what run_train exports)."""
        return InstructPipeline(self.ema.module, self.text_encoder, self.cfg.edit, run_config=to_dict(self.cfg))

    @torch.no_grad()
    def validate(self, model: nn.Module, step: int) -> dict[str, float]:
        if not self.eval_examples:
            return {}
        ecfg = self.cfg.eval
        results = evaluate(self.pipeline(), self.eval_examples, steps=ecfg.steps, seed=ecfg.seed,
                           blank_instruction=False, keep_outputs=True)
        if D.is_main() and ecfg.grid_per_task > 0:
            rows = example_rows(self.eval_examples, ecfg.grid_per_task)
            example_grid([self.eval_examples[i] for i in rows], self.output_dir / "samples" / f"step{step:07d}.png",
                         outputs=[results["outputs"][i] for i in rows])
        # a rate with no examples behind it (absent_acc when no named object was absent) is NaN: left out
        return {f"{task}/{key}": value for task, summary in results["instructed"].items()
                for key, value in summary.items() if key != "n" and math.isfinite(value)}


# ------------------------------------------------------------------------------------------------ run

def run_train(cfg: InstructConfig, resume: bool = False) -> dict[str, Any] | None:
    """Train, export the EMA model to output_dir/model, write a final example grid; returns the last record."""
    out = start_run(cfg)
    text_encoder = load_text_encoder(cfg.text_encoder)
    model = build_model(cfg, text_encoder)
    batches = make_instruct_batches(cfg.data, cfg.train.batch_size, cfg.train.seed, D.rank(), D.world_size())
    ecfg = cfg.eval
    examples = (make_eval_set(cfg.data, ecfg.n_per_task, ecfg.split, ecfg.seed, combos=ecfg.combos,
                              phrasing=ecfg.phrasing) if cfg.train.val_every > 0 or ecfg.grid_per_task > 0 else [])
    objective = InstructObjective(cfg, model, text_encoder, examples, out)
    if D.is_main():
        log.info("instruct %s (%.2fM parameters), text %s, tasks %s, target %s, schedule %s, weighting %s",
                 cfg.model, sum(p.numel() for p in model.parameters()) / 1e6, cfg.text_encoder,
                 ",".join(cfg.data.tasks), cfg.edit.target, cfg.schedule.name, cfg.weighting.name)
    trainer = Trainer(cfg.train, cfg.optim, model, objective, batches, out, resume=resume)
    summary = trainer.fit()
    if D.is_main():
        pipeline = objective.pipeline()
        pipeline.save_pretrained(out / "model")
        if examples and ecfg.grid_per_task > 0:
            rows = example_rows(examples, ecfg.grid_per_task)
            chosen = [examples[i] for i in rows]
            example_grid(chosen, out / "samples.png", outputs=edit_examples(pipeline, chosen, steps=ecfg.steps,
                                                                              seed=ecfg.seed))
    D.barrier()
    return run_summary(summary, cfg)


__all__ = ["InstructConfig", "InstructObjective", "build_model", "condition_dropout", "run_train"]
