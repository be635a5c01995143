"""SPO on a diffusers StableDiffusionPipeline from a local folder: a tiny random pipeline built offline, sampled as
a policy (text prompts, classifier-free guidance, VAE decoding) and fine-tuned with LoRA on the shared trainer."""
from __future__ import annotations

import pytest
import torch

from hdvila.cli import main as cli_main
from spo.collect import step_pairs, trajectory_pairs
from spo.scorers import load_scorer
from spo.stable_diffusion import StableDiffusionPolicy, load_stable_diffusion
from spo_helpers import tiny_stable_diffusion

PROMPTS = ["a red circle", "a blue square", "a green cross"]


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return tiny_stable_diffusion(tmp_path_factory.mktemp("sd") / "tiny-sd")


def test_policy_follows_the_pipeline_scheduler(sd_folder):
    pipe = load_stable_diffusion(sd_folder)
    policy = StableDiffusionPolicy(pipe, PROMPTS, steps=4, guidance=3.0)
    assert policy.timesteps.tolist() == [751, 501, 251, 1, 0]  # 4 DDIM steps, the last lands on t = 0
    abar = pipe.scheduler.alphas_cumprod.double()[policy.timesteps]
    assert torch.allclose(torch.tensor(policy.grid, dtype=torch.float64), torch.log(abar / (1 - abar)))
    cond = policy.condition(torch.tensor([0, 2]))
    assert cond.shape[0] == 2 and not torch.equal(cond[0], cond[1])
    x = policy.start(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, eps = policy.predict(policy.model, x, torch.full((2,), policy.grid[1]), cond)
        # classifier-free guidance at the pipeline's timestep: the UNet's ε with text and with the empty prompt
        t = torch.full((2,), int(policy.timesteps[1]))
        with_text = pipe.unet(x, t, encoder_hidden_states=cond).sample
        empty = pipe.unet(x, t, encoder_hidden_states=policy._encode([""]).expand_as(cond)).sample
    assert torch.allclose(eps, empty + 3.0 * (with_text - empty), atol=1e-5)
    assert policy.decode(x).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="off the scheduler"):
        policy.predict(policy.model, x, torch.full((2,), 0.123), cond)
    from diffusers import DDIMScheduler

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, steps_offset=0)  # timesteps end at 0
    with pytest.raises(ValueError, match="end at 0"):
        StableDiffusionPolicy(pipe, PROMPTS, steps=4)
    with pytest.raises(FileNotFoundError, match="model_index"):
        load_stable_diffusion(sd_folder / "unet")


def test_pairs_from_a_stable_diffusion_policy(sd_folder):
    policy = StableDiffusionPolicy(load_stable_diffusion(sd_folder), PROMPTS, steps=4, guidance=3.0)
    scorer = load_scorer("brightness")
    pairs, rows = step_pairs(policy, policy.model, scorer, torch.tensor([0, 1]), k=2, divert_start=1,
                             threshold=0.0, generator=torch.Generator().manual_seed(0))
    assert len(pairs) == 2 * 3 and pairs.win.shape[1:] == (4, 8, 8) and rows == 2 * (2 + 2 * 3) * 2
    assert pairs.stats["pairs_offered"] == 2 * (4 - 1)
    dpo, _ = trajectory_pairs(policy, policy.model, scorer, torch.tensor([2]), generator=torch.Generator())
    assert len(dpo) == 4  # one pair per step of the prompt's two chains


def test_lora_spo_run_on_stable_diffusion(sd_folder, tmp_path):
    from safetensors.torch import load_file

    before = {k: v.clone() for k, v in load_stable_diffusion(sd_folder).unet.state_dict().items()}
    out = tmp_path / "run"
    args = ["--quiet", "spo", "train", "--config", "spo/digits", f"base={sd_folder}", "base_kind=stable-diffusion",
            f"prompts={PROMPTS}", "scorer=brightness", "finetune=lora", "steps=4", "divert_start=1", "k=2",
            "threshold=0.0", "guidance=3.0", f"output_dir={out}", "train.batch_size=2", "train.max_steps=2",
            "train.val_every=0", "train.log_every=1", "optim.lr=1e-2"]
    assert cli_main(args) == 0
    adapter = load_file(out / "lora" / "adapter_model.safetensors")
    assert any("to_q" in k for k in adapter)
    ups = [v for k, v in adapter.items() if "lora_B" in k]
    assert ups and any(v.abs().sum() > 0 for v in ups)  # LoRA's B starts at zero: it trained
    after = load_stable_diffusion(sd_folder).unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the base folder is untouched
    assert not (out / "model").exists()  # a Stable Diffusion run exports its adapter only
