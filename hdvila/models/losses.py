"""Video-text contrastive loss with negatives gathered across ranks.

Every rank computes the same global loss over the gathered [world * B] embeddings. The gather is
differentiable (its backward sums the incoming gradients and returns each rank its own slice), so after the
data-parallel gradient average the parameter gradients equal those of one process holding the whole batch.
"""
from __future__ import annotations

from dataclasses import dataclass

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
                     gather: bool = True, negatives: "QueuedNegatives | None" = None,
                     reversed_video: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE (mean of text-to-video and video-to-text cross-entropy) on L2-normalised embeddings.

    `negatives` adds remembered embeddings of earlier batches as extra columns (constants, no gradient); its
    `exclude` [N, Q] masks the entries that are the same clip as a row's positive.
    `reversed_video` [B, D]: the batch's clips played backwards, extra text-to-video negatives (with gradient),
    as in time-order contrastive training (Bagad et al., "Test of Time", CVPR 2023): a caption must prefer
    its clip to the same frames in reverse, which only the motion tells apart. They have no caption of their
    own, so they add no video-to-text rows."""
    logits = contrastive_logits(video, text, temperature, gather)
    labels = torch.arange(logits.shape[0], device=logits.device)
    t2v, v2t = logits, logits.t()
    if reversed_video is not None:
        gathered_text = all_gather_with_grad(text) if gather else text
        gathered_reversed = all_gather_with_grad(reversed_video) if gather else reversed_video
        t2v = torch.cat([t2v, gathered_text @ gathered_reversed.t() / temperature], dim=1)
    if negatives is not None and negatives.video.shape[0]:
        if gather:
            video, text = all_gather_with_grad(video), all_gather_with_grad(text)
        extra_t2v = (text @ negatives.video.t() / temperature).masked_fill(negatives.exclude, float("-inf"))
        extra_v2t = (video @ negatives.text.t() / temperature).masked_fill(negatives.exclude, float("-inf"))
        t2v, v2t = torch.cat([t2v, extra_t2v], dim=1), torch.cat([v2t, extra_v2t], dim=1)
    return 0.5 * (F.cross_entropy(t2v, labels) + F.cross_entropy(v2t, labels))


@dataclass
class QueuedNegatives:
    """Embeddings remembered from earlier batches: video [Q, D], text [Q, D], exclude [N, Q] (True = same clip
    as row n's positive, so not a negative)."""

    video: torch.Tensor
    text: torch.Tensor
    exclude: torch.Tensor


class NegativeQueue:
    """A first-in-first-out memory of the last `size` (video, text) embedding pairs and their clip keys.

    Batch-16 contrastive training on a corpus whose clips differ in a few attributes is solved by the easiest
    ones (in-batch negatives rarely share them); remembered negatives bring clips that differ in one attribute
    alone into every step. The entries are detached (a memory bank, no momentum encoder)."""

    def __init__(self, size: int):
        if size < 0:
            raise ValueError(f"negative queue size must be >= 0, got {size}")
        self.size = size
        self.video: torch.Tensor | None = None
        self.text: torch.Tensor | None = None
        self.keys: list[str] = []

    def negatives(self, keys: list[str], device: torch.device) -> QueuedNegatives | None:
        if self.video is None or not self.keys:
            return None
        exclude = torch.tensor([[k == q for q in self.keys] for k in keys], dtype=torch.bool, device=device)
        return QueuedNegatives(self.video.to(device), self.text.to(device), exclude)

    @torch.no_grad()
    def push(self, video: torch.Tensor, text: torch.Tensor, keys: list[str]) -> None:
        video, text = video.detach().float().cpu(), text.detach().float().cpu()
        if self.video is not None:
            video, text = torch.cat([video, self.video]), torch.cat([text, self.text])
            keys = list(keys) + self.keys
        self.video, self.text, self.keys = video[:self.size], text[:self.size], list(keys[:self.size])

    def state_dict(self) -> dict:
        return {"video": self.video, "text": self.text, "keys": list(self.keys)}

    def load_state_dict(self, state: dict) -> None:
        self.video, self.text, self.keys = state["video"], state["text"], list(state["keys"])
