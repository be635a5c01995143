"""Video-text contrastive loss with negatives gathered across ranks.

Every rank computes the same global loss over the gathered [world * B] embeddings. The gather is
differentiable (its backward sums the incoming gradients and returns each rank its own slice), so after the
data-parallel gradient average the parameter gradients equal those of one process holding the whole batch.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank along dim 0, keeping the autograd graph to every piece."""
    if world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def contrastive_logits(video: torch.Tensor, text: torch.Tensor, temperature: float,
                       gather: bool = True) -> torch.Tensor:
    """[N, N] text-to-video logits over the (gathered) batch; row i's positive is column i."""
    if gather:
        video, text = all_gather_with_grad(video), all_gather_with_grad(text)
    return text @ video.t() / temperature


def contrastive_loss(video: torch.Tensor, text: torch.Tensor, temperature: float = 0.05,
                     gather: bool = True) -> torch.Tensor:
    """Symmetric InfoNCE (mean of text-to-video and video-to-text cross-entropy) on L2-normalised embeddings."""
    logits = contrastive_logits(video, text, temperature, gather)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
