"""Offline caption tokenization: a BERT-style WordPiece tokenizer built on HF `tokenizers`.

`load_tokenizer()` returns the committed default vocabulary (assets/tokenizer/, built by
`build_default_vocab`); `load_tokenizer(folder)` also takes any folder with a `tokenizer.json` or a
BERT-style `vocab.txt` (for example a local HF BERT checkpoint). Nothing here touches the network.

Batches come out as numpy int64 arrays: `[CLS] tokens... [SEP] [PAD]...`, truncated so `[SEP]` is kept.
"""
from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import sys
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from .files import atomic_write_json, atomic_write_text

DEFAULT_TOKENIZER_DIR = Path(__file__).resolve().parent / "assets" / "tokenizer"
SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4 when trained here

# Role -> accepted spellings, so RoBERTa/CLIP-style tokenizer.json files load as well as BERT ones.
_ROLE_TOKENS: dict[str, tuple[str, ...]] = {
    "pad": ("[PAD]", "<pad>"),
    "unk": ("[UNK]", "<unk>"),
    "cls": ("[CLS]", "<s>", "<|startoftext|>"),
    "sep": ("[SEP]", "</s>", "<|endoftext|>"),
    "mask": ("[MASK]", "<mask>"),
}


class CaptionTokenizer:
    """Wraps a `tokenizers.Tokenizer`; adds [CLS]/[SEP]/[PAD] itself so every backend lays batches out alike."""

    def __init__(self, backend: Tokenizer):
        backend.no_truncation()  # this class truncates and pads itself
        backend.no_padding()
        self.backend = backend
        ids: dict[str, int] = {}
        missing = []
        for role, names in _ROLE_TOKENS.items():
            found = next((backend.token_to_id(n) for n in names if backend.token_to_id(n) is not None), None)
            if found is None:
                missing.append(f"{role} ({' or '.join(names)})")
            else:
                ids[role] = found
        if missing:
            raise ValueError(f"tokenizer vocabulary lacks special tokens: {', '.join(missing)}")
        self.pad_id, self.unk_id, self.cls_id = ids["pad"], ids["unk"], ids["cls"]
        self.sep_id, self.mask_id = ids["sep"], ids["mask"]
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)

    def __call__(self, texts: list[str] | str, max_len: int) -> dict[str, np.ndarray]:
        """input_ids and attention_mask, int64 [N, max_len]."""
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2 to hold [CLS] and [SEP], got {max_len}")
        if isinstance(texts, str):
            texts = [texts]
        encs = self.backend.encode_batch(list(texts), add_special_tokens=False)
        ids = np.full((len(encs), max_len), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encs), max_len), dtype=np.int64)
        for i, enc in enumerate(encs):
            body = enc.ids[: max_len - 2]
            n = len(body) + 2
            ids[i, 0] = self.cls_id
            ids[i, 1:n - 1] = body
            ids[i, n - 1] = self.sep_id
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without special tokens."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        """Text of a row of ids; [CLS], [SEP] and [PAD] are dropped, [UNK] and [MASK] stay visible."""
        drop = {self.pad_id, self.cls_id, self.sep_id}
        flat = [int(i) for i in np.asarray(ids).reshape(-1) if int(i) not in drop]
        return self.backend.decode(flat, skip_special_tokens=False)

    def special_ids(self) -> set[int]:
        return {self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id}

    def vocab(self) -> list[str]:
        """Tokens in id order."""
        v = self.backend.get_vocab(with_added_tokens=True)
        out = [""] * (max(v.values()) + 1)
        for tok, i in v.items():
            out[i] = tok
        return out

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write tokenizer.json and vocab.txt, each atomically."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        vocab = self.vocab()
        if "" in vocab:
            raise ValueError("vocabulary ids are not contiguous; cannot write vocab.txt")
        atomic_write_text(out / "vocab.txt", "".join(t + "\n" for t in vocab))
        atomic_write_text(out / "tokenizer.json", self.backend.to_str(pretty=True))  # last: its presence means done
        return out

    def __repr__(self) -> str:
        return f"CaptionTokenizer(vocab_size={self.vocab_size}, pad={self.pad_id}, cls={self.cls_id}, sep={self.sep_id})"


def _bert_pipeline(tok: Tokenizer, lowercase: bool = True) -> Tokenizer:
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def _add_post_processor(tok: Tokenizer) -> None:
    # For users of the raw tokenizer.json (e.g. HF AutoTokenizer); CaptionTokenizer adds these itself.
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    if cls is not None and sep is not None:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
        )


def _from_vocab_txt(path: Path, lowercase: bool) -> Tokenizer:
    vocab = models.WordPiece.read_file(str(path))
    if "[UNK]" not in vocab:
        raise ValueError(f"{path} has no [UNK] token; not a BERT-style vocab.txt")
    return tokenizer_from_vocab(vocab, lowercase)


def _lowercase_setting(folder: Path) -> bool:
    """do_lower_case from a HF tokenizer_config.json, else True (uncased BERT)."""
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        try:
            return bool(json.loads(cfg.read_text()).get("do_lower_case", True))
        except (OSError, ValueError):
            pass
    return True


def load_tokenizer(path: str | os.PathLike | None = None) -> CaptionTokenizer:
    """None -> the committed default; else a folder (tokenizer.json preferred, then vocab.txt), either file, or
    `packaged:<name>` (data_tools.packaged)."""
    from .packaged import resolve_model_folder

    p = resolve_model_folder(path) if path is not None else DEFAULT_TOKENIZER_DIR
    if p.is_dir():
        if (p / "tokenizer.json").is_file():
            return CaptionTokenizer(Tokenizer.from_file(str(p / "tokenizer.json")))
        if (p / "vocab.txt").is_file():
            return CaptionTokenizer(_from_vocab_txt(p / "vocab.txt", _lowercase_setting(p)))
        raise FileNotFoundError(f"{p} holds neither tokenizer.json nor vocab.txt")
    if p.is_file():
        if p.suffix == ".json":
            return CaptionTokenizer(Tokenizer.from_file(str(p)))
        return CaptionTokenizer(_from_vocab_txt(p, _lowercase_setting(p.parent)))
    raise FileNotFoundError(f"no tokenizer at {p}")


def _word_counts(texts: Iterable[str], lowercase: bool = True) -> tuple[dict[str, int], int]:
    """Count pre-tokenized words exactly as the BERT pipeline splits them at encode time."""
    norm = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                      lowercase=lowercase)
    pre = pre_tokenizers.BertPreTokenizer()
    counts: dict[str, int] = {}
    n_texts = 0
    for text in texts:
        if not text or not text.strip():
            continue
        n_texts += 1
        for word, _ in pre.pre_tokenize_str(norm.normalize_str(text)):
            counts[word] = counts.get(word, 0) + 1
    return counts, n_texts


def learn_wordpiece_vocab(word_counts: dict[str, int], vocab_size: int, min_frequency: int = 2,
                          limit_alphabet: int | None = 1000, prefix: str = "##",
                          max_word_chars: int = 100) -> list[str]:
    """Deterministic WordPiece vocabulary (BPE merges over word counts; ties broken by the token strings).

    The same recipe as the `tokenizers` WordPieceTrainer, which breaks count ties in hash-map order
    and so gives a slightly different vocabulary on every run; this one gives the same list every time.
    """
    import heapq

    words = {w: c for w, c in word_counts.items() if 0 < len(w) <= max_word_chars}
    char_counts: dict[str, int] = {}
    for w, c in words.items():
        for ch in w:
            char_counts[ch] = char_counts.get(ch, 0) + c
    alphabet = sorted(char_counts, key=lambda ch: (-char_counts[ch], ch))
    if limit_alphabet is not None:
        alphabet = alphabet[:limit_alphabet]
    keep = set(alphabet)
    words = {w: c for w, c in words.items() if all(ch in keep for ch in w)}  # others encode as [UNK]
    vocab: list[str] = list(SPECIAL_TOKENS) + sorted(alphabet)
    inner = sorted(prefix + ch for ch in alphabet)  # every kept character can continue a word: no [UNK]
    vocab += inner
    sym_id = {s: i for i, s in enumerate(vocab)}

    order = sorted(words)  # fixed word order: the merge loop below visits words in this order
    seqs = [[sym_id[w[0]]] + [sym_id[prefix + ch] for ch in w[1:]] for w in order]
    freq = [words[w] for w in order]
    pair_count: dict[tuple[int, int], int] = {}
    pair_words: dict[tuple[int, int], set[int]] = {}
    for wi, seq in enumerate(seqs):
        for pair in zip(seq, seq[1:]):
            pair_count[pair] = pair_count.get(pair, 0) + freq[wi]
            pair_words.setdefault(pair, set()).add(wi)
    heap = [(-c, vocab[a], vocab[b], a, b) for (a, b), c in pair_count.items()]
    heapq.heapify(heap)

    while len(vocab) < vocab_size and heap:
        neg, _, _, a, b = heapq.heappop(heap)
        if pair_count.get((a, b), 0) != -neg:
            continue  # stale entry; the current count was pushed separately
        if -neg < min_frequency:
            break
        merged = vocab[a] + (vocab[b][len(prefix):] if vocab[b].startswith(prefix) else vocab[b])
        if merged in sym_id:  # two paths to one string: reuse the token, no duplicate entry
            new = sym_id[merged]
        else:
            new = len(vocab)
            vocab.append(merged)
            sym_id[merged] = new
        changed: set[tuple[int, int]] = set()
        for wi in sorted(pair_words.pop((a, b), ())):
            seq, c = seqs[wi], freq[wi]
            for pair in zip(seq, seq[1:]):
                pair_count[pair] -= c
                changed.add(pair)
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and seq[i] == a and seq[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            seqs[wi] = out
            for pair in zip(out, out[1:]):
                pair_count[pair] = pair_count.get(pair, 0) + c
                pair_words.setdefault(pair, set()).add(wi)
                changed.add(pair)
        pair_count.pop((a, b), None)
        for pair in sorted(changed):
            c = pair_count.get(pair, 0)
            if c > 0 and pair != (a, b):
                heapq.heappush(heap, (-c, vocab[pair[0]], vocab[pair[1]], pair[0], pair[1]))
            elif c <= 0:
                pair_count.pop(pair, None)
                pair_words.pop(pair, None)
    return vocab


def tokenizer_from_vocab(vocab: list[str] | dict[str, int], lowercase: bool = True) -> Tokenizer:
    """A BERT-style WordPiece `tokenizers.Tokenizer` over an ordered token list (or a token -> id map)."""
    if not isinstance(vocab, dict):
        vocab = {t: i for i, t in enumerate(vocab)}
    model = models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100)
    tok = _bert_pipeline(Tokenizer(model), lowercase)
    tok.add_special_tokens([t for t in SPECIAL_TOKENS if t in vocab])
    _add_post_processor(tok)
    return tok


def train_tokenizer(texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = 8000,
                    min_frequency: int = 2, limit_alphabet: int | None = 1000) -> CaptionTokenizer:
    """Train an uncased BERT-style WordPiece ([PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4) and save it to out_dir.

    Same texts and settings give the same vocabulary byte for byte. The vocabulary stops early when no
    pair of pieces occurs min_frequency times any more.
    """
    counts, n_texts = _word_counts(texts)
    if n_texts == 0 or not counts:
        raise ValueError("no training text: every input was empty")
    vocab = learn_wordpiece_vocab(counts, vocab_size, min_frequency, limit_alphabet)
    out = CaptionTokenizer(tokenizer_from_vocab(vocab))
    out.save(out_dir)
    return out


# --- training text -----------------------------------------------------------------------------------

_TEXT_SUFFIXES = (".txt", ".srt", ".vtt", ".jsonl", ".json")
_TEXT_KEYS = ("text", "caption", "sentence", "title")
_TAG = re.compile(r"<[^>]*>|\{\\[^}]*\}")  # <i>..</i>, <c.colour>, {\an8}


def _cue_texts(raw: str) -> Iterator[str]:
    """Cue texts of an SRT or WebVTT file, one per cue."""
    for block in re.split(r"\n\s*\n", raw.replace("\r\n", "\n").replace("\r", "\n")):
        lines = [ln.strip() for ln in block.strip().split("\n") if ln.strip()]
        if not lines or lines[0].startswith(("WEBVTT", "NOTE", "STYLE", "REGION")):
            continue
        timing = next((i for i, ln in enumerate(lines) if "-->" in ln), None)
        if timing is None:
            continue
        text = " ".join(_TAG.sub("", ln) for ln in lines[timing + 1:]).strip()
        if text:
            yield text


def _json_texts(obj) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, list):
        for item in obj:
            yield from _json_texts(item)
    elif isinstance(obj, dict):
        for key in _TEXT_KEYS:
            if isinstance(obj.get(key), str):
                yield obj[key]
                return


def _file_texts(path: Path) -> Iterator[str]:
    raw = path.read_text(encoding="utf-8", errors="replace")
    suffix = path.suffix.lower()
    if suffix in (".srt", ".vtt"):
        yield from _cue_texts(raw)
    elif suffix == ".jsonl":
        for line in raw.splitlines():
            if line.strip():
                try:
                    yield from _json_texts(json.loads(line))
                except ValueError:
                    continue
    elif suffix == ".json":
        try:
            obj = json.loads(raw)
        except ValueError:
            return
        if isinstance(obj, list):  # a dict is a config or manifest, not a caption list
            yield from _json_texts(obj)
    else:
        for line in raw.splitlines():
            if line.strip():
                yield line.strip()


def iter_caption_texts(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> Iterator[str]:
    """Texts from .txt (one per line), .srt/.vtt (one per cue), .jsonl (text/caption field per line) and
    .json (a list of strings or of such records) files; folders are searched recursively in sorted order."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in _TEXT_SUFFIXES)
        elif p.is_file():
            files = [p]
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
        for f in files:
            yield from _file_texts(f)


# --- the committed default vocabulary ----------------------------------------------------------------

# Never imported while collecting prose: they act on import (open a browser, print, start a GUI) or hold
# no prose (codec tables); distutils here would be setuptools' copy, not the standard library.
_STDLIB_SKIP = frozenset({
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "lib2to3", "ensurepip",
    "readline", "curses", "pydoc_data", "distutils", "encodings",
})
_WORD = re.compile(r"[\"'(]*[A-Za-z][a-z]*(?:[-'][a-z]+)*[\"'),.;:!?]*")


def _prose_lines(text: str) -> Iterator[str]:
    """Lines that read as English: no doctest prompts, and nearly all tokens plain words (not identifiers)."""
    for line in text.splitlines():
        line = line.strip()
        if len(line) < 20 or line.startswith((">>>", "...", "$", "#", "|", "+", "-", "=", ":")):
            continue
        words = line.split()
        if len(words) >= 4 and sum(bool(_WORD.fullmatch(w)) for w in words) >= 0.9 * len(words):
            yield line


def _stdlib_modules() -> Iterator[object]:
    """Public standard-library modules and their public submodules, in sorted order."""
    import contextlib
    import io
    import pkgutil
    import warnings

    def load(name: str):
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")  # deprecated modules warn on import
                return importlib.import_module(name)
        except Exception:  # platform-specific modules (winreg, dbm.gnu, ...) are simply absent
            return None

    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in _STDLIB_SKIP or (mod := load(name)) is None:
            continue
        yield mod
        if hasattr(mod, "__path__"):
            for info in sorted(pkgutil.iter_modules(mod.__path__, name + "."), key=lambda i: i.name):
                last = info.name.rsplit(".", 1)[1]
                if last.startswith("_") or "test" in last:
                    continue
                if (sub := load(info.name)) is not None:
                    yield sub


def stdlib_english() -> Iterator[str]:
    """Prose lines from the Python language-reference topics (pydoc_data) and from stdlib docstrings."""
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield from _prose_lines(topics[key])
    seen: set[str] = set()
    for mod in _stdlib_modules():
        objs = [mod]
        for _, obj in sorted(vars(mod).items()):
            if (inspect.isclass(obj) or inspect.isroutine(obj)) and getattr(obj, "__module__", None) == mod.__name__:
                objs.append(obj)
                if inspect.isclass(obj):
                    objs.extend(v for _, v in sorted(vars(obj).items()) if inspect.isroutine(v))
        for obj in objs:
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str) and doc not in seen:
                seen.add(doc)
                yield from _prose_lines(doc)


def build_default_vocab(out_dir: str | os.PathLike = DEFAULT_TOKENIZER_DIR, vocab_size: int = 8000) -> CaptionTokenizer:
    """Rebuild the committed default vocabulary.

    Trained (uncased WordPiece, min_frequency 2, at most 1000 alphabet characters) on, in this order:
      1. every caption the synthetic generator can produce (data_tools.synth.all_caption_texts: each
         template x prefix x shape x colour x direction phrase x background, 27,000 sentences);
      2. the real-corpus transcripts and the scikit-image captions in assets/corpus/, counted twice so
         every word in them clears min_frequency (they are the only real captions);
      3. real English prose shipped with CPython 3.11: the language-reference topics in
         pydoc_data.topics and the docstrings of every public standard-library module, class and
         function (lines with doctest prompts or identifier-like tokens are dropped).
    Source 3 depends on the Python patch version, so a rebuild on another 3.11.x may differ slightly.
    Writes tokenizer.json, vocab.txt and training.json (the source counts) into out_dir.
    """
    from . import corpus, synth

    counts: dict[str, int] = {}

    def tally(name: str, it: Iterable[str]) -> Iterator[str]:
        counts[name] = 0
        for t in it:
            counts[name] += 1
            yield t

    def all_texts() -> Iterator[str]:
        yield from tally("synthetic_captions", synth.all_caption_texts())
        # twice, so each word of these few real captions clears min_frequency and stays one token
        real = list(iter_caption_texts(corpus.CORPUS_DIR))
        yield from tally("real_corpus_and_skimage_captions_x2", real + real)
        yield from tally("python_stdlib_prose_lines", stdlib_english())

    tok = train_tokenizer(all_texts(), out_dir, vocab_size=vocab_size, min_frequency=2, limit_alphabet=1000)
    atomic_write_json(Path(out_dir) / "training.json", {
        "vocab_size": tok.vocab_size,
        "requested_vocab_size": vocab_size,
        "min_frequency": 2,
        "texts": counts,
        "python": sys.version.split()[0],
        "built_by": "data_tools.tokenizer.build_default_vocab",
    })
    return tok
