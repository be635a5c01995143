"""HD-VILA: hybrid video encoder + BERT text encoder (dual encoder, stage 1) + cross-modal layers (stage 2).

    video_emb, visual_tokens = model.encode_video(batch["hr"], batch["lr"])
    text_emb, text_states = model.encode_text(batch["input_ids"], batch["attention_mask"])
    seq_states, pooled = model.cross_forward(text_states, batch["attention_mask"], visual_tokens)
    losses = model.compute_losses(batch, objectives=("vtc", "mlm"))

Cross-modal outputs are computed per segment and aggregated over segments with log-sum-exp (hdvila.md 1.3).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from data_tools.config import to_dict
from data_tools.pretrained import (DEFAULT_WEIGHTS, LEGACY_FORMATS, ExtraFile, PretrainedFolder,
                                   PretrainedMixin)

from .config import HDVILAConfig, config_from_dict
from .losses import QueuedNegatives, contrastive_loss
from .mlm import IGNORE_INDEX, mask_tokens
from .text import CrossModalEncoder, MLMHead, TextEncoder, bert_config, init_bert_weights, load_hf_bert
from .video_encoder import HybridVideoEncoder

OBJECTIVES = ("vtc", "mlm", "vtm")

# Top-level modules by training stage: stage 1 trains the dual encoder (contrastive), stage 2 freezes it
# and trains the cross-modal layers (visual embeddings, layers, pooler2) and the heads.
STAGE1_MODULES = ("video", "text", "v_proj", "t_proj")
STAGE2_MODULES = ("cross",)
HEAD_MODULES = ("mlm_head", "vtm_head")
PARTS: dict[str, tuple[str, ...]] = {
    "video": ("video",),
    "text": ("text",),
    "projections": ("v_proj", "t_proj"),
    "dual": STAGE1_MODULES,
    "stage1": STAGE1_MODULES,
    "cross": STAGE2_MODULES,
    "stage2": STAGE2_MODULES,
    "heads": HEAD_MODULES,
    "mlm_head": ("mlm_head",),
    "vtm_head": ("vtm_head",),
    "full": STAGE1_MODULES + STAGE2_MODULES + HEAD_MODULES,
}

PRETRAINED_KIND = "hdvila"
TOKENIZER_DIR = "tokenizer"  # the tokenizer folder inside a pretrained folder


def aggregate_segments(x: torch.Tensor) -> torch.Tensor:
    """[B, S, ...] -> [B, ...] by log-sum-exp over segments (a soft maximum)."""
    return torch.logsumexp(x, dim=1)


def sample_hard_negatives(logits: torch.Tensor, generator: torch.Generator | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """From [B, B] text-to-video logits (positives on the diagonal): a negative video per text and a negative
    text per video, drawn with probability softmax(logits) over the non-positive entries."""
    b = logits.shape[0]
    if b < 2:
        raise ValueError("video-text matching needs at least 2 pairs per batch to find negatives")
    device = generator.device if generator is not None else logits.device
    scores = logits.detach().float().to(device)
    scores = scores.masked_fill(torch.eye(b, dtype=torch.bool, device=device), float("-inf"))
    video_for_text = torch.multinomial(scores.softmax(dim=1), 1, generator=generator).squeeze(1)
    text_for_video = torch.multinomial(scores.t().softmax(dim=1), 1, generator=generator).squeeze(1)
    return video_for_text.to(logits.device), text_for_video.to(logits.device)


class HDVILA(PretrainedMixin, nn.Module):
    pretrained_kind = PRETRAINED_KIND

    def __init__(self, config: HDVILAConfig, load_weights: bool = True):
        """`load_weights=False` skips the local backbone/BERT weights named in the config (from_pretrained
        overwrites every tensor anyway, and the files may not exist where a saved model is loaded)."""
        super().__init__()
        self.config = config
        self._stage1_frozen = False
        video_cfg = config.video
        if not load_weights:
            video_cfg = dataclasses.replace(video_cfg, pretrained_path=None, lr_pretrained_path=None)
        text_cfg = config.text
        bert = bert_config(text_cfg, config.pad_id)
        hidden = text_cfg.hidden

        self.video = HybridVideoEncoder(video_cfg)
        self.text = TextEncoder(text_cfg, bert)
        self.v_proj = nn.Linear(video_cfg.d, config.embed_dim)
        self.t_proj = nn.Linear(hidden, config.embed_dim)
        self.cross = CrossModalEncoder(text_cfg, bert, video_cfg.d)
        self.mlm_head = MLMHead(hidden, text_cfg.vocab_size, bert.layer_norm_eps)
        self.vtm_head = nn.Linear(hidden, 2) if config.vtm else None

        for module in (self.text, self.cross, self.mlm_head, self.v_proj, self.t_proj, self.vtm_head):
            if module is not None:
                module.apply(init_bert_weights)
        if load_weights and text_cfg.init_from:
            load_hf_bert(text_cfg.init_from, self.text, self.cross)
        self.mlm_head.clone_decoder_from(self.text.embeddings.word_embeddings)

    # ------------------------------------------------------------------------------------------------
    # encoders

    def _encode_video(self, hr: torch.Tensor, lr: torch.Tensor, with_reversed: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """-> (embeddings, tokens, grid); `with_reversed` appends the clips played backwards to both."""
        tokens, grid = self.video(hr, lr, with_reversed=with_reversed)
        emb = F.normalize(self.v_proj(tokens.mean(dim=(1, 2))), dim=-1)
        return emb, tokens, grid

    def encode_video(self, hr: torch.Tensor, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 hr [B, S, H, W, 3], lr [B, S, T-1, h, w, 3] -> (L2-normalised [B, D], tokens [B, S, N, d])."""
        emb, tokens, _ = self._encode_video(hr, lr)
        return emb, tokens

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (L2-normalised [B, D], text states [B, L, hidden])."""
        states = self.text(input_ids, attention_mask)
        emb = F.normalize(self.t_proj(self.text.pool(states, attention_mask)), dim=-1)
        return emb, states

    def default_grid(self, num_tokens: int) -> tuple[int, int]:
        grid = self.video.grid
        if grid[0] * grid[1] != num_tokens:
            raise ValueError(f"{num_tokens} visual tokens do not match the configured {grid[0]}x{grid[1]} grid; "
                             "pass grid=(rows, cols)")
        return grid

    def cross_forward(self, text_states: torch.Tensor, attention_mask: torch.Tensor, visual_tokens: torch.Tensor,
                      grid: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """text [B, L, h], mask [B, L], visual [B, S, N, d] -> (seq states [B, L, h], pooled [B, h]),
        each computed per segment and log-sum-exp aggregated over the S segments."""
        b, s, n, _ = visual_tokens.shape
        length = text_states.shape[1]
        grid = grid or self.default_grid(n)
        text = text_states.unsqueeze(1).expand(b, s, *text_states.shape[1:]).flatten(0, 1)
        mask = attention_mask.unsqueeze(1).expand(b, s, length).flatten(0, 1)
        states, pooled = self.cross(text, mask, visual_tokens.flatten(0, 1), grid)
        seq = states[:, :length].unflatten(0, (b, s))
        return aggregate_segments(seq), aggregate_segments(pooled.unflatten(0, (b, s)))

    def mlm_logits(self, seq_states: torch.Tensor) -> torch.Tensor:
        return self.mlm_head(seq_states)

    def vtm_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.vtm_head is None:
            raise RuntimeError("this model has no video-text matching head (config.vtm: false)")
        return self.vtm_head(pooled)

    # ------------------------------------------------------------------------------------------------
    # objectives

    def masked_logits(self, seq: torch.Tensor, labels: torch.Tensor, static: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Vocabulary logits and labels for the MLM loss. Gathered: the M masked positions only ([M, vocab]),
        the cheapest on a CPU. Static: every position ([B * L, vocab], labels -100 where unmasked), which
        the loss ignores: the same loss and gradients without the data-dependent gather, which costs a
        device-to-host wait and a compiled-graph break each step (the extra projection is about 0.3% of the
        paper model's FLOPs)."""
        if static:
            return self.mlm_logits(seq).flatten(0, 1), labels.flatten()
        picked = labels != IGNORE_INDEX
        return self.mlm_logits(seq[picked]), labels[picked]

    def forward(self, batch: dict, objectives: Iterable[str] = ("vtc",),
                generator: torch.Generator | None = None, reversed_negatives: bool = False
                ) -> dict[str, torch.Tensor]:
        """What the objectives need:
        - vtc: video_emb [B, D], text_emb [B, D]; with `reversed_negatives` also reversed_video_emb [B, D],
          the same clips played backwards (their motion runs the other way, so no caption fits them);
        - mlm: mlm_logits [M, vocab] and mlm_labels [M] at the M masked positions only (the vocabulary
          projection is the costly part, so unmasked positions are never projected); on a GPU or under
          torch.compile every position, labelled -100 where unmasked (`masked_logits`);
        - vtm: vtm_logits [3B, 2], vtm_labels [3B]: B positives, then B hard-negative videos per text,
          then B hard-negative texts per video, mined within this rank's batch (the cross-modal pass
          needs the negatives' visual tokens, which only this rank holds).
        `visual_tokens` [B, S, N, d] always comes back too.
        """
        objectives = set(objectives)
        unknown = objectives - set(OBJECTIVES)
        if unknown:
            raise ValueError(f"unknown objectives {sorted(unknown)}; choose from {OBJECTIVES}")
        ids, mask = batch["input_ids"], batch["attention_mask"]
        reversed_too = reversed_negatives and "vtc" in objectives
        video_emb, tokens, grid = self._encode_video(batch["hr"], batch["lr"], with_reversed=reversed_too)
        out: dict[str, torch.Tensor] = {}
        if reversed_too:
            b = ids.shape[0]
            out["reversed_video_emb"], video_emb, tokens = video_emb[b:], video_emb[:b], tokens[:b]
        out["visual_tokens"] = tokens
        if objectives & {"vtc", "vtm"}:
            text_emb, text_states = self.encode_text(ids, mask)
            out.update(video_emb=video_emb, text_emb=text_emb)
        if "mlm" in objectives:
            cfg = self.config
            masked_ids, labels = mask_tokens(ids, mask, cfg.special_ids, cfg.mask_id, cfg.text.vocab_size,
                                             cfg.mlm_prob, generator)
            seq, _ = self.cross_forward(self.text(masked_ids, mask), mask, tokens, grid)
            logits, labels = self.masked_logits(seq, labels, static=seq.is_cuda or torch.compiler.is_compiling())
            out.update(mlm_logits=logits, mlm_labels=labels, mlm_input_ids=masked_ids)
        if "vtm" in objectives:
            logits = text_emb @ video_emb.t() / self.config.temperature
            neg_video, neg_text = sample_hard_negatives(logits, generator)
            b = ids.shape[0]
            texts = torch.cat([text_states, text_states, text_states[neg_text]])
            masks = torch.cat([mask, mask, mask[neg_text]])
            visual = torch.cat([tokens, tokens[neg_video], tokens])
            _, pooled = self.cross_forward(texts, masks, visual, grid)
            labels = torch.cat([torch.ones(b, dtype=torch.long), torch.zeros(2 * b, dtype=torch.long)])
            out.update(vtm_logits=self.vtm_logits(pooled), vtm_labels=labels.to(pooled.device))
        return out

    def losses(self, outputs: dict[str, torch.Tensor], temperature: float | None = None,
               negatives: QueuedNegatives | None = None) -> dict[str, torch.Tensor]:
        """Loss per objective present in `outputs`, and "loss": their sum weighted by config.loss_weights.
        `negatives`: remembered embeddings of earlier batches, extra contrastive negatives."""
        temperature = self.config.temperature if temperature is None else temperature
        result: dict[str, torch.Tensor] = {}
        if "video_emb" in outputs and "text_emb" in outputs:
            result["vtc"] = contrastive_loss(outputs["video_emb"], outputs["text_emb"], temperature,
                                             negatives=negatives, reversed_video=outputs.get("reversed_video_emb"))
        if "mlm_logits" in outputs:
            logits, labels = outputs["mlm_logits"], outputs["mlm_labels"]
            # mean over the masked positions (-100 rows add 0); nothing masked gives a zero loss on the graph
            total = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
            result["mlm"] = total / (labels != IGNORE_INDEX).sum().clamp(min=1)
        if "vtm_logits" in outputs:
            result["vtm"] = F.cross_entropy(outputs["vtm_logits"].float(), outputs["vtm_labels"])
        weights = self.config.loss_weights
        result["loss"] = sum(getattr(weights, name) * value for name, value in result.items())
        return result

    def compute_losses(self, batch: dict, objectives: Iterable[str] = ("vtc",), temperature: float | None = None,
                       generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        objectives = tuple(objectives)
        outputs = self(batch, objectives, generator=generator)
        if "vtc" not in objectives:  # vtm also produces the embeddings; only score what was asked for
            outputs.pop("video_emb", None)
            outputs.pop("text_emb", None)
        return self.losses(outputs, temperature)

    # ------------------------------------------------------------------------------------------------
    # training stages, parameter accounting

    def part_parameters(self, part: str) -> list[tuple[str, nn.Parameter]]:
        if part not in PARTS:
            raise ValueError(f"unknown part {part!r}; choose from {sorted(PARTS)}")
        prefixes = tuple(m + "." for m in PARTS[part])
        return [(n, p) for n, p in self.named_parameters() if n.startswith(prefixes)]

    def num_parameters(self, part: str = "full", trainable_only: bool = False) -> int:
        """Parameter count of a part: "dual"/"stage1" (video, text encoder, projections), "cross"/"stage2",
        "heads", "video", "text", "projections", "mlm_head", "vtm_head" or "full". Works on the meta device."""
        return sum(p.numel() for _, p in self.part_parameters(part) if p.requires_grad or not trainable_only)

    def freeze_stage1(self) -> None:
        """Stage-2 recipe: freeze the dual encoder (both CNNs, grid projections, temporal Transformer, text
        embeddings and layers, pooler, projections); they also stay in eval mode (BatchNorm statistics and
        dropout fixed), so the frozen part acts as a fixed feature extractor."""
        for _, p in self.part_parameters("stage1"):
            p.requires_grad_(False)
        self._stage1_frozen = True
        self.train(self.training)

    def train(self, mode: bool = True) -> HDVILA:
        super().train(mode)
        if mode:
            if self._stage1_frozen:
                for name in STAGE1_MODULES:
                    getattr(self, name).eval()
            if self.config.video.norm_eval:
                for module in self.modules():
                    if isinstance(module, _BatchNorm):
                        module.eval()
        return self

    # ------------------------------------------------------------------------------------------------
    # export

    def pretrained_config(self) -> dict[str, Any]:
        return to_dict(self.config)

    @classmethod
    def from_pretrained_config(cls, config: dict[str, Any], meta: dict[str, Any]) -> HDVILA:
        # the local backbone/BERT files the config names are not needed: the folder's weights replace them
        return cls(config_from_dict(config), load_weights=False)

    def save_pretrained(self, directory: str | os.PathLike, tokenizer: str | os.PathLike | bool | None = None, *,
                        meta: Mapping[str, Any] | None = None, extra_files: Mapping[str, ExtraFile] | None = None,
                        dtype: torch.dtype | None = None) -> Path:
        """A pretrained folder (data_tools.pretrained: config.json, model.safetensors) with tokenizer/ (a copy of
        `tokenizer`, default the committed one; False for none) and any `extra_files` (name -> text, bytes or
        a file), written as a whole: readers see the old folder or the complete new one."""
        from data_tools.tokenizer import DEFAULT_TOKENIZER_DIR, load_tokenizer

        files: dict[str, ExtraFile] = dict(extra_files or {})
        if tokenizer is not False:
            source = DEFAULT_TOKENIZER_DIR if tokenizer in (None, True) else tokenizer
            loaded = load_tokenizer(source)
            if loaded.vocab_size != self.config.text.vocab_size:
                raise ValueError(f"tokenizer {source} has {loaded.vocab_size} tokens, the model "
                                 f"{self.config.text.vocab_size}; pass the model's tokenizer folder (or tokenizer=False)")
            # the tokenizer's own files only (tokenizer.json, vocab.txt), never what sits beside them (weights)
            files[TOKENIZER_DIR] = loaded.save
        return super().save_pretrained(directory, meta=meta, extra_files=files, dtype=dtype)


# ------------------------------------------------------------------------------------------------------
# folders written before the shared pretrained format: config.yaml + model.safetensors [+ tokenizer/,
# inference.yaml], no checksums

LEGACY_CONFIG_FILE = "config.yaml"
LEGACY_WEIGHTS_FILE = "model.safetensors"
LEGACY_EXTRA_FILES = (TOKENIZER_DIR, "inference.yaml")  # inference.yaml: hdvila.encoder.INFERENCE_FILE


def read_legacy_folder(path: Path) -> PretrainedFolder | None:
    """The old HD-VILA export layout, or None when `path` is not one (another package's old layout, say)."""
    config_path, weights_path = path / LEGACY_CONFIG_FILE, path / LEGACY_WEIGHTS_FILE
    if not (config_path.is_file() and weights_path.is_file()):
        return None
    try:
        data = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or not {"video", "text", "embed_dim"} <= set(data):
        return None
    try:
        config = to_dict(config_from_dict(data))
    except ValueError:  # ConfigError included: not an HD-VILA config after all
        return None
    files = [name for name in LEGACY_EXTRA_FILES if (path / name).exists()]
    return PretrainedFolder(path, PRETRAINED_KIND, config, {}, {DEFAULT_WEIGHTS: weights_path},
                            {DEFAULT_WEIGHTS: None}, files)


LEGACY_FORMATS.register("hdvila-v0", read_legacy_folder)
