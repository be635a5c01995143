"""The SPO recipe end to end on a tiny base: a short run raises the preferred score, LoRA trains adapters only,
trajectory DPO and winner-continue run on the same trainer, compute is counted, a run resumes, the CLI works."""
from __future__ import annotations

import json

import pytest
import torch

from data_tools.config import ConfigError, load_config
from data_tools.training.metrics import read_metrics
from diffusion.pipeline import DiffusionPipeline
from hdvila.cli import main as cli_main
from spo.collect import sample_chain
from spo.policy import DenoiserPolicy
from spo.preference import stroke_crispness
from spo.train import SPOConfig

TINY_DIT = "model_overrides={width: 32, depth: 1, heads: 2}"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("spo") / "base"
    assert cli_main(["--quiet", "diffusion", "train", "--config", "spo/digits-base", f"output_dir={out}", TINY_DIT,
                     "train.max_steps=150", "train.val_every=0", "train.save_every=0", "train.log_every=50"]) == 0
    return out / "model"


def spo_train(base, out, *overrides):
    args = ["--quiet", "spo", "train", "--config", "spo/digits", f"base={base}", f"output_dir={out}",
            "scorer=oracle-crispness", "train.batch_size=8", "train.val_every=0", "train.log_every=1",
            "steps=5", "divert_start=1", "k=3", *overrides]
    assert cli_main(args) == 0
    return out


def crispness_of(model_dir, n=200):
    policy = DenoiserPolicy.from_pipeline(DiffusionPipeline.from_pretrained(model_dir), 5)
    images = sample_chain(policy, policy.model, torch.arange(n) % 10, torch.Generator().manual_seed(99))[1]
    return float(stroke_crispness(images).mean())


def test_a_tiny_spo_run_raises_the_preferred_score(base, tmp_path):
    out = spo_train(base, tmp_path / "spo", "train.max_steps=30", "optim.lr=1e-3", "threshold=0.1")
    records = read_metrics(out / "metrics.jsonl")
    assert records[-1]["step"] == 30 and all(r["rows"] > 0 for r in records)
    before, after = crispness_of(base), crispness_of(out / "model")
    assert after > before + 0.01, (before, after)


def test_lora_trains_the_adapters_only(base, tmp_path):
    out = spo_train(base, tmp_path / "lora", "finetune=lora", "train.max_steps=4", "optim.lr=1e-2")
    adapter = out / "lora"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 4 and "mlp" in str(config["target_modules"])
    merged = DiffusionPipeline.from_pretrained(out / "model").model.state_dict()
    original = DiffusionPipeline.from_pretrained(base).model.state_dict()
    changed = {k for k in original if not torch.equal(original[k], merged[k])}
    assert changed and all(".mlp." in k or ".ada." in k for k in changed)  # only layers that carry adapters


def test_kl_term_holds_the_policy_near_the_reference(base, tmp_path):
    def drift(out):
        tuned = DiffusionPipeline.from_pretrained(out / "model").model.state_dict()
        original = DiffusionPipeline.from_pretrained(base).model.state_dict()
        return sum(float((tuned[k] - original[k]).pow(2).sum()) for k in original) ** 0.5

    common = ["train.max_steps=12", "optim.lr=1e-3", "threshold=0.0"]
    free = spo_train(base, tmp_path / "free", *common)
    held = spo_train(base, tmp_path / "held", *common, "kl=1000")
    records = read_metrics(held / "metrics.jsonl")
    assert all(r["kl"] >= 0 for r in records) and records[-1]["kl"] > 0
    assert read_metrics(free / "metrics.jsonl")[0]["kl"] == pytest.approx(0.0, abs=1e-9)  # step 1: θ = reference
    assert drift(held) < 0.7 * drift(free), (drift(held), drift(free))


@pytest.mark.parametrize("overrides, shared_parent", [(["method=trajectory_dpo"], False),
                                                       (["continue_rule=winner"], True)])
def test_baselines_and_ablations_run_and_count_compute(base, tmp_path, overrides, shared_parent):
    out = spo_train(base, tmp_path / "arm", "train.max_steps=2", "threshold=0.0", *overrides)
    records = read_metrics(out / "metrics.jsonl")
    steps, b, k, divert = 5, 8, 3, 1
    sampling = b * (divert + 1 + k * (steps - divert)) * 2 if shared_parent else 2 * b * (steps + 1) * 2
    pairs = b * (steps - divert) if shared_parent else b * steps
    parents = 1 if shared_parent else 2
    training = pairs * parents * 2 * 3 + pairs * parents * 2  # policy forward + backward (x3), reference
    first = records[0]
    assert first["keep_rate"] == pytest.approx(1.0)
    assert first["rows"] == pytest.approx(sampling + training)


def test_resume_restores_the_compute_count(base, tmp_path):
    # threshold 0 keeps every pair, so every step costs the same rows; validation with no samples logs the count
    counting = ["train.save_every=2", "threshold=0.0", "train.val_every=1", "eval.samples=0"]
    out = spo_train(base, tmp_path / "resume", "train.max_steps=2", *counting)
    records = read_metrics(out / "metrics.jsonl")
    done = records[-1]["val/nfe"]
    assert done == pytest.approx(records[0]["rows"] + records[1]["rows"])
    spo_train(base, out, "train.max_steps=3", *counting, "--resume")
    records = read_metrics(out / "metrics.jsonl")
    assert records[-1]["step"] == 3 and records[-1]["val/nfe"] == pytest.approx(1.5 * done)  # counted on, not anew


def test_eval_cli_scores_a_model(base, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the digits classifier's cache is a relative folder
    out = tmp_path / "metrics.json"
    assert cli_main(["--quiet", "spo", "eval", "--model", str(base), "--samples", "40", "--steps", "5",
                     "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert set(metrics) >= {"crispness", "centring", "class_accuracy", "fd"} and metrics["samples"] == 40


def test_config_checks():
    cases = [(["method=dpo"], "method"), (["continue_rule=best"], "continue_rule"), (["k=1"], "k >= 2"),
             (["divert_start=10"], "divert_start"), (["clip=1.5"], "clip"), (["threshold=1.0"], "threshold"),
             (["base_kind=stable-diffusion"], "lora"), (["finetune=qlora"], "finetune"),
             (["dpo_threshold=-0.1"], "dpo_threshold"), (["kl=-1"], "kl >= 0")]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            load_config(SPOConfig, "spo/digits", overrides)


def test_unknown_scorer_is_a_clear_error(tmp_path):
    from spo.scorers import load_scorer

    with pytest.raises(FileNotFoundError, match="oracle-crispness"):
        load_scorer(str(tmp_path / "missing"))
