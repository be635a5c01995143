"""`hdvila pretrain` end to end on tiny shards: run folder, validation, export, stage 2, torchrun."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from data_tools.config import load_config
from hdvila.models import HDVILA
from hdvila.recipes.pretrain import PretrainConfig, run_pretrain
from data_tools.training.metrics import read_metrics

from corpus_helpers import tiny_corpus_shards

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    return tiny_corpus_shards(root, {"train": root / "train", "heldout": root / "heldout"})


def tiny_overrides(shards: Path, out: Path, **extra) -> list[str]:
    items = {
        "data.train_shards": f"[{shards / 'train' / '*.tar'}]",
        "data.val_shards": f"[{shards / 'heldout' / '*.tar'}]",
        "data.num_workers": 0, "data.decode_timeout": 0, "data.backend": "pyav",
        "train.max_steps": 4, "train.batch_size": 2, "train.save_every": 2, "train.val_every": 2,
        "train.log_every": 1, "train.progress": "false", "output_dir": str(out),
    }
    items.update(extra)
    return [f"{k}={v}" for k, v in items.items()]


def test_stage1_run_folder_validation_and_export(tiny_shards, tmp_path):
    out = tmp_path / "run"
    cfg = load_config(PretrainConfig, "pretrain/tiny", tiny_overrides(tiny_shards, out))
    run_pretrain(cfg)
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["train"]["max_steps"] == 4 and resolved["model"] == "hdvila-tiny"
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for r in records:
        assert {"step", "loss", "vtc", "lr", "samples_per_s"} <= set(r)
        assert r["loss"] == pytest.approx(r["vtc"])
    validated = [r for r in records if "val/t2v_R@1" in r]
    assert [r["step"] for r in validated] == [2, 4]
    assert validated[-1]["val/clips"] == 4 and validated[-1]["val/chance_t2v_R@1"] == pytest.approx(25.0)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert (out / "checkpoints" / "latest").read_text().strip() == "step00000004"
    # the export loads without the trainer and embeds unit vectors
    model = HDVILA.from_pretrained(out / "pretrained")
    ids = torch.tensor([[2, 10, 11, 3, 0, 0]])
    emb, _ = model.encode_text(ids, (ids != 0).long())
    assert emb.shape == (1, model.config.embed_dim) and emb.norm().item() == pytest.approx(1.0, abs=1e-5)


def test_stage2_trains_only_the_cross_modal_part(tiny_shards, tmp_path):
    stage1 = tmp_path / "s1"
    run_pretrain(load_config(PretrainConfig, "pretrain/tiny",
                             tiny_overrides(tiny_shards, stage1, **{"train.max_steps": 1, "train.val_every": 0})))
    stage2 = tmp_path / "s2"
    run_pretrain(load_config(PretrainConfig, "pretrain/tiny", tiny_overrides(
        tiny_shards, stage2, recipe="stage2", init_from=str(stage1 / "pretrained"),
        **{"train.max_steps": 3, "train.val_every": 0, "optim.lr": 1e-2, "optim.warmup_ratio": 0.0})))
    records = read_metrics(stage2 / "metrics.jsonl")
    assert all("mlm" in r and "vtc" not in r for r in records)
    before = HDVILA.from_pretrained(stage1 / "pretrained").state_dict()
    after = HDVILA.from_pretrained(stage2 / "pretrained").state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "stage 2 changed nothing"
    assert all(k.startswith(("cross.", "mlm_head.", "vtm_head.")) for k in changed), sorted(changed)[:5]


def test_same_command_under_torchrun_with_zero2(tiny_shards, tmp_path):
    from data_tools.training.distributed import prebuild_deepspeed_ops

    prebuild_deepspeed_ops()
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29631",
           "-m", "hdvila.cli", "--quiet", "pretrain", "--config", "pretrain/tiny",
           *tiny_overrides(tiny_shards, out, **{"train.max_steps": 2, "train.val_every": 0,
                                                "train.deepspeed_config": "zero2"})]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert (out / "checkpoints" / "step00000002").is_dir() and (out / "pretrained" / "model.safetensors").exists()
    shards = sorted(p.name for p in (out / "checkpoints" / "step00000002").iterdir())
    assert sum("optim_states" in name for name in shards) == 2  # one ZeRO partition per rank


def test_bf16_trains_a_batchnorm_model_and_exports_fp32(tiny_shards, tmp_path):
    out = tmp_path / "bf16"
    run_pretrain(load_config(PretrainConfig, "pretrain/tiny", tiny_overrides(
        tiny_shards, out, **{"train.max_steps": 2, "train.val_every": 2, "train.precision": "bf16"})))
    records = read_metrics(out / "metrics.jsonl")
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert "val/t2v_R@1" in records[-1]
    model = HDVILA.from_pretrained(out / "pretrained")
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_resume_mid_epoch_matches_an_uninterrupted_run(tiny_shards, tmp_path):
    """The loader skips the consumed batches without decoding them and the losses continue exactly."""
    # a constant schedule, so that stopping the first run at step 3 changes nothing but where it stops
    common = {"train.val_every": 0, "train.deterministic": "true", "data.resampled": "true",
              "data.epoch_samples": 40, "data.num_workers": 2, "optim.schedule": "constant",
              "optim.warmup_ratio": 0.0}
    full = tmp_path / "full"
    run_pretrain(load_config(PretrainConfig, "pretrain/tiny", tiny_overrides(
        tiny_shards, full, **{**common, "train.max_steps": 5})))
    part = tmp_path / "part"
    overrides = tiny_overrides(tiny_shards, part, **{**common, "train.max_steps": 5})
    run_pretrain(load_config(PretrainConfig, "pretrain/tiny",
                             overrides + ["train.max_steps=3", "train.save_every=3"]))
    run_pretrain(load_config(PretrainConfig, "pretrain/tiny", overrides), resume=True)
    expected = {r["step"]: r["loss"] for r in read_metrics(full / "metrics.jsonl")}
    resumed = {r["step"]: r["loss"] for r in read_metrics(part / "metrics.jsonl")}
    assert sorted(resumed) == [1, 2, 3, 4, 5]
    for step in (4, 5):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("recipe, expected", [("joint", {"vtc", "mlm", "vtm"}), ("stage2", {"mlm", "vtm"})])
def test_vtm_adds_matching_and_scores_only_the_requested_losses(tiny_shards, tmp_path, recipe, expected):
    out = tmp_path / recipe
    run_pretrain(load_config(PretrainConfig, "pretrain/tiny", tiny_overrides(
        tiny_shards, out, recipe=recipe, vtm="true", export="false",
        **{"train.max_steps": 1, "train.val_every": 0})))
    record = read_metrics(out / "metrics.jsonl")[-1]
    assert {k for k in ("vtc", "mlm", "vtm") if k in record} == expected


def test_negative_queue_changes_the_loss_and_resumes_exactly(tiny_shards, tmp_path):
    """With remembered negatives the losses after step 1 differ from plain in-batch training, and a run
    resumed from a checkpoint continues with the same queue (it is saved with the objective's state)."""
    common = {"train.val_every": 0, "train.deterministic": "true", "data.resampled": "true",
              "data.epoch_samples": 40, "data.num_workers": 0, "optim.schedule": "constant",
              "optim.warmup_ratio": 0.0, "export": "false", "train.max_steps": 4}
    plain, full, part = tmp_path / "plain", tmp_path / "full", tmp_path / "part"
    run_pretrain(load_config(PretrainConfig, "pretrain/tiny", tiny_overrides(tiny_shards, plain, **common)))
    queued = {**common, "negative_queue": 6}
    run_pretrain(load_config(PretrainConfig, "pretrain/tiny", tiny_overrides(tiny_shards, full, **queued)))
    overrides = tiny_overrides(tiny_shards, part, **queued)
    run_pretrain(load_config(PretrainConfig, "pretrain/tiny", overrides + ["train.max_steps=2", "train.save_every=2"]))
    run_pretrain(load_config(PretrainConfig, "pretrain/tiny", overrides), resume=True)
    base = {r["step"]: r["loss"] for r in read_metrics(plain / "metrics.jsonl")}
    expected = {r["step"]: r["loss"] for r in read_metrics(full / "metrics.jsonl")}
    resumed = {r["step"]: r["loss"] for r in read_metrics(part / "metrics.jsonl")}
    assert expected[1] == pytest.approx(base[1], rel=1e-6)  # the queue starts empty
    assert all(abs(expected[s] - base[s]) > 1e-4 for s in (2, 3, 4))
    for step in (3, 4):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7)
