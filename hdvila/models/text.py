"""Text encoder (first BERT layers), cross-modal Transformer (the remaining layers) and the text heads.

Built from transformers' BertEmbeddings/BertLayer so a local HF BERT checkpoint maps onto it one to one
(`load_hf_bert`). Layers get an additive float mask [B, 1, 1, L] and run with SDPA attention.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertEmbeddings, BertLayer

from .config import TextConfig

log = logging.getLogger(__name__)


def bert_config(cfg: TextConfig, pad_id: int) -> BertConfig:
    config = BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden, num_hidden_layers=cfg.text_layers + cfg.cross_layers,
        num_attention_heads=cfg.heads, intermediate_size=cfg.intermediate, hidden_act="gelu",
        hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
        max_position_embeddings=cfg.max_len, type_vocab_size=cfg.type_vocab_size, pad_token_id=pad_id,
    )
    config._attn_implementation = "sdpa"
    return config


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, L] 1/0 -> [B, 1, 1, L] with 0 for kept keys and the dtype's minimum for padding."""
    keep = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - keep) * torch.finfo(dtype).min


def run_layers(layers: nn.ModuleList, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = additive_mask(attention_mask, hidden.dtype)
    for layer in layers:
        hidden = layer(hidden, mask)
    return hidden


def init_bert_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT's initialisation: normal(0, 0.02) weights, zero biases, unit LayerNorms, zero padding rows."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class Pooler(nn.Module):
    """dense + tanh on one vector per sequence (named like HF's pooler so its weights load)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.activation = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(x))


class TextEncoder(nn.Module):
    """BERT embeddings + the first `text_layers` layers; pooled = masked mean -> dense -> tanh."""

    def __init__(self, cfg: TextConfig, bert: BertConfig):
        super().__init__()
        self.embeddings = BertEmbeddings(bert)
        self.layers = nn.ModuleList(BertLayer(bert, layer_idx=i) for i in range(cfg.text_layers))
        self.pooler = Pooler(cfg.hidden)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return run_layers(self.layers, self.embeddings(input_ids=input_ids), attention_mask)

    def pool(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        weights = attention_mask.to(states.dtype).unsqueeze(-1)
        mean = (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return self.pooler(mean)


class VisualEmbeddings(nn.Module):
    """Visual tokens -> cross-modal inputs: (projection) + row + column + type embeddings, LayerNorm, dropout."""

    def __init__(self, visual_dim: int, cfg: TextConfig, layer_norm_eps: float):
        super().__init__()
        # only when the video width differs from BERT's (the paper has both at 1024)
        self.proj = nn.Linear(visual_dim, cfg.hidden) if visual_dim != cfg.hidden else nn.Identity()
        self.row_position_embeddings = nn.Embedding(cfg.max_grid, cfg.hidden)
        self.col_position_embeddings = nn.Embedding(cfg.max_grid, cfg.hidden)
        self.token_type_embeddings = nn.Embedding(1, cfg.hidden)
        self.LayerNorm = nn.LayerNorm(cfg.hidden, eps=layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.max_grid = cfg.max_grid

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """tokens [N, gh*gw, d] in row-major grid order -> [N, gh*gw, hidden]."""
        gh, gw = grid
        if gh * gw != tokens.shape[1]:
            raise ValueError(f"{tokens.shape[1]} visual tokens do not form a {gh}x{gw} grid")
        if max(gh, gw) > self.max_grid:
            raise ValueError(f"grid {gh}x{gw} exceeds text.max_grid={self.max_grid}")
        device = tokens.device
        rows = self.row_position_embeddings(torch.arange(gh, device=device))  # [gh, hidden]
        cols = self.col_position_embeddings(torch.arange(gw, device=device))  # [gw, hidden]
        position = (rows[:, None, :] + cols[None, :, :]).flatten(0, 1)
        x = self.proj(tokens) + position + self.token_type_embeddings.weight[0]
        return self.dropout(self.LayerNorm(x))


class CrossModalEncoder(nn.Module):
    """The last `cross_layers` BERT layers over [text states ; visual tokens]; pooled = first token."""

    def __init__(self, cfg: TextConfig, bert: BertConfig, visual_dim: int):
        super().__init__()
        self.visual_embeddings = VisualEmbeddings(visual_dim, cfg, bert.layer_norm_eps)
        self.layers = nn.ModuleList(BertLayer(bert, layer_idx=cfg.text_layers + i) for i in range(cfg.cross_layers))
        self.pooler = Pooler(cfg.hidden)

    def forward(self, text_states: torch.Tensor, text_mask: torch.Tensor, visual: torch.Tensor,
                grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """text [N, L, h], mask [N, L], visual [N, n, d] -> (states [N, L + n, h], pooled [N, h])."""
        vis = self.visual_embeddings(visual, grid)
        hidden = torch.cat([text_states, vis.to(text_states.dtype)], dim=1)
        mask = torch.cat([text_mask, text_mask.new_ones(vis.shape[:2])], dim=1)
        states = run_layers(self.layers, hidden, mask)
        return states, self.pooler(states[:, 0])


class MLMHead(nn.Module):
    """transform (dense, GELU, LayerNorm) + decoder; the decoder starts as a copy of the word embeddings."""

    def __init__(self, hidden: int, vocab_size: int, layer_norm_eps: float):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.act = nn.GELU()
        self.LayerNorm = nn.LayerNorm(hidden, eps=layer_norm_eps)
        self.decoder = nn.Linear(hidden, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.LayerNorm(self.act(self.dense(x))))

    @torch.no_grad()
    def clone_decoder_from(self, word_embeddings: nn.Embedding) -> None:
        """Copy (not tie) the embedding matrix, so MLM training can move the decoder on its own."""
        self.decoder.weight.copy_(word_embeddings.weight)
        self.decoder.bias.zero_()


@torch.no_grad()
def load_hf_bert(folder: str | Path, text: TextEncoder, cross: CrossModalEncoder) -> dict[str, int]:
    """Copy a local HF BERT checkpoint: embeddings -> text.embeddings, layers 0..L1-1 -> text.layers,
    L1.. -> cross.layers, pooler -> both poolers. Never downloads (`local_files_only`).

    Returns how many layers were copied to each part; layers the checkpoint lacks keep their random init.
    """
    from transformers import BertModel

    from data_tools.packaged import resolve_model_folder

    folder = resolve_model_folder(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"text.init_from: no such folder {folder}")
    hf = BertModel.from_pretrained(str(folder), local_files_only=True)
    hc = hf.config
    ours = text.embeddings.word_embeddings
    for name, theirs, mine in (("hidden_size", hc.hidden_size, ours.embedding_dim),
                               ("vocab_size", hc.vocab_size, ours.num_embeddings),
                               ("intermediate_size", hc.intermediate_size,
                                text.layers[0].intermediate.dense.out_features if len(text.layers) else hc.intermediate_size),
                               ("num_attention_heads", hc.num_attention_heads,
                                text.layers[0].attention.self.num_attention_heads if len(text.layers) else hc.num_attention_heads)):
        if theirs != mine:
            raise ValueError(f"text.init_from {folder}: {name} is {theirs}, the model config has {mine}")

    source = hf.embeddings.state_dict()
    target = text.embeddings.state_dict()
    for key, value in target.items():
        src = source[key]
        if key.endswith("position_embeddings.weight") and src.shape != value.shape:
            rows = min(src.shape[0], value.shape[0])  # a shorter max_len keeps the first positions
            value[:rows].copy_(src[:rows])
        elif src.shape == value.shape:
            value.copy_(src)
        else:
            raise ValueError(f"text.init_from {folder}: embeddings.{key} is {tuple(src.shape)}, "
                             f"the model needs {tuple(value.shape)}")
    hf_layers = hf.encoder.layer
    copied = {"text": 0, "cross": 0}
    for i, layer in enumerate(list(text.layers) + list(cross.layers)):
        if i < len(hf_layers):
            layer.load_state_dict(hf_layers[i].state_dict())
            copied["text" if i < len(text.layers) else "cross"] += 1
    if hf.pooler is not None:
        text.pooler.dense.load_state_dict(hf.pooler.dense.state_dict())
        cross.pooler.dense.load_state_dict(hf.pooler.dense.state_dict())
    total = len(text.layers) + len(cross.layers)
    if len(hf_layers) != total:
        log.warning("text.init_from %s has %d layers, the model %d: copied %s", folder, len(hf_layers), total, copied)
    return copied
