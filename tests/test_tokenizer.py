from __future__ import annotations

import itertools
import json
import socket

import numpy as np
import pytest

from data_tools.corpus import real_corpus_transcripts
from data_tools.synth import all_caption_texts
from data_tools.tokenizer import (
    DEFAULT_TOKENIZER_DIR,
    iter_caption_texts,
    learn_wordpiece_vocab,
    load_tokenizer,
    train_tokenizer,
)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def test_default_loads_without_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tokenizer tried to open a socket")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    t = load_tokenizer()
    assert 5000 <= t.vocab_size <= 8000
    assert (t.pad_id, t.unk_id, t.cls_id, t.sep_id, t.mask_id) == (0, 1, 2, 3, 4)
    assert t.special_ids() == {0, 1, 2, 3, 4}
    vocab = (DEFAULT_TOKENIZER_DIR / "vocab.txt").read_text().splitlines()
    assert len(vocab) == t.vocab_size and vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def test_batch_layout(tok):
    out = tok(["A red circle moves up.", "A much longer caption about a blue star that shrinks slowly."], 24)
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.dtype == np.int64 and mask.dtype == np.int64 and ids.shape == mask.shape == (2, 24)
    for row, m in zip(ids, mask):
        n = int(m.sum())
        assert row[0] == tok.cls_id and row[n - 1] == tok.sep_id
        assert (m[:n] == 1).all() and (m[n:] == 0).all() and (row[n:] == tok.pad_id).all()
        assert tok.cls_id not in row[1:n - 1] and tok.sep_id not in row[1:n - 1]
    assert mask[0].sum() < mask[1].sum()


def test_truncation_keeps_sep(tok):
    text = " ".join(["the green square slides to the right"] * 10)
    out = tok([text, "a"], 8)
    assert out["input_ids"].shape == (2, 8)
    assert out["input_ids"][0, 0] == tok.cls_id and out["input_ids"][0, -1] == tok.sep_id
    assert out["attention_mask"][0].all()
    assert tok.decode(out["input_ids"][0]) == "the green square slides to the"
    with pytest.raises(ValueError):
        tok(["x"], 1)


def test_synthetic_and_real_captions_round_trip(tok):
    captions = list(itertools.islice(all_caption_texts(), 0, None, 53))
    captions += list(iter_caption_texts(list(real_corpus_transcripts().values())))
    out = tok(captions, 64)
    for text, row in zip(captions, out["input_ids"]):
        assert tok.unk_id not in row, text
        assert tok.decode(row).replace(" - ", "-") == text.lower()  # BERT decoding spaces out hyphens
    # the attribute words of the synthetic captions are single tokens
    for word in ("circle", "triangle", "purple", "orange", "checkerboard", "striped", "shrinks"):
        assert len(tok.encode(word)) == 1, word


def test_train_tokenizer_small_corpus(tmp_path):
    texts = ["A dog runs across the green field.", "A cat sleeps on the red sofa.",
             "The dog and the cat play in the garden."] * 3
    out = tmp_path / "tok"
    t = train_tokenizer(texts, out, vocab_size=120, min_frequency=2)
    assert (out / "tokenizer.json").is_file() and (out / "vocab.txt").is_file()
    assert not list(out.glob(".*.tmp"))
    assert t.vocab_size <= 120 and (t.pad_id, t.cls_id, t.sep_id) == (0, 2, 3)
    again = load_tokenizer(out)
    ids = again(["The dog sleeps in the garden."], 16)["input_ids"][0]
    assert t.unk_id not in ids
    assert again.decode(ids) == "the dog sleeps in the garden."
    assert again(["A dog ©"], 8)["input_ids"][0][3] == again.unk_id  # unseen character
    # the same texts give the same vocabulary, byte for byte
    train_tokenizer(texts, tmp_path / "tok2", vocab_size=120, min_frequency=2)
    assert (tmp_path / "tok2" / "vocab.txt").read_bytes() == (out / "vocab.txt").read_bytes()
    with pytest.raises(ValueError):
        train_tokenizer(["", "  "], tmp_path / "empty")


def test_learned_vocab_merges_frequent_words_first():
    vocab = learn_wordpiece_vocab({"low": 10, "lower": 5, "newest": 6, "widest": 3}, vocab_size=40, min_frequency=2)
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert "low" in vocab and "##est" in vocab and len(set(vocab)) == len(vocab)
    assert vocab == learn_wordpiece_vocab({"widest": 3, "newest": 6, "lower": 5, "low": 10}, 40, 2)


def test_folder_with_only_bert_vocab_txt(tmp_path):
    words = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "man", "talk", "##s", "in",
             "car", ".", "t", "##a", "##l", "##k"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    t = load_tokenizer(tmp_path)
    assert (t.pad_id, t.unk_id, t.cls_id, t.sep_id, t.mask_id) == (0, 2, 3, 4, 5)
    ids = t(["A MAN talks in a car.", "a bus"], 12)["input_ids"]
    assert ids[0].tolist()[:10] == [3, 6, 7, 8, 9, 10, 6, 11, 12, 4]
    assert ids[1].tolist()[:4] == [3, 6, 2, 4]  # "bus" is not in the vocab
    assert t.decode(ids[0]) == "a man talks in a car."
    # an HF checkpoint's tokenizer_config.json can turn lowercasing off
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    assert load_tokenizer(tmp_path)(["MAN"], 4)["input_ids"][0][1] == 2


def test_save_and_reload_same_ids(tok, tmp_path):
    tok.save(tmp_path)
    caps = ["Next, on a white background, an orange cross grows larger."]
    assert (load_tokenizer(tmp_path)(caps, 20)["input_ids"] == tok(caps, 20)["input_ids"]).all()
    only_vocab = tmp_path / "v"
    only_vocab.mkdir()
    (only_vocab / "vocab.txt").write_bytes((tmp_path / "vocab.txt").read_bytes())
    assert (load_tokenizer(only_vocab)(caps, 20)["input_ids"] == tok(caps, 20)["input_ids"]).all()


def test_iter_caption_texts_reads_each_format(tmp_path):
    (tmp_path / "a.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\n<i>First</i> line\nsecond line.\n\n"
                                    "2\n00:00:01,000 --> 00:00:02,000\nNext cue.\n")
    (tmp_path / "b.vtt").write_text("WEBVTT\n\nNOTE a comment\n\n00:00.000 --> 00:01.000\nVTT cue.\n")
    (tmp_path / "c.jsonl").write_text('{"video_id": "x", "text": "From jsonl."}\n{"caption": "Caption key."}\n')
    (tmp_path / "d.json").write_text(json.dumps([{"caption": "From json."}, "Plain string."]))
    (tmp_path / "e.txt").write_text("Line one.\n\nLine two.\n")
    (tmp_path / "config.json").write_text(json.dumps({"text": "not a caption list"}))
    assert list(iter_caption_texts(tmp_path)) == [
        "First line second line.", "Next cue.", "VTT cue.", "From jsonl.", "Caption key.",
        "From json.", "Plain string.", "Line one.", "Line two.",
    ]
    with pytest.raises(FileNotFoundError):
        list(iter_caption_texts(tmp_path / "missing"))
