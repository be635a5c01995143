"""Tiny models, objectives, deterministic data and the worker entry point the trainer tests launch.

    python tests/dist_helpers.py train --out DIR [--max-steps N] [--save-every K] [--resume] ...
    torchrun --standalone --nproc_per_node 2 tests/dist_helpers.py equiv --out DIR --stages 0 1 2
    deepspeed --num_gpus 2 tests/dist_helpers.py train --out DIR --resume ...

Same command alone, under torchrun and under the deepspeed launcher (which appends --local_rank=K).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import zlib
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from hdvila.models.losses import contrastive_loss  # noqa: E402

VIDEO_DIM, TEXT_DIM, EMBED_DIM = 12, 10, 8


class Tower(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, 16)
        self.norm = nn.LayerNorm(16)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(16, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(F.gelu(self.norm(self.fc1(x)))))


class DualEncoder(nn.Module):
    """Two MLP towers with L2-normalised outputs: the smallest video-text contrastive model."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.video = Tower(VIDEO_DIM, EMBED_DIM, dropout)
        self.text = Tower(TEXT_DIM, EMBED_DIM, dropout)

    def forward(self, video: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.video(video).float(), dim=-1), F.normalize(self.text(text).float(), dim=-1)


def make_dual_encoder(seed: int, dropout: float = 0.0) -> DualEncoder:
    torch.manual_seed(seed)
    return DualEncoder(dropout)


class ContrastiveObjective:
    """Symmetric InfoNCE over negatives gathered from every rank; logs the two directions too."""

    def __init__(self, temperature: float = 0.1):
        self.temperature = temperature

    def loss(self, model: nn.Module, batch: dict, step: int) -> dict[str, torch.Tensor]:
        video, text = model(batch["video"], batch["text"])
        loss = contrastive_loss(video, text, self.temperature)
        return {"loss": loss, "align": (video * text).sum(-1).mean()}


class Regressor(nn.Module):
    """A small MLP with a LayerNorm, a frozen embedding and a `head`, for optimiser and loop tests."""

    def __init__(self, in_dim: int = 8, out_dim: int = 4):
        super().__init__()
        self.frozen = nn.Embedding(3, in_dim)
        self.frozen.weight.requires_grad_(False)
        self.body = nn.Sequential(nn.Linear(in_dim, 32), nn.LayerNorm(32), nn.GELU())
        self.head = nn.Linear(32, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x + self.frozen.weight[0]))


class MSEObjective:
    """Mean squared error (a per-sample mean, so accumulation equals a bigger batch) plus a validation hook."""

    def __init__(self, val_batch: dict[str, torch.Tensor] | None = None):
        self.val_batch = val_batch
        self.validated_at: list[int] = []

    def loss(self, model: nn.Module, batch: dict, step: int) -> dict[str, torch.Tensor]:
        pred = model(batch["x"]).float()
        mse = F.mse_loss(pred, batch["y"])
        return {"loss": mse, "mae": (pred - batch["y"]).abs().mean().detach()}

    def validate(self, model: nn.Module, step: int) -> dict[str, float]:
        self.validated_at.append(step)
        batch = self.val_batch
        return {"mse": float(F.mse_loss(model(batch["x"]).float(), batch["y"]))}


def regression_batches(num_batches: int, batch_size: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Samples (drawn with `seed`) of one fixed linear-plus-tanh target the Regressor can fit."""
    w = torch.randn(8, 4, generator=torch.Generator().manual_seed(1234))
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(num_batches):
        x = torch.randn(batch_size, 8, generator=gen)
        batches.append({"x": x, "y": torch.tanh(x @ w)})
    return batches


def pair_batch(seed: int, index: int, batch_size: int) -> dict[str, torch.Tensor]:
    """Paired (video, text) features sharing a latent, so the contrastive loss can fall."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{index}".encode()))
    latent = torch.randn(batch_size, 6, generator=gen)
    video_map = torch.randn(6, VIDEO_DIM, generator=torch.Generator().manual_seed(seed))
    text_map = torch.randn(6, TEXT_DIM, generator=torch.Generator().manual_seed(seed + 1))
    noise = 0.1
    return {
        "video": latent @ video_map + noise * torch.randn(batch_size, VIDEO_DIM, generator=gen),
        "text": latent @ text_map + noise * torch.randn(batch_size, TEXT_DIM, generator=gen),
    }


class SyntheticPairs:
    """A finite, deterministic per-epoch stream of batches for one rank; `set_epoch` changes the draw."""

    def __init__(self, batches_per_epoch: int, batch_size: int, seed: int = 0, rank: int = 0):
        self.batches_per_epoch, self.batch_size, self.seed, self.rank = batches_per_epoch, batch_size, seed, rank
        self.epoch = 0
        self.epochs_set: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.epochs_set.append(epoch)

    def __iter__(self):
        for i in range(self.batches_per_epoch):
            yield pair_batch(self.seed, (self.epoch * 1000 + i) * 100 + self.rank, self.batch_size)


class ShuffledPairs(torch.utils.data.Dataset):
    """A map-style dataset for a DataLoader(shuffle=True): its order comes from torch's global generator."""

    def __init__(self, size: int, seed: int = 0):
        self.data = pair_batch(seed, 999, size)

    def __len__(self) -> int:
        return self.data["video"].shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.data.items()}


def train_main(args: argparse.Namespace) -> None:
    from data_tools.training import OptimConfig, TrainConfig, Trainer
    from data_tools.training import distributed as D

    class KillableTrainer(Trainer):
        def after_checkpoint(self, step: int, path: Path) -> None:
            if args.hang_after_checkpoint and step == args.hang_after_checkpoint:
                (Path(args.out) / f"checkpoint_done_{self.rank}").write_text(str(step))
                # The test SIGKILLs us here. torchrun starts ranks in their own sessions, so a kill of the
                # launcher's group can miss them: a rank also leaves once its launcher is gone.
                launcher = os.getppid()
                deadline = time.time() + 600
                while os.getppid() == launcher and time.time() < deadline:
                    time.sleep(0.2)
                os._exit(1)

    cfg = TrainConfig(max_steps=args.max_steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
                      seed=args.seed, save_every=args.save_every, log_every=1, precision=args.precision,
                      zero_stage=args.zero, deterministic=args.deterministic, progress=False, grad_clip=1.0)
    optim = OptimConfig(lr=3e-3, warmup_steps=2, schedule="cosine", weight_decay=0.01)
    model = make_dual_encoder(args.seed, dropout=0.1)
    D.init_distributed()
    if args.loader == "dataloader":
        data = torch.utils.data.DataLoader(ShuffledPairs(5 * args.batch_size, args.seed),
                                           batch_size=args.batch_size, shuffle=True)
        epoch_setter = None
    else:
        data = SyntheticPairs(5, args.batch_size, args.seed, D.rank())
        epoch_setter = data.set_epoch
    trainer = KillableTrainer(cfg, optim, model, ContrastiveObjective(), data, args.out,
                              epoch_setter=epoch_setter, resume=args.resume)
    trainer.fit()


def equiv_main(args: argparse.Namespace) -> None:
    """One optimizer step per ZeRO stage on this rank's slice of a global batch; rank 0 saves loss/grads/params."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_grad

    from data_tools.training import OptimConfig, TrainConfig, Trainer
    from data_tools.training import distributed as D

    D.init_distributed()
    rank, world = D.rank(), D.world_size()
    full = pair_batch(args.seed, 0, args.batch_size * world)
    local = {k: v[rank * args.batch_size:(rank + 1) * args.batch_size] for k, v in full.items()}
    for stage in args.stages:
        cfg = TrainConfig(max_steps=1, batch_size=args.batch_size, zero_stage=stage, grad_clip=0.0,
                          save_at_end=False, progress=False, seed=args.seed)
        optim = OptimConfig(name="sgd", lr=0.5, weight_decay=0.01, schedule="constant")
        trainer = Trainer(cfg, optim, make_dual_encoder(args.seed), ContrastiveObjective(), [local],
                          Path(args.out) / f"stage{stage}")
        engine = trainer.engine
        out = trainer.objective.loss(engine, local, 0)
        engine.backward(out["loss"])
        named = list(engine.module.named_parameters())
        grads = {n: safe_get_full_grad(p).detach().clone().float() for n, p in named}
        engine.step()
        params = {}
        for n, p in named:
            full_param = safe_get_full_fp32_param(p)
            params[n] = (full_param if full_param is not None else p).detach().clone().float()
        if rank == 0:
            torch.save({"loss": out["loss"].detach().float(), "grads": grads, "params": params,
                        "world_size": world, "optimizer": type(engine.optimizer).__name__},
                       Path(args.out) / f"equiv_stage{stage}.pt")
        trainer.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["train", "equiv"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=10)
    parser.add_argument("--save-every", type=int, default=0)
    parser.add_argument("--zero", type=int, default=None)
    parser.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--loader", choices=["synthetic", "dataloader"], default="synthetic")
    parser.add_argument("--deterministic", action="store_true")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--hang-after-checkpoint", type=int, default=0)
    args, _ = parser.parse_known_args(argv)  # the deepspeed launcher adds --local_rank=K
    from data_tools.logs import setup_logging

    setup_logging("WARNING")
    from data_tools.training.distributed import shutdown_distributed

    {"train": train_main, "equiv": equiv_main}[args.command](args)
    shutdown_distributed()


if __name__ == "__main__":
    main()
