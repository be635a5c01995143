"""The step-aware preference model (SPM): s(x, c, t), a PickScore-style scorer whose image tower knows the noise
level of the image it judges.

Architecture (the paper's recipe on CLIP, at the miniature's scale): the image tower embeds the flattened image,
then runs residual MLP blocks with DiT-style adaLN: a sinusoidal embedding of the timestep (the cosine-schedule
time of λ, times 1000, as the core's denoisers take it) gives a shift, a scale and a gate for every block and for
the final norm. The prompt tower is an embedding per prompt (class). The score is
exp(logit_scale) · cos(E_img(x, t), E_txt(c)). With `step_aware = False` the tower ignores t: the "final-image
scorer" of the ablation, trained on clean images only and applied to x0_hat at every step.

Training (`train_spm`, on the one small-fit helper): for a labelled pair (x_a, x_b, c), draw t from the sampling
grid, add the *same* noise to both images, denoise once with the frozen base model to x0_hat, score both at t,
and take the Bradley-Terry cross-entropy against the label (ties 0.5 / 0.5). Accuracy is reported per t.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from data_tools.config import from_dict
from data_tools.pretrained import PretrainedMixin
from data_tools.training.config import OptimConfig
from data_tools.training.small_fit import SmallFitConfig, fit_small, seeded, shuffled_batches
from diffusion.models import sincos_embedding
from diffusion.process import add_noise, cosine_time

from .preference import LabellerConfig, PreferenceLabeller, stroke_crispness

PRETRAINED_KIND = "spo-preference-model"


@dataclass
class SPMConfig:
    image_size: int = 8
    channels: int = 1
    num_prompts: int = 10
    width: int = 128
    depth: int = 3
    embed_dim: int = 64
    step_aware: bool = True  # False: the final-image scorer (t is ignored)


def modulate(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN on feature vectors [B, W] (the DiT's `modulate` is for token sequences [B, N, W])."""
    return h * (1.0 + scale) + shift


class AdaLNBlock(nn.Module):
    """h + (1 + gate) · MLP(modulate(LN(h), shift, scale)), the modulation from the timestep embedding.
    The modulation starts at zero, so at initialisation every block ignores the timestep (a plain residual MLP
    block), and the timestep's influence is learnt from there."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
        self.modulation = nn.Linear(width, 3 * width)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, h: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(t_emb).chunk(3, dim=1)
        return h + (1.0 + gate) * self.mlp(modulate(self.norm(h), shift, scale))


class StepAwarePreferenceModel(PretrainedMixin, nn.Module):
    pretrained_kind = PRETRAINED_KIND

    def __init__(self, config: SPMConfig, meta: dict | None = None):
        super().__init__()
        self.config = config
        self.meta = dict(meta or {})
        w = config.width
        self.stem = nn.Linear(config.channels * config.image_size ** 2, w)
        self.time_embed = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.blocks = nn.ModuleList(AdaLNBlock(w) for _ in range(config.depth))
        self.final_norm = nn.LayerNorm(w, elementwise_affine=False)
        self.final_modulation = nn.Linear(w, 2 * w)
        nn.init.zeros_(self.final_modulation.weight)
        nn.init.zeros_(self.final_modulation.bias)
        self.image_proj = nn.Linear(w, config.embed_dim)
        self.prompt_embed = nn.Embedding(config.num_prompts, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))  # CLIP's learnable temperature

    # pretrained folder
    def pretrained_config(self) -> dict[str, Any]:
        return asdict(self.config)

    @classmethod
    def from_pretrained_config(cls, config: dict[str, Any], meta: dict[str, Any]) -> "StepAwarePreferenceModel":
        return cls(from_dict(SPMConfig, config), meta)

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        c, s = self.config.channels, self.config.image_size
        if images.shape[1] != c:
            raise ValueError(f"the SPM takes {c}-channel images, got {images.shape[1]} channels")
        if images.shape[-1] != s or images.shape[-2] != s:
            images = F.interpolate(images.float(), size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        return images.flatten(1)

    def forward(self, images: torch.Tensor, prompts: torch.Tensor, logsnr: torch.Tensor | float | None = None
                ) -> torch.Tensor:
        """Scores [B] of images [B, C, H, W] in [-1, 1] for prompt indices [B] at logSNR λ ([B] or a scalar; the
        clean end when None or when the model is not step-aware)."""
        b = images.shape[0]
        h = self.stem(self._inputs(images))
        if self.config.step_aware and logsnr is not None:
            lam = torch.as_tensor(logsnr, dtype=torch.float32, device=images.device).expand(b)
            t = 1000.0 * cosine_time(lam)
        else:
            t = torch.zeros(b, device=images.device)
        t_emb = self.time_embed(sincos_embedding(t, self.config.width))
        for block in self.blocks:
            h = block(h, t_emb)
        shift, scale = self.final_modulation(t_emb).chunk(2, dim=1)
        image = F.normalize(self.image_proj(modulate(self.final_norm(h), shift, scale)), dim=1)
        text = F.normalize(self.prompt_embed(prompts.long().to(images.device)), dim=1)
        return self.logit_scale.exp().clamp(max=100.0) * (image * text).sum(dim=1)

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: torch.Tensor, logsnr: torch.Tensor | float | None = None
              ) -> torch.Tensor:
        was = self.training
        self.eval()
        try:
            return self(images, prompts, logsnr)
        finally:
            self.train(was)


def bradley_terry_loss(score_a: torch.Tensor, score_b: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """PickScore's cross-entropy over the two logits with a soft label: P(a preferred) = label (0, 1 or 0.5)."""
    logits = torch.stack([score_a, score_b], dim=1)
    target = torch.stack([label, 1.0 - label], dim=1)
    return -(target * logits.log_softmax(dim=1)).sum(dim=1).mean()


@dataclass
class PreferencePairs:
    """Labelled pairs of images with one prompt each: a [N, C, H, W], b [N, C, H, W], prompts [N], label [N] =
    P(a preferred) in {0, 0.5, 1}, and the hidden aesthetic order (1 if a's hidden score is higher) for diagnosis."""

    a: torch.Tensor
    b: torch.Tensor
    prompts: torch.Tensor
    label: torch.Tensor
    hidden: torch.Tensor

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def subset(self, index: torch.Tensor) -> "PreferencePairs":
        return PreferencePairs(self.a[index], self.b[index], self.prompts[index], self.label[index],
                               self.hidden[index])


def one_step_x0(policy: Any, images: torch.Tensor, cond: Any, logsnr: torch.Tensor, noise: torch.Tensor
                ) -> torch.Tensor:
    """Noise clean images to λ and denoise once with the frozen policy model: the decoded x0_hat, on the CPU."""
    device = policy.device
    x_t = add_noise(images.to(device), noise.to(device), logsnr.to(device))
    with torch.no_grad():
        x0, _ = policy.predict(policy.model, x_t, logsnr.to(device), cond)
    return policy.decode(x0).float().cpu()


@dataclass
class SPMTrainConfig:
    steps: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int | None = 1


def _draw_logsnr(policy: Any, n: int, step_aware: bool, generator: torch.Generator) -> torch.Tensor:
    """λ at which a pair is judged: one of the grid points a candidate can sit at (λ_1 .. λ_N), uniformly; the
    clean end for the final-image scorer, which only ever sees clean images."""
    grid = torch.tensor(policy.grid[1:], dtype=torch.float32)
    if not step_aware:
        return torch.full((n,), float("inf"))
    return grid[torch.randint(len(grid), (n,), generator=generator)]


def _judged_images(policy: Any, pairs: PreferencePairs, logsnr: torch.Tensor, generator: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0_hat of a, x0_hat of b) at λ with the same noise for both; clean images where λ is +inf."""
    clean = torch.isinf(logsnr)
    if bool(clean.all()):
        return pairs.a, pairs.b
    noise = torch.randn(pairs.a.shape, generator=generator)
    cond = pairs.prompts
    cond = policy.condition(cond)
    lam = torch.where(clean, torch.zeros_like(logsnr), logsnr)
    a = one_step_x0(policy, pairs.a, cond, lam, noise)
    b = one_step_x0(policy, pairs.b, cond, lam, noise)
    keep = clean.view(-1, *([1] * (pairs.a.dim() - 1)))
    return torch.where(keep, pairs.a, a), torch.where(keep, pairs.b, b)


def train_spm(policy: Any, pairs: PreferencePairs, config: SPMConfig, train: SPMTrainConfig,
              progress: bool = False) -> StepAwarePreferenceModel:
    """Fit an SPM to labelled pairs with the frozen policy's one-step denoising (see the module docstring)."""
    with seeded(train.seed, train.threads):
        model = StepAwarePreferenceModel(config)
    generator = torch.Generator().manual_seed(train.seed)
    batches = shuffled_batches(len(pairs), train.batch_size, torch.Generator().manual_seed(train.seed + 1))

    def loss_fn(net: nn.Module, step: int) -> dict[str, torch.Tensor]:
        batch = pairs.subset(next(batches))
        lam = _draw_logsnr(policy, len(batch), config.step_aware, generator)
        a, b = _judged_images(policy, batch, lam, generator)
        score_lam = None if not config.step_aware else lam
        loss = bradley_terry_loss(net(a, batch.prompts, score_lam), net(b, batch.prompts, score_lam), batch.label)
        return {"loss": loss}

    fit = SmallFitConfig(steps=train.steps, seed=train.seed, threads=train.threads, progress=progress,
                         desc="step-aware preference model" if config.step_aware else "final-image scorer",
                         optim=OptimConfig(name="adamw", lr=train.lr, weight_decay=train.weight_decay,
                                           betas=(0.9, 0.999), schedule="cosine", warmup_steps=100))
    fit_small(model, loss_fn, fit)
    return model.eval()


@torch.no_grad()
def accuracy_per_step(model: StepAwarePreferenceModel, policy: Any, pairs: PreferencePairs, seed: int = 0
                      ) -> list[dict[str, float]]:
    """At every grid point λ_1 .. λ_N (and on clean images): how often the model's order of the two one-step
    x0_hat agrees with the labellers' (non-tied labels) and with the hidden aesthetic alone."""
    rows = []
    decided = pairs.label != 0.5
    points = [(i + 1, lam) for i, lam in enumerate(policy.grid[1:])] + [(None, float("inf"))]
    for index, lam in points:
        generator = torch.Generator().manual_seed(seed)
        lam_t = torch.full((len(pairs),), lam)
        a, b = _judged_images(policy, pairs, lam_t, generator)
        score_lam = None if math.isinf(lam) else lam_t
        prefer_a = (model(a, pairs.prompts, score_lam) > model(b, pairs.prompts, score_lam)).float()
        rows.append({"step": index, "logsnr": lam,
                     "label_accuracy": float((prefer_a == pairs.label)[decided].float().mean()),
                     "hidden_accuracy": float((prefer_a == pairs.hidden).float().mean())})
    return rows


def load_spm(path: str | Path, map_location: str | torch.device = "cpu") -> StepAwarePreferenceModel:
    return StepAwarePreferenceModel.from_pretrained(path, map_location).eval().requires_grad_(False)


def scorer_fn(model: StepAwarePreferenceModel):
    """(images, prompt ids, λ) -> scores on the CPU, the interface the SPO loop calls; images go to the model's
    device."""
    device = next(model.parameters()).device

    def score(images: torch.Tensor, prompts: torch.Tensor, logsnr: float) -> torch.Tensor:
        return model.score(images.to(device), prompts.to(device), logsnr).float().cpu()

    return score


# ------------------------------------------------------------------------------------------------ the recipe

@dataclass
class SPMRunConfig:
    base: str = "runs/spo/digits-base/model"  # the frozen model whose samples are labelled and which denoises
    output_dir: str = "runs/spo/spm"
    samples_per_prompt: int = 400
    sample_seed: int = 0
    steps: int = 10  # the DDIM grid the SPM is trained and judged on (SPO's)
    val_fraction: float = 0.2
    final_image_scorer: bool = True  # also fit the ablation's scorer (clean images only)
    labeller: LabellerConfig = field(default_factory=LabellerConfig)
    model: SPMConfig = field(default_factory=SPMConfig)  # image size, channels and prompts come from the base
    fit: SPMTrainConfig = field(default_factory=SPMTrainConfig)


def labelled_pairs(images: torch.Tensor, prompts: torch.Tensor, labeller: PreferenceLabeller,
                   generator: torch.Generator) -> PreferencePairs:
    """Random pairs of images that share a prompt, labelled by the labeller."""
    firsts, seconds = [], []
    for prompt in prompts.unique():
        members = torch.nonzero(prompts == prompt)[:, 0]
        members = members[torch.randperm(len(members), generator=generator)]
        half = len(members) // 2
        firsts.append(members[:half])
        seconds.append(members[half:2 * half])
    ia, ib = torch.cat(firsts), torch.cat(seconds)
    a, b = images[ia], images[ib]
    return PreferencePairs(a, b, prompts[ia], labeller.label(a, b, generator),
                           (stroke_crispness(a) > stroke_crispness(b)).float())


def run_spm_train(cfg: SPMRunConfig, progress: bool = True) -> dict[str, Any]:
    """Sample the base, label pairs, fit the step-aware model (and the final-image scorer); report per-step accuracy.

    Writes <output_dir>/step-aware and /final-image (pretrained folders), labeller.json and report.json."""
    from data_tools.files import atomic_write_json
    from diffusion.pipeline import DiffusionPipeline

    from .collect import sample_chain
    from .policy import DenoiserPolicy

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    policy = DenoiserPolicy.from_pipeline(DiffusionPipeline.from_pretrained(cfg.base), cfg.steps)
    num_prompts = len(policy.prompts)
    generator = torch.Generator().manual_seed(cfg.sample_seed)
    prompts = torch.arange(num_prompts).repeat(cfg.samples_per_prompt)
    images = torch.cat([sample_chain(policy, policy.model, prompts[i:i + 500], generator)[1]
                        for i in range(0, len(prompts), 500)])
    labeller = PreferenceLabeller(cfg.labeller).fit(images)
    pairs = labelled_pairs(images, prompts, labeller, generator)
    order = torch.randperm(len(pairs), generator=generator)
    n_val = int(round(cfg.val_fraction * len(pairs)))
    val, train = pairs.subset(order[:n_val]), pairs.subset(order[n_val:])
    decided = train.label != 0.5
    report: dict[str, Any] = {
        "base": cfg.base, "images": int(len(images)), "pairs_train": len(train), "pairs_val": len(val),
        "ties": float((pairs.label == 0.5).float().mean()),
        "labels_agree_with_hidden": float((train.label == train.hidden)[decided].float().mean()),
        "labeller": labeller.to_dict(), "models": {}}
    kinds = [("step-aware", True)] + ([("final-image", False)] if cfg.final_image_scorer else [])
    for name, step_aware in kinds:
        spm_cfg = replace(cfg.model, image_size=policy.shape[-1], channels=policy.shape[0], num_prompts=num_prompts,
                          step_aware=step_aware)
        model = train_spm(policy, train, spm_cfg, cfg.fit, progress=progress)
        accuracy = accuracy_per_step(model, policy, val, seed=cfg.fit.seed)
        model.meta.update({"base": cfg.base, "steps": cfg.steps, "accuracy_per_step": accuracy,
                           "labeller": labeller.to_dict()})
        model.save_pretrained(out / name)
        report["models"][name] = accuracy
    atomic_write_json(out / "labeller.json", labeller.to_dict())
    atomic_write_json(out / "report.json", report)
    return report


__all__ = ["PRETRAINED_KIND", "PreferencePairs", "SPMConfig", "SPMTrainConfig", "StepAwarePreferenceModel",
           "SPMRunConfig", "accuracy_per_step", "bradley_terry_loss", "labelled_pairs", "load_spm", "one_step_x0",
           "run_spm_train", "scorer_fn", "train_spm"]

