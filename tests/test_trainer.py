"""The shared trainer on CPU: param groups, schedule, loop, precision, ZeRO stages, multi-rank equivalence, resume.

In-process tests run DeepSpeed in this pytest process (a world of one on gloo; the process group then stays
up). Multi-rank and kill/resume tests launch tests/dist_helpers.py with torchrun, the deepspeed launcher or
plain python.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from data_tools.config import load_config
from data_tools.training import (BatchStream, OptimConfig, ParamGroupConfig, TrainConfig, Trainer, assign_param_groups,
                                 build_deepspeed_config, build_param_groups, build_scheduler, lr_factor)
from data_tools.training.optim import build_optimizer
from data_tools.training.checkpoint import read_latest_tag, safe_torch_load
from data_tools.training.metrics import MetricsWriter, read_metrics
from data_tools.training.trainer import DEEPSPEED_CONFIGS, cap_bucket_sizes

sys.path.insert(0, str(Path(__file__).parent))
import dist_helpers as H  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HELPER = REPO / "tests" / "dist_helpers.py"


@pytest.fixture(scope="module")
def deepspeed_ready():
    """Build DeepSpeed's CPU comm op once, before any rank (here or launched) needs it."""
    from data_tools.training.distributed import prebuild_deepspeed_ops

    prebuild_deepspeed_ops()


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("RANK", None)  # this pytest process may have exported a world of one
    env.pop("WORLD_SIZE", None)
    env.pop("LOCAL_RANK", None)
    env.pop("MASTER_PORT", None)
    return env


def _run(cmd: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--local-addr", "127.0.0.1",
            "--nproc_per_node", "2", str(HELPER), *args]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _deepspeed_launcher(*args: str) -> list[str]:
    launcher = Path(sys.executable).parent / "deepspeed"
    return [sys.executable, str(launcher), "--num_gpus", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(_free_port()), str(HELPER), *args]


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl")}


def _assert_same_losses(full: Path, resumed: Path, steps: int, compare_from: int) -> None:
    """The resumed run logged every step once, and from `compare_from` on its losses equal the uninterrupted run's."""
    expected, got = _losses(full), _losses(resumed)
    assert sorted(got) == list(range(1, steps + 1))
    for step in range(compare_from, steps + 1):
        assert got[step] == pytest.approx(expected[step], abs=1e-6), step


def _spawn(cmd: list[str], log_path: Path, **kwargs) -> subprocess.Popen:
    """Start a worker with its output in a file (a full pipe would stall it)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log_file:
        return subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=log_file, stderr=subprocess.STDOUT, **kwargs)


def _wait_for(paths: list[Path], proc: subprocess.Popen, log_path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        if proc.poll() is not None:
            raise AssertionError(f"worker exited early ({proc.returncode}):\n{log_path.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {paths}")
        time.sleep(0.1)


# --- optimiser: groups by name pattern and the schedule


class Named(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.text = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
        self.video = torch.nn.Linear(4, 4)
        self.subnet = torch.nn.Linear(4, 4)  # "bn" inside a name must not mean batch norm
        self.bn1 = torch.nn.BatchNorm1d(4)
        self.head = torch.nn.Linear(4, 2)
        self.frozen = torch.nn.Linear(4, 4)
        self.frozen.requires_grad_(False)
        self.logit_scale = torch.nn.Parameter(torch.ones(()))


def test_param_groups_by_pattern_lr_and_no_decay():
    model = Named()
    cfg = OptimConfig(lr=1e-3, weight_decay=0.1, param_groups=[
        ParamGroupConfig(name="text", pattern=r"^text\.", lr_scale=0.1),
        ParamGroupConfig(name="head", pattern=r"head|logit", lr=5e-3, weight_decay=0.2, betas=(0.0, 0.99)),
        ParamGroupConfig(name="unused", pattern=r"^nothing"),
    ])
    assignment = assign_param_groups(model, cfg)
    assert assignment == {
        "text.0.weight": "text", "text.0.bias": "text/no_decay",
        "text.1.weight": "text/no_decay", "text.1.bias": "text/no_decay",
        "video.weight": "default", "video.bias": "default/no_decay",
        "subnet.weight": "default", "subnet.bias": "default/no_decay",
        "bn1.weight": "default/no_decay", "bn1.bias": "default/no_decay",
        "head.weight": "head", "head.bias": "head/no_decay", "logit_scale": "head/no_decay",
    }  # frozen.* left out
    groups = {g["name"]: g for g in build_param_groups(model, cfg)}
    assert set(groups) == {"text", "text/no_decay", "head", "head/no_decay", "default", "default/no_decay"}
    assert groups["text"]["lr"] == pytest.approx(1e-4) and groups["text"]["weight_decay"] == 0.1
    assert groups["head"]["lr"] == 5e-3 and groups["head"]["weight_decay"] == 0.2
    assert groups["default"]["lr"] == 1e-3 and groups["default"]["weight_decay"] == 0.1
    assert groups["head"]["betas"] == groups["head/no_decay"]["betas"] == (0.0, 0.99)
    assert "betas" not in groups["text"]  # the optimizer's own betas
    optimizer = build_optimizer(model, cfg)
    assert [g["betas"] for g in optimizer.param_groups if g["name"] == "head"] == [(0.0, 0.99)]
    assert all(groups[n]["weight_decay"] == 0.0 for n in groups if n.endswith("/no_decay"))
    grouped = [p for g in groups.values() for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == 13
    assert not any(p is model.frozen.weight or p is model.frozen.bias for p in grouped)


def test_param_group_config_errors_and_yaml_overrides(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        build_param_groups(Named(), OptimConfig(param_groups=[ParamGroupConfig("a", "text", lr=1.0, lr_scale=2.0)]))
    with pytest.raises(ValueError, match="unique"):
        build_param_groups(Named(), OptimConfig(param_groups=[ParamGroupConfig("a", "x"), ParamGroupConfig("a", "y")]))

    @dataclass
    class Recipe:
        train: TrainConfig = field(default_factory=TrainConfig)
        optim: OptimConfig = field(default_factory=OptimConfig)

    path = tmp_path / "r.yaml"
    path.write_text("optim:\n  param_groups:\n    - {name: text, pattern: '^text\\.', lr_scale: 0.5}\n")
    cfg = load_config(Recipe, path, ["train.zero_stage=2", "train.precision=bf16", "optim.betas=[0.9, 0.95]"])
    assert cfg.optim.param_groups[0] == ParamGroupConfig(name="text", pattern=r"^text\.", lr_scale=0.5)
    assert cfg.train.zero_stage == 2 and cfg.optim.betas == (0.9, 0.95)


def test_schedule_warmup_and_decay_points():
    kw = dict(max_steps=110, warmup=10, min_lr_ratio=0.1)
    for schedule in ("linear", "cosine", "constant"):
        assert lr_factor(0, schedule=schedule, **kw) == pytest.approx(0.1)
        assert lr_factor(4, schedule=schedule, **kw) == pytest.approx(0.5)
        assert lr_factor(9, schedule=schedule, **kw) == pytest.approx(1.0)
        assert lr_factor(10, schedule=schedule, **kw) == pytest.approx(1.0)
    assert lr_factor(60, schedule="linear", **kw) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(60, schedule="cosine", **kw) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(35, schedule="cosine", **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + 2 ** -0.5))
    assert lr_factor(110, schedule="linear", **kw) == pytest.approx(0.1)
    assert lr_factor(500, schedule="cosine", **kw) == pytest.approx(0.1)
    assert lr_factor(60, schedule="constant", **kw) == 1.0

    # Through LambdaLR on real groups: each group follows the factor times its own peak lr.
    cfg = OptimConfig(lr=1e-2, warmup_ratio=0.1, schedule="linear", min_lr_ratio=0.0,
                      param_groups=[ParamGroupConfig("text", r"^text\.", lr_scale=0.1)])
    groups = build_param_groups(Named(), cfg)
    opt = torch.optim.SGD(groups, lr=cfg.lr)
    sched = build_scheduler(opt, cfg, max_steps=20)  # warmup = 2 steps
    seen = []
    for _ in range(20):
        seen.append({g["name"]: g["lr"] for g in opt.param_groups})
        opt.step()
        sched.step()
    assert seen[0]["default"] == pytest.approx(5e-3) and seen[0]["text"] == pytest.approx(5e-4)
    assert seen[1]["default"] == pytest.approx(1e-2)
    assert seen[11]["default"] == pytest.approx(1e-2 * (1 - 9 / 18))
    assert seen[19]["text"] == pytest.approx(1e-3 * (1 - 17 / 18))


def test_deepspeed_config_is_filled_from_train_config():
    cfg = TrainConfig(batch_size=3, grad_accum=2, grad_clip=0.5, precision="bf16", zero_stage=2)
    ds = build_deepspeed_config(cfg, torch.device("cpu"))
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["gradient_accumulation_steps"] == 2
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["zero_optimization"]["stage"] == 2 and "train_batch_size" not in ds
    assert cap_bucket_sizes(ds, 1000)["zero_optimization"]["reduce_bucket_size"] == 1000
    for stage in range(4):
        ds = build_deepspeed_config(TrainConfig(deepspeed_config=f"zero{stage}"),
                                    torch.device("cpu"))
        assert ds["zero_optimization"]["stage"] == stage
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        build_deepspeed_config(TrainConfig(precision="fp16"), torch.device("cpu"))


# --- data position and metrics file


class SkippableSource:
    def __init__(self, n: int):
        self.n, self.start, self.skips = n, 0, []

    def skip_batches(self, count: int) -> None:
        self.skips.append(count)
        self.start = count

    def __iter__(self):
        start, self.start = self.start, 0
        return iter([{"i": torch.tensor([i])} for i in range(start, self.n)])


def test_batch_stream_epochs_seek_and_skip_hook():
    epochs = []
    stream = BatchStream([{"i": i} for i in range(3)], epoch_setter=epochs.append)
    assert [stream.next()["i"] for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert epochs == [0, 1, 2] and (stream.epoch, stream.consumed) == (2, 1)

    resumed = BatchStream([{"i": i} for i in range(3)], epoch_setter=epochs.append)
    resumed.seek(2, 1)  # drawn and dropped
    assert epochs[-1] == 2 and resumed.next()["i"] == 1

    source = SkippableSource(5)
    hooked = BatchStream(source)
    hooked.seek(4, 3)
    assert source.skips == [3] and (hooked.epoch, hooked.consumed) == (4, 3)
    assert [int(hooked.next()["i"]) for _ in range(3)] == [3, 4, 0] and hooked.epoch == 5

    factory = BatchStream(lambda epoch: [{"e": epoch}] * 2)
    assert [factory.next()["e"] for _ in range(5)] == [0, 0, 1, 1, 2]
    with pytest.raises(RuntimeError, match="no batch"):
        BatchStream([]).next()


def test_metrics_writer_truncates_on_resume(tmp_path):
    writer = MetricsWriter(tmp_path, tensorboard=False)
    for step in range(1, 6):
        writer.write({"step": step, "loss": float(step)})
    writer.close()
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 6, "lo')  # torn line of a killed writer
    writer = MetricsWriter(tmp_path, resume_step=3, tensorboard=False)
    writer.write({"step": 4, "loss": 40.0})
    writer.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]


def test_training_curves_plot_the_keys_the_caller_names(tmp_path, monkeypatch):
    import matplotlib.axes

    from data_tools.training.metrics import plot_training_curves, save_figure

    writer = MetricsWriter(tmp_path, tensorboard=False)
    for step in range(1, 5):
        record = {"step": step, "loss": 3.0 / step, "rec": 2.0 / step, "adv": 1.0 / step, "lr": 0.1}
        if step % 2 == 0:
            record.update({"val/acc": 10.0 * step, "val/f1": 5.0 * step, "val/chance": 50.0})
        writer.write(record)
    writer.close()
    assert plot_training_curves(tmp_path / "missing.jsonl", tmp_path / "none.png") is None

    drawn: list[str] = []
    original = matplotlib.axes.Axes.plot

    def spy(self, *args, label=None, **kwargs):
        drawn.append(label)
        return original(self, *args, label=label, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    out = plot_training_curves(tmp_path / "metrics.jsonl", tmp_path / "plots" / "a.png",
                               loss_keys=("loss", "rec", "adv", "absent"), val_keys=("val/acc",),
                               val_label="accuracy (%)", chance_key="val/chance")
    assert out == tmp_path / "plots" / "a.png" and out.stat().st_size > 5_000
    assert drawn == ["loss", "rec", "adv", "acc"]
    drawn.clear()  # defaults: the total loss, and every logged val/ key but the chance level
    plot_training_curves(tmp_path / "metrics.jsonl", tmp_path / "b.png", chance_key="val/chance")
    assert drawn == ["loss", "acc", "f1"]

    import matplotlib.pyplot as plt

    fig = plt.figure()
    assert save_figure(fig, tmp_path / "fig.svg").read_text().lstrip().startswith("<?xml")
    assert not plt.get_fignums()  # closed


# --- the loop in this process (world of one)


def _regression_trainer(tmp_path, *, steps=30, batch_size=8, grad_accum=1, precision="fp32", optim=None,
                        data=None, seed=0, resume=False, data_state=None,
                        **train_kw) -> tuple[Trainer, H.MSEObjective, list[int]]:
    torch.manual_seed(seed)
    model = H.Regressor()
    objective = H.MSEObjective(val_batch=H.regression_batches(1, 16, seed=99)[0])
    epochs: list[int] = []
    cfg = TrainConfig(max_steps=steps, batch_size=batch_size, grad_accum=grad_accum, precision=precision,
                      seed=seed, progress=False, **train_kw)
    optim = optim or OptimConfig(lr=1e-2, warmup_steps=3, schedule="cosine", weight_decay=0.01,
                                 param_groups=[ParamGroupConfig("head", r"^head\.", lr_scale=0.5)])
    data = data if data is not None else H.regression_batches(4, batch_size)
    trainer = Trainer(cfg, optim, model, objective, data, tmp_path, epoch_setter=epochs.append, resume=resume,
                      data_state=data_state)
    return trainer, objective, epochs


class DataState:
    """Stands in for a data layer with skip counters and a resumable cursor."""

    def __init__(self):
        self.loaded: list[dict] = []

    def counts(self) -> dict[str, int]:
        return {"ok": 7, "decode_error": 1}

    def state_dict(self) -> dict:
        return {"cursor": 11}

    def load_state_dict(self, state: dict) -> None:
        self.loaded.append(state)


def test_tiny_model_trains_logs_and_exports(tmp_path, deepspeed_ready, caplog):
    trainer, objective, epochs = _regression_trainer(tmp_path, steps=30, log_every=5, val_every=10,
                                                     save_every=20, data_state=DataState())
    with caplog.at_level(logging.INFO, logger="data_tools.training.trainer"):
        last = trainer.fit()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [5, 10, 15, 20, 25, 30]
    for r in records:
        assert {"step", "loss", "mae", "lr", "lr/default", "lr/head", "samples_per_s", "epoch"} <= set(r)
        assert r["lr/head"] == pytest.approx(0.5 * r["lr/default"]) and r["samples_per_s"] > 0
        assert r["data/ok"] == 7 and r["data/decode_error"] == 1
    assert records[-1] == last and last["epoch"] == 7  # 4 batches per epoch, 30 steps
    assert records[-1]["loss"] < 0.5 * records[0]["loss"]
    assert objective.validated_at == [10, 20, 30]
    assert [r["step"] for r in records if "val/mse" in r] == [10, 20, 30]
    assert records[5]["val/mse"] < records[1]["val/mse"]
    assert epochs == list(range(8))
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert read_latest_tag(tmp_path / "checkpoints") == "step00000030"
    assert (tmp_path / "checkpoints" / "step00000020" / "mp_rank_00_model_states.pt").is_file()
    assert any("step 30/30" in m for m in caplog.messages)

    from safetensors.torch import load_file

    exported = load_file(trainer.export_weights(tmp_path / "model.safetensors"))
    module_state = trainer.engine.module.state_dict()
    assert set(exported) == set(module_state)
    for name, tensor in module_state.items():
        torch.testing.assert_close(exported[name], tensor)


class NoisyObjective(H.MSEObjective):
    """Draws from the global RNG in training (input noise) and in validation, as real recipes do."""

    def loss(self, model, batch, step):
        return super().loss(model, {"x": batch["x"] + 0.1 * torch.randn_like(batch["x"]), "y": batch["y"]}, step)

    def validate(self, model, step):
        torch.rand(1000)
        return super().validate(model, step)


def test_validation_does_not_change_training(tmp_path, deepspeed_ready):
    losses = {}
    for val_every in (0, 3):
        trainer, _, _ = _regression_trainer(tmp_path / f"val{val_every}", steps=9, log_every=1, val_every=val_every)
        trainer.objective = NoisyObjective(val_batch=H.regression_batches(1, 16, seed=99)[0])
        trainer.fit()
        losses[val_every] = [r["loss"] for r in read_metrics(tmp_path / f"val{val_every}" / "metrics.jsonl")]
    assert losses[0] == losses[3]


def test_grad_accumulation_equals_bigger_batch(tmp_path, deepspeed_ready):
    sgd = OptimConfig(name="sgd", lr=0.1, weight_decay=0.0, schedule="constant")
    big = H.regression_batches(1, 8, seed=5)
    halves = [{k: v[:4] for k, v in big[0].items()}, {k: v[4:] for k, v in big[0].items()}]
    results = []
    for batch_size, accum, data in ((4, 2, halves), (8, 1, big)):
        trainer, _, _ = _regression_trainer(tmp_path / f"b{batch_size}", steps=1, batch_size=batch_size,
                                            grad_accum=accum, optim=sgd, data=data, grad_clip=0.0,
                                            save_at_end=False)
        record = trainer.fit()
        results.append((record["loss"], {n: p.detach().clone() for n, p in trainer.engine.module.named_parameters()}))
    (loss_a, params_a), (loss_b, params_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    torch.manual_seed(0)
    initial = dict(H.Regressor().named_parameters())
    for name in params_a:
        torch.testing.assert_close(params_a[name], params_b[name], rtol=1e-5, atol=1e-6)
        if initial[name].requires_grad:
            assert not torch.equal(params_a[name], initial[name].detach()), name  # a real step happened


def test_bf16_trains_on_cpu(tmp_path, deepspeed_ready):
    trainer, _, _ = _regression_trainer(tmp_path, steps=25, precision="bf16", log_every=5, save_at_end=False)
    assert {p.dtype for p in trainer.engine.module.parameters()} == {torch.bfloat16}
    trainer.fit()
    losses = [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < 0.6 * losses[0]


def test_zero3_single_process_steps_saves_resumes_and_exports(tmp_path, deepspeed_ready, monkeypatch):
    ds_json = tmp_path / "zero3.json"
    config = json.loads((DEEPSPEED_CONFIGS / "zero3.json").read_text())
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # partition even tiny tensors
    ds_json.write_text(json.dumps(config))
    trainer, _, _ = _regression_trainer(tmp_path / "run", steps=3, deepspeed_config=str(ds_json), log_every=1,
                                        val_every=2, resume=True, data_state=DataState())  # nothing to resume yet
    assert trainer.step == 0
    assert all(hasattr(p, "ds_id") and p.numel() == 0 for p in trainer.engine.module.parameters())
    trainer.fit()
    from safetensors.torch import load_file

    weights = load_file(trainer.export_weights(tmp_path / "z3.safetensors"))
    assert {k: tuple(v.shape) for k, v in weights.items()} == {
        k: tuple(v.shape) for k, v in H.Regressor().state_dict().items()}

    loads = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    data_state = DataState()
    resumed, _, _ = _regression_trainer(tmp_path / "run", steps=5, deepspeed_config=str(ds_json), log_every=1,
                                        val_every=2, resume=True, data_state=data_state)
    monkeypatch.setattr(torch, "load", real_load)
    assert resumed.step == 3 and data_state.loaded == [{"cursor": 11}]
    assert loads and all(flag is True for flag in loads)  # every file DeepSpeed read went through weights_only
    resumed.fit()
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["step"] for r in records if "val/mse" in r] == [2, 4]


class Gadget:
    """Not plain data: a checkpoint holding one must not be unpickled."""


def test_checkpoint_loading_refuses_arbitrary_objects(tmp_path, deepspeed_ready):
    trainer, _, _ = _regression_trainer(tmp_path, steps=2)
    trainer.fit()
    state_file = tmp_path / "checkpoints" / "step00000002" / "mp_rank_00_model_states.pt"
    client = safe_torch_load(state_file)  # ours: plain data and DeepSpeed's own few classes
    assert isinstance(client["rank_states"][0]["rng"]["torch"], torch.Tensor)
    client["evil"] = Gadget()
    torch.save(client, state_file)
    again, _, _ = _regression_trainer(tmp_path, steps=4)
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        again.load_checkpoint()


# --- launched processes


def test_sigkill_after_checkpoint_then_resume_matches_uninterrupted(tmp_path, deepspeed_ready):
    """Deterministic CPU run, shuffling DataLoader, dropout, grad accumulation over epoch boundaries."""
    common = ["--max-steps", "10", "--save-every", "4", "--grad-accum", "2", "--loader", "dataloader",
              "--deterministic", "--zero", "1"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    reference = _spawn([sys.executable, str(HELPER), "train", "--out", str(full), *common], tmp_path / "full.log")
    victim = _spawn([sys.executable, str(HELPER), "train", "--out", str(killed), *common,
                     "--hang-after-checkpoint", "4"], tmp_path / "victim.log")
    try:
        _wait_for([killed / "checkpoint_done_0"], victim, tmp_path / "victim.log")
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL
        assert read_latest_tag(killed / "checkpoints") == "step00000004"
        assert sorted(_losses(killed)) == [1, 2, 3, 4]
        _run([sys.executable, str(HELPER), "train", "--out", str(killed), *common, "--resume"])
        assert reference.wait(timeout=180) == 0, (tmp_path / "full.log").read_text()[-4000:]
    finally:
        for proc in (victim, reference):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    _assert_same_losses(full, killed, steps=10, compare_from=5)
    epochs = {r["step"]: r["epoch"] for r in read_metrics(killed / "metrics.jsonl")}
    assert epochs[10] == 3  # 20 batches drawn, 5 per epoch


def test_two_ranks_equal_one_rank_with_twice_the_batch(tmp_path, deepspeed_ready):
    """ZeRO 0, 1, 2: loss, full gradients and SGD-updated parameters of 2 x B match 1 x 2B."""
    from hdvila.models.losses import contrastive_loss

    batch = 4
    _run(_torchrun("equiv", "--out", str(tmp_path), "--batch-size", str(batch), "--stages", "0", "1", "2"))
    model = H.make_dual_encoder(0)
    full = H.pair_batch(0, 0, 2 * batch)
    video, text = model(full["video"], full["text"])
    loss = contrastive_loss(video, text, H.ContrastiveObjective().temperature, gather=False)
    # Without the cross-rank gather each rank would see other negatives: make sure that differs.
    halves = [contrastive_loss(video[i:i + batch], text[i:i + batch], 0.1, gather=False) for i in (0, batch)]
    assert abs(float(sum(halves).detach()) / 2 - float(loss.detach())) > 1e-2
    loss.backward()
    opt = torch.optim.SGD(build_param_groups(model, OptimConfig(name="sgd", lr=0.5, weight_decay=0.01)), lr=0.5)
    opt.step()
    for stage, optimizer in ((0, "SGD"), (1, "DeepSpeedZeroOptimizer"), (2, "DeepSpeedZeroOptimizer")):
        got = torch.load(tmp_path / f"equiv_stage{stage}.pt", weights_only=True)
        assert got["world_size"] == 2 and got["optimizer"] == optimizer
        assert float(got["loss"]) == pytest.approx(float(loss.detach()), rel=1e-6)
        for name, param in model.named_parameters():
            torch.testing.assert_close(got["grads"][name], param.grad, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got["params"][name], param.detach(), rtol=1e-5, atol=1e-6)


def test_two_rank_zero1_checkpoint_is_collective_and_resumable(tmp_path, deepspeed_ready):
    """torchrun run killed after its step-3 checkpoint; resumed under the deepspeed launcher; same losses."""
    common = ["--max-steps", "6", "--save-every", "3", "--zero", "1", "--batch-size", "4"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    reference = _spawn(_torchrun("train", "--out", str(full), *common), tmp_path / "full.log")
    victim = _spawn(_torchrun("train", "--out", str(killed), *common, "--hang-after-checkpoint", "3"),
                    tmp_path / "victim.log", start_new_session=True)  # its own group: kill launcher and ranks
    try:
        _wait_for([killed / "checkpoint_done_0", killed / "checkpoint_done_1"], victim, tmp_path / "victim.log")
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
        tag_dir = killed / "checkpoints" / "step00000003"
        assert read_latest_tag(killed / "checkpoints") == "step00000003"
        assert sorted(p.name for p in tag_dir.iterdir()) == [
            "mp_rank_00_model_states.pt",
            "zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "zero_pp_rank_1_mp_rank_00_optim_states.pt",
        ]
        _run(_deepspeed_launcher("train", "--out", str(killed), *common, "--resume"))
        assert reference.wait(timeout=180) == 0, (tmp_path / "full.log").read_text()[-4000:]
    finally:
        if victim.poll() is None:
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait()
        if reference.poll() is None:
            reference.kill()
            reference.wait()
    _assert_same_losses(full, killed, steps=6, compare_from=1)
