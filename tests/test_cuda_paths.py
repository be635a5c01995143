"""CPU/GPU agreement of the models' CUDA paths: the same weights and seeds give the same numbers on both.

Skipped without a GPU (CI has none); run on a GPU machine with `pytest tests/test_cuda_paths.py`. TF32 is
switched off so that fp32 means fp32 on both sides.
"""
import copy

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


@pytest.fixture(autouse=True)
def strict_fp32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _close(gpu: torch.Tensor, cpu: torch.Tensor, atol: float = 2e-4, rtol: float = 1e-3) -> None:
    assert gpu.device.type == "cuda" or cpu.device.type == "cpu"
    torch.testing.assert_close(gpu.detach().float().cpu(), cpu.detach().float(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("name", ["sg2-tiny16", "sg2-faces32"])
def test_stylegan2_matches_cpu(name):
    """The CUDA path (FIR filters as shifted slices) computes what the CPU path (depthwise convs) does."""
    from animation.stylegan2 import create_gan

    torch.manual_seed(0)
    G, D = create_gan(name)
    G.eval(), D.eval()
    z = torch.randn(4, G.z_dim)
    with torch.no_grad():
        ws = G.mapping(z, truncation_psi=0.7)
        img = G.synthesis(ws, noise_mode="const")
        score = D(img)
    Gc, Dc = copy.deepcopy(G).cuda(), copy.deepcopy(D).cuda()
    with torch.no_grad():
        ws_c = Gc.mapping(z.cuda(), truncation_psi=0.7)
        img_c = Gc.synthesis(ws_c, noise_mode="const")
        score_c = Dc(img_c)
    _close(ws_c, ws)
    _close(img_c, img)
    _close(score_c, score, atol=1e-3)


def test_gan_regularisers_and_gradients_match_cpu():
    from animation.stylegan2 import PathLengthPenalty, create_gan, r1_penalty

    torch.manual_seed(0)
    G, D = create_gan("sg2-tiny16")
    real = torch.randn(4, 3, 16, 16)
    ws = G.mapping(torch.randn(4, G.z_dim)).detach()
    results = {}
    for device in ("cpu", "cuda"):
        g, d = copy.deepcopy(G).to(device), copy.deepcopy(D).to(device)
        x = real.to(device).requires_grad_(True)
        r1 = r1_penalty(x, d(x))
        torch.manual_seed(1)  # the path-length probe noise
        w = ws.to(device).requires_grad_(True)
        pl, _ = PathLengthPenalty().to(device)(g.synthesis(w, noise_mode="const"), w)
        (r1 + pl).backward()
        results[device] = (r1, pl, next(d.parameters()).grad)
    for cuda_value, cpu_value in zip(results["cuda"], results["cpu"]):
        assert torch.isfinite(cuda_value).all()
    _close(results["cuda"][0], results["cpu"][0], atol=1e-4)
    assert results["cuda"][1] > 0


def test_animator_on_gpu_matches_cpu():
    """`animate run --device cuda`: the same frames as on the CPU, frame 0 the inversion, frames back on the CPU."""
    from animation.animator import Animator, AnimatorConfig, FaceAnimator
    from animation.faces import render_faces, sample_factors
    from animation.inversion import InversionEncoder
    from animation.stylegan2 import create_gan

    torch.manual_seed(0)
    G = create_gan("sg2-tiny16")[0].eval().requires_grad_(False)
    cfg = AnimatorConfig(h_dim=16, pixel_norm=False)
    animator = Animator(G, 8, cfg)
    encoder = InversionEncoder.for_generator(G, seed=0)

    def text_encoder(sentences):
        return torch.stack([torch.randn(8, generator=torch.Generator().manual_seed(len(s))) for s in sentences])

    faces = render_faces(sample_factors(2, 0), 16)
    texts = ["the person smiles", "she opens her mouth"]
    cpu = FaceAnimator(animator, encoder, text_encoder, invert_steps=5).animate(faces, texts, frames=6)
    gpu_runner = FaceAnimator(copy.deepcopy(animator).cuda(), copy.deepcopy(encoder).cuda(), text_encoder, 5)
    gpu = gpu_runner.animate(faces, texts, frames=6)
    assert gpu.device.type == "cpu" and gpu.shape == cpu.shape == (2, 6, 3, 16, 16)
    _close(gpu, cpu, atol=2e-3)
    assert (gpu[:, -1] - gpu[:, 0]).abs().amax() > 0  # it moves


@pytest.mark.parametrize("config", ["diffusion/digits-dit", "diffusion/digits-unet"])
def test_diffusion_loss_and_sampler_match_cpu(config, tmp_path):
    if "unet" in config:
        pytest.importorskip("diffusers")
    import hdvila  # noqa: F401  (registers the packaged recipe configs)
    from data_tools.config import load_config
    from diffusion.config import DiffusionConfig
    from diffusion.pipeline import generate
    from diffusion.train import DiffusionObjective, build_model

    cfg = load_config(DiffusionConfig, config, ["sampler.steps=8"])
    torch.manual_seed(0)
    model = build_model(cfg)
    images = torch.rand(8, model.config.channels, model.config.image_size, model.config.image_size) * 2 - 1
    batch = {"images": images, "labels": torch.arange(8) % max(1, model.config.num_classes)}
    out = {}
    for device in ("cpu", "cuda"):
        m = copy.deepcopy(model).to(device)
        objective = DiffusionObjective(cfg, m, None, tmp_path)
        terms = objective.loss(m, objective.prepare_batch(batch, torch.device(device)), step=3)
        terms["loss"].backward()
        grad = torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])
        samples = generate(m, cfg, 6, seed=5)
        out[device] = (terms["loss"], grad, samples)
    _close(out["cuda"][0], out["cpu"][0], atol=1e-4)
    _close(out["cuda"][1], out["cpu"][1], atol=1e-3, rtol=1e-2)
    assert out["cuda"][2].device.type == "cpu"
    _close(out["cuda"][2], out["cpu"][2], atol=2e-3, rtol=1e-2)


def test_spo_pairs_and_log_probs_match_cpu():
    """SPO's resampler and the transition densities on the GPU: noise is drawn on the CPU generator and moved, so the
    same seed gives the same pairs on both devices."""
    from diffusion.models import create_model
    from spo.collect import step_pairs
    from spo.policy import DenoiserPolicy
    from spo.scorers import load_scorer
    from spo.steps import ddim_transition, gaussian_log_prob

    torch.manual_seed(0)
    model = create_model("dit-digits", num_classes=10, width=32, depth=1, heads=2).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    results = {}
    for device in ("cpu", "cuda"):
        policy = DenoiserPolicy(copy.deepcopy(model).to(device), "v", steps=5, guidance=2.0)
        pairs, _ = step_pairs(policy, policy.model, load_scorer("oracle-crispness"), torch.arange(6), k=3,
                              divert_start=1, threshold=0.0, generator=torch.Generator().manual_seed(1))
        grid = torch.tensor(policy.grid, dtype=torch.float64)
        with torch.no_grad():
            x0, eps = policy.predict(policy.model, pairs.parent_win, grid[pairs.step].float(),
                                     policy.condition(pairs.prompt_ids))
        mean, std = ddim_transition(x0, eps, grid[pairs.step], grid[pairs.step + 1])
        results[device] = (pairs.win, gaussian_log_prob(pairs.win, mean, std))
    assert results["cuda"][0].device.type == "cuda"
    _close(results["cuda"][0], results["cpu"][0])
    _close(results["cuda"][1], results["cpu"][1], atol=1e-2)


def test_hdvila_mlm_static_path_on_gpu_matches_the_gathered_path_on_cpu():
    """On a GPU the MLM loss projects every position (no gather); it must equal the CPU's masked-only loss,
    and the masking drawn from a CPU generator must be the same tokens on both."""
    from hdvila.models import create_model
    from data_tools.loading.sampling import ClipSamplingConfig
    from data_tools.loading.synthetic import synthetic_clip_batch

    torch.manual_seed(0)
    model = create_model("hdvila-tiny").eval()
    v = model.config.video
    sampling = ClipSamplingConfig(n_segments=2, num_frm=v.num_frm, hr_size=tuple(v.hr_size), lr_factor=v.lr_factor)
    batch = synthetic_clip_batch(3, sampling, 24, model.config.text.vocab_size, seed=1)
    inputs = {k: batch[k] for k in ("hr", "lr", "input_ids", "attention_mask")}
    cpu = model.compute_losses(inputs, ("vtc", "mlm"), generator=torch.Generator().manual_seed(7))
    gpu_model = copy.deepcopy(model).cuda()
    gpu_inputs = {k: t.cuda() for k, t in inputs.items()}
    gpu = gpu_model.compute_losses(gpu_inputs, ("vtc", "mlm"), generator=torch.Generator().manual_seed(7))
    for key in ("vtc", "mlm", "loss"):
        _close(gpu[key], cpu[key])


def test_mask_tokens_on_gpu_from_a_cpu_generator_matches_cpu():
    from hdvila.models import mask_tokens

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 30522, (8, 40), generator=g)
    mask = torch.ones_like(ids)
    special = (0, 100, 101, 102, 103)
    cpu = mask_tokens(ids, mask, special, 103, 30522, 0.3, torch.Generator().manual_seed(4))
    gpu = mask_tokens(ids.cuda(), mask.cuda(), special, 103, 30522, 0.3, torch.Generator().manual_seed(4))
    for a, b in zip(gpu, cpu):
        assert a.device.type == "cuda" and torch.equal(a.cpu(), b)
