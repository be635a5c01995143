"""The model half of InstructDiffusion in miniature: every size builds (the paper's on the meta device), the
pretrained folder round-trips, the two-scale guidance formula, the frozen text encoders, the timestep
conventions and the 8-channel Stable Diffusion UNet."""
import json
import os
import subprocess
import sys

import pytest
import torch

from diffusion.process import TARGETS, convert, predict_x0_eps
from instruct.guidance import EditCondition, concat_padded, two_scale_combination, two_scale_guided
from instruct.model import (
    InstructUNet, TIMESTEP_CONVENTIONS, create_model, from_stable_diffusion, get_model_config, list_models,
)
from instruct.text import FrozenTextEncoder, load_text_encoder, parse_spec

SD15_PARAMETERS = 859_520_964 + 320 * 4 * 3 * 3  # SD 1.5's UNet plus conv_in's 4 extra input channels


def _inputs(cfg, batch=2, tokens=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, cfg.image_channels, cfg.image_size, cfg.image_size)
    return (torch.randn(shape, generator=g), torch.linspace(-6, 6, batch), torch.randn(shape, generator=g),
            torch.randn(batch, tokens, cfg.cross_attention_dim, generator=g), torch.ones(batch, tokens, dtype=torch.long))


# ------------------------------------------------------------------------------------------------ model

@pytest.mark.parametrize("name", list_models())
def test_every_registered_size_builds_on_the_meta_device(name):
    with torch.device("meta"):
        model = create_model(name)
        cfg = model.config
        x = torch.empty(2, cfg.image_channels, cfg.image_size, cfg.image_size)
        out = model(x, torch.zeros(2), x, torch.empty(2, 7, cfg.cross_attention_dim), torch.ones(2, 7))
    assert out.shape == x.shape and out.device.type == "meta"
    assert model.unet.config.in_channels == 2 * cfg.image_channels
    if name == "instruct-sd15":
        assert sum(p.numel() for p in model.parameters()) == SD15_PARAMETERS
        assert model.unet.config.cross_attention_dim == 768 and list(model.unet.config.block_out_channels) == [
            320, 640, 1280, 1280]


def test_a_folder_without_edit_settings_decodes_with_the_target_it_records(tmp_path):
    from instruct.pipeline import InstructPipeline

    folder = create_model("instruct-tiny").save_pretrained(
        tmp_path / "bare", meta={"text_encoder": "packaged:all-minilm-l6-v2", "target": "x0"})
    assert InstructPipeline.from_pretrained(folder).config.target == "x0"  # not the dataclass default (eps)


def test_tiny_is_small_and_a_saved_folder_reloads_to_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = create_model("instruct-tiny").eval()
    assert sum(p.numel() for p in model.parameters()) < 500_000
    with torch.no_grad():
        for p in model.parameters():  # diffusers zero-initialises conv_out: move off zero so outputs differ
            p.add_(0.02 * torch.randn_like(p))
    args = _inputs(model.config)
    folder = model.save_pretrained(tmp_path / "tiny")
    record = json.loads((folder / "config.json").read_text())
    assert record["kind"] == "instruct-unet" and record["config"]["text_encoder"] == "packaged:all-minilm-l6-v2"
    again = InstructUNet.from_pretrained(folder).eval()
    with torch.no_grad():
        a, b = model(*args), again(*args)
    assert torch.equal(a, b) and a.abs().sum() > 0
    # the prediction depends on the source, the text and the noise level
    x, lam, source, states, mask = args
    with torch.no_grad():
        assert not torch.allclose(a, model(x, lam, torch.zeros_like(source), states, mask))
        assert not torch.allclose(a, model(x, lam, source, states.flip(0), mask))
        assert not torch.allclose(a, model(x, lam + 1, source, states, mask))


def test_config_checks_and_overrides():
    assert get_model_config("instruct-small", block_out_channels=[16, 32, 32]).block_out_channels == [16, 32, 32]
    with pytest.raises(ValueError, match="unknown instruct model config keys"):
        get_model_config("instruct-tiny", widht=3)
    with pytest.raises(ValueError, match="one entry per"):
        get_model_config("instruct-tiny", cross_attention_levels=[True])
    with pytest.raises(ValueError, match="did you mean 'cosine'"):
        get_model_config("instruct-tiny", timestep="cosin")
    model = create_model("instruct-tiny")
    x, lam, source, states, mask = _inputs(model.config)
    with pytest.raises(ValueError, match="384"):
        model(x, lam, source, states[..., :64], mask)
    with pytest.raises(ValueError, match="source"):
        model(x, lam, source[:, :, :8], states, mask)


def test_timestep_conventions():
    from diffusion.process import cosine_time
    from diffusion.schedules import get_schedule

    lam = torch.linspace(-12, 12, 9)
    torch.testing.assert_close(TIMESTEP_CONVENTIONS.get("cosine")(lam), 1000 * cosine_time(lam))
    sd = get_schedule("scaled_linear")
    knots = [0, 1, 250, 998, 999]
    index = TIMESTEP_CONVENTIONS.get("scaled_linear")(sd.timestep_logsnr[knots].float())
    torch.testing.assert_close(index, torch.tensor(knots, dtype=torch.float32), rtol=0, atol=2e-3)
    ends = TIMESTEP_CONVENTIONS.get("scaled_linear")(torch.tensor([40.0, -40.0]))
    assert ends.tolist() == [0.0, 999.0]


# ------------------------------------------------------------------------------------------------ guidance

def _fake_model(target="eps"):
    """A model whose prediction is an affine function of x with a different offset for each branch, so each
    branch's contribution is visible: +1 for a real source, +10 for a real text, +100 when both."""
    calls = []

    def model(x, logsnr, source, states, mask):
        calls.append(x.shape[0])
        has_image = (source.flatten(1).abs().sum(1) > 0).double()
        has_text = (mask.sum(1) > 2).double()  # the null text is [CLS] [SEP]
        offset = has_image + 10 * has_text + 100 * has_image * has_text
        return 0.5 * x + offset.view(-1, 1, 1, 1)

    return model, calls


def _condition(b=3):
    g = torch.Generator().manual_seed(1)
    source = torch.randn(b, 3, 4, 4, generator=g, dtype=torch.float64)
    states = torch.randn(b, 6, 8, generator=g, dtype=torch.float64)
    null = torch.randn(1, 2, 8, generator=g, dtype=torch.float64)
    return EditCondition(source, states, torch.ones(b, 6, dtype=torch.long), null, torch.ones(1, 2, dtype=torch.long))


@pytest.mark.parametrize("text_scale,image_scale", [(5.0, 1.25), (0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (7.5, 1.5)])
def test_two_scale_guidance_is_the_papers_formula_in_one_batched_call(text_scale, image_scale):
    model, calls = _fake_model()
    cond = _condition()
    x = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    lam = torch.zeros(3, dtype=torch.float64)
    out = two_scale_guided(model, text_scale, image_scale)(x, lam, cond)
    assert calls == [9]  # (I, T), (I, ∅), (∅, T) as one batch; never (∅, ∅)
    both, image_only, text_only = 0.5 * x + 111, 0.5 * x + 1, 0.5 * x + 10
    by_hand = (0.5 * (image_only + text_only) + text_scale * (both - image_only)
               + image_scale * (both - text_only))
    torch.testing.assert_close(out, by_hand)
    # the same in per-branch weights: (s_T + s_I) ε(I,T) + (½ − s_T) ε(I,∅) + (½ − s_I) ε(∅,T)
    weights = (text_scale + image_scale) * both + (0.5 - text_scale) * image_only + (0.5 - image_scale) * text_only
    torch.testing.assert_close(out, weights)


def test_guidance_special_cases():
    model, calls = _fake_model()
    cond = _condition()
    x = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    lam = torch.zeros(3, dtype=torch.float64)
    both, image_only, text_only = 0.5 * x + 111, 0.5 * x + 1, 0.5 * x + 10
    # s_T = s_I = ½: exactly the conditional prediction, and only that branch runs
    torch.testing.assert_close(two_scale_guided(model, 0.5, 0.5)(x, lam, cond), both, rtol=0, atol=0)
    assert calls == [3]
    # s_T = s_I = 0: the mean of the two half-conditioned branches (not the conditional one)
    torch.testing.assert_close(two_scale_guided(model, 0, 0)(x, lam, cond), 0.5 * (image_only + text_only))
    # s_T = 1, s_I = 0: ε(I,T) + ½ (ε(∅,T) − ε(I,∅))
    torch.testing.assert_close(two_scale_guided(model, 1, 0)(x, lam, cond), both + 0.5 * (text_only - image_only))
    # a model deaf to the text: text guidance does nothing and ε̃ = ε(I,T) + (½ − s_I)(ε(∅,T) − ε(I,T))
    deaf = two_scale_combination(both, both, text_only, 9.0, 2.0)
    torch.testing.assert_close(deaf, both + (0.5 - 2.0) * (text_only - both))


@pytest.mark.parametrize("target", TARGETS)
def test_guidance_combines_any_target_like_eps(target):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 3, dtype=torch.float64, generator=g)
    lam = torch.linspace(-3, 3, 4, dtype=torch.float64)
    eps = [torch.randn(4, 3, dtype=torch.float64, generator=g) for _ in range(3)]
    preds = [convert(e, x, lam, "eps", target) for e in eps]
    combined = two_scale_combination(*preds, 4.0, 1.5)
    _, combined_eps = predict_x0_eps(combined, x, lam, target)
    torch.testing.assert_close(combined_eps, two_scale_combination(*eps, 4.0, 1.5))


def test_concat_padded_pads_states_and_masks():
    states, mask = concat_padded([torch.ones(2, 3, 4), torch.ones(1, 5, 4)],
                                 [torch.ones(2, 3, dtype=torch.long), torch.ones(1, 5, dtype=torch.long)])
    assert states.shape == (3, 5, 4) and mask.tolist()[0] == [1, 1, 1, 0, 0] and states[0, 3:].abs().sum() == 0


# ------------------------------------------------------------------------------------------------ text encoders

def test_minilm_encoder_states_mask_null_and_cache():
    encoder = load_text_encoder("packaged:all-minilm-l6-v2")
    assert encoder is load_text_encoder("packaged:all-minilm-l6-v2") and encoder.width == 384
    texts = ["make the red circle blue", "", "mark the pixels of the square in green and leave the rest unchanged"]
    states, mask = encoder.encode(texts)
    lengths = mask.sum(1).tolist()
    assert states.shape == (3, max(lengths), 384) and lengths[1] == 2 and lengths[2] > lengths[0]
    assert states[0, lengths[0]:].abs().sum() == 0  # padding is zeros
    null, null_mask = encoder.null()
    assert torch.equal(null[0], states[1, :2]) and null_mask.tolist() == [[1, 1]]
    hits = encoder.hits
    again, _ = encoder.encode([texts[2], texts[0]])  # cached, and independent of the batch it came with
    assert encoder.hits == hits + 2
    assert torch.equal(again[1, :lengths[0]], states[0, :lengths[0]])
    with pytest.raises(TypeError):
        encoder.encode("one string")


def test_lru_evicts_the_least_recently_used_sentence():
    encoder = load_text_encoder("packaged:all-minilm-l6-v2")
    small = FrozenTextEncoder("test", encoder.tokenizer, encoder.network, encoder._embed, encoder.width,
                              cache_size=2)
    small.encode(["a circle", "a square"])
    small.encode(["a circle"])  # now the most recent
    small.encode(["a star"])  # evicts "a square"
    misses = small.misses
    small.encode(["a circle", "a star"])
    assert small.misses == misses
    small.encode(["a square"])
    assert small.misses == misses + 1
    # a batch longer than the cache still comes back whole
    states, mask = small.encode(["one", "two", "three", "four"])
    assert states.shape[0] == 4 and (mask.sum(1) >= 3).all()


def test_hdvila_text_encoder_from_a_pretrained_folder(tmp_path):
    from hdvila.models import create_model as create_hdvila

    torch.manual_seed(0)
    folder = tmp_path / "hdvila"
    create_hdvila("hdvila-tiny").save_pretrained(folder)
    encoder = load_text_encoder(f"hdvila:{folder}")
    states, mask = encoder.encode(["the red circle moves left", ""])
    assert encoder.width == 64 and states.shape[0] == 2 and states.shape[2] == 64 and mask[1].sum() == 2
    assert encoder.spec == f"hdvila:{folder.resolve()}"  # what a model config records: found from any folder
    model = create_model("instruct-tiny", cross_attention_dim=encoder.width, text_encoder=encoder.spec)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert model(x, torch.zeros(2), x, states, mask).shape == x.shape


def test_text_encoder_specs_are_checked():
    assert parse_spec("hdvila:/some/folder") == ("hdvila", "/some/folder")
    with pytest.raises(ValueError, match="<kind>:<argument>"):
        parse_spec("all-minilm-l6-v2")
    with pytest.raises(ValueError, match="did you mean 'packaged'"):
        parse_spec("packagd:all-minilm-l6-v2")


# ------------------------------------------------------------------------------------------------ Stable Diffusion

def test_from_stable_diffusion_widens_conv_in_and_a_zero_source_changes_nothing(tmp_path):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    sd = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                              down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                              cross_attention_dim=24, attention_head_dim=2, norm_num_groups=8).eval()
    with torch.no_grad():
        for p in sd.parameters():  # conv_out starts at zero in diffusers: give every weight a value
            p.add_(0.02 * torch.randn_like(p))
    sd.save_pretrained(tmp_path / "sd" / "unet")
    model = from_stable_diffusion(tmp_path / "sd", text_encoder="hdvila:/encoder/of/width/24").eval()
    cfg = model.config
    assert (cfg.image_channels, cfg.cross_attention_dim, cfg.timestep) == (4, 24, "scaled_linear")
    assert model.unet.conv_in.weight.shape[1] == 8 and model.unet.conv_in.weight[:, 4:].abs().sum() == 0
    g = torch.Generator().manual_seed(1)
    x, states = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, 24, generator=g)
    mask = torch.ones(2, 5, dtype=torch.long)
    lam = torch.tensor([-3.0, 2.0])
    with torch.no_grad():
        ours = model(x, lam, torch.zeros_like(x), states, mask)
        theirs = sd(x, model.timestep(lam), encoder_hidden_states=states, encoder_attention_mask=mask).sample
        assert torch.equal(ours, theirs)
    # a UNet option this model does not build is refused, not silently dropped
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                         cross_attention_dim=24, attention_head_dim=2, norm_num_groups=8,
                         act_fn="mish").save_pretrained(tmp_path / "odd" / "unet")
    with pytest.raises(ValueError, match="act_fn"):
        from_stable_diffusion(tmp_path / "odd")
    with pytest.raises(FileNotFoundError, match="unet/config.json"):
        from_stable_diffusion(tmp_path)
    # pickled weights (diffusion_pytorch_model.bin) are refused, never unpickled
    sd.save_pretrained(tmp_path / "pickled" / "unet", safe_serialization=False)
    assert not list((tmp_path / "pickled" / "unet").glob("*.safetensors"))
    with pytest.raises(OSError, match="safetensors"):
        from_stable_diffusion(tmp_path / "pickled")


def test_inference_modules_import_no_training_module_and_no_cli():
    code = "import instruct.pipeline, instruct.evaluate, instruct.guidance, sys; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout.split()
    assert "instruct.pipeline" in loaded and "instruct.train" not in loaded
    assert [m for m in loaded if m.startswith("hdvila.cli")] == []
