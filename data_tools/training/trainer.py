"""The one training loop every recipe uses: a model, an Objective and a data stream under a DeepSpeed engine.

    trainer = Trainer(cfg.train, cfg.optim, model, MyObjective(), loader, run_dir,
                      epoch_setter=dataset.set_epoch, data_state=dataset, resume=args.resume)
    trainer.fit()
    trainer.export_weights(run_dir / "model.safetensors")

The objective receives the DeepSpeed engine as `model`: call `model(...)` for the training forward (the engine
hooks its backward bookkeeping onto the outputs of that call) and reach other attributes via `model.module`.
Launch the same script alone (`python train.py`), with `torchrun --nproc_per_node N train.py`, or with
`deepspeed --num_gpus N train.py` (that launcher adds `--local_rank=K` to argv; parse it or ignore it).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Union, runtime_checkable

import torch
from torch import nn

from .. import cpu as cpu_features
from ..config import find_named_file
from . import distributed as D
from .checkpoint import (capture_rng_state, export_weights, fsync_tree, install_safe_loader, read_latest_tag,
                         restore_rng_state, step_tag, write_latest_tag)
from .config import OptimConfig, TrainConfig
from .metrics import MetricsWriter
from .optim import NO_DECAY_SUFFIX, build_optimizer, build_scheduler

log = logging.getLogger(__name__)

DEEPSPEED_CONFIGS = Path(__file__).resolve().parent / "deepspeed"  # zero0.json .. zero3.json, package data
CHECKPOINT_DIR = "checkpoints"
CLIENT_STATE_FORMAT = 1

DataSource = Union[Iterable[dict], Callable[[int], Iterable[dict]]]


@runtime_checkable
class Objective(Protocol):
    """What a recipe supplies. Only `loss` is required.

    Optional hooks, looked up by name:
        prepare_batch(batch, device) -> batch        default: move tensors (also nested) to device
        after_step(model, step) -> None              after every optimizer step (e.g. an EMA update)
        validate(model, step) -> dict[str, float]    every train.val_every steps on all ranks, under no_grad;
                                                     rank 0's values are logged as "val/<key>"
        state_dict() -> dict / load_state_dict(d)    the objective's own state (e.g. EMA weights: tensors and
                                                     plain data), saved in and restored from checkpoints
    """

    def loss(self, model: nn.Module, batch: dict, step: int) -> dict[str, torch.Tensor]:
        """Scalar "loss" to minimise plus any other scalars to log; `step` = optimizer steps done so far."""
        ...


def move_to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: move_to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to_device(v, device) for v in obj)
    return obj


def batch_length(batch: Any, default: int) -> int:
    """Samples in a batch: the leading size of its first tensor."""
    values = batch.values() if isinstance(batch, dict) else [batch]
    for value in values:
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return int(value.shape[0])
    return default


class BatchStream:
    """Endless batches from a finite data source, epoch after epoch, knowing its position.

    `data` is an iterable (re-iterated each epoch after `epoch_setter(epoch)`) or a factory `epoch -> iterable`.
    To resume, `seek(epoch, consumed)` re-opens that epoch and skips the consumed batches: through the source's
    `skip_batches(n)` if it has one (called before iterating), else by drawing and dropping them. The RNG state
    at the start of each epoch is kept, because sources such as a shuffling DataLoader draw their order from
    the global generator when iterated.
    """

    def __init__(self, data: DataSource, epoch_setter: Callable[[int], Any] | None = None):
        self.data = data
        self.is_factory = callable(data) and not hasattr(data, "__iter__")
        self.epoch_setter = epoch_setter
        self.epoch = 0
        self.consumed = 0
        self.epoch_start_rng: dict[str, Any] | None = None
        self._iterator: Iterator[dict] | None = None

    def _open(self, epoch: int, skip: int = 0) -> None:
        self.epoch_start_rng = capture_rng_state()
        if self.is_factory:
            source = self.data(epoch)
        else:
            if self.epoch_setter is not None:
                self.epoch_setter(epoch)
            source = self.data
        self.epoch, self.consumed = epoch, 0
        if skip and hasattr(source, "skip_batches"):
            source.skip_batches(skip)
            self._iterator, self.consumed = iter(source), skip
            return
        self._iterator = iter(source)
        for _ in range(skip):
            try:
                next(self._iterator)
            except StopIteration:
                break  # the checkpoint was taken at the very end of the epoch
            self.consumed += 1

    def seek(self, epoch: int, consumed: int, epoch_start_rng: dict[str, Any] | None = None) -> None:
        if epoch_start_rng is not None:
            restore_rng_state(epoch_start_rng)
        self._open(epoch, skip=consumed)

    def next(self) -> dict:
        if self._iterator is None:
            self._open(self.epoch)
        fresh = False
        while True:
            try:
                batch = next(self._iterator)
            except StopIteration:
                if fresh:
                    raise RuntimeError(f"the data source yielded no batch in epoch {self.epoch}") from None
                self._open(self.epoch + 1)
                fresh = True
                continue
            self.consumed += 1
            return batch


def resolve_deepspeed_config(name_or_path: str | os.PathLike) -> Path:
    """An existing JSON file, or a name (`zero1` or `zero1.json`) of the JSONs shipped in DEEPSPEED_CONFIGS."""
    try:
        return find_named_file(name_or_path, [DEEPSPEED_CONFIGS], (".json",))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"DeepSpeed config not found: {exc}") from None


def zero_stage_of(cfg: TrainConfig) -> int:
    """The ZeRO stage a run will use: train.zero_stage, else the stage in its DeepSpeed JSON (0 if none)."""
    if cfg.zero_stage is not None:
        return int(cfg.zero_stage)
    ds = json.loads(resolve_deepspeed_config(cfg.deepspeed_config).read_text(encoding="utf-8"))
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def build_deepspeed_config(cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    """The DeepSpeed JSON (a shipped name such as zero1, or a file) with batch sizes, clipping, precision and the
    ZeRO stage filled in."""
    path = resolve_deepspeed_config(cfg.deepspeed_config)
    ds = json.loads(path.read_text(encoding="utf-8"))
    for section in ("optimizer", "scheduler"):
        if section in ds:
            raise ValueError(f"{path}: remove '{section}'; the trainer builds it from the optim config")
    if cfg.precision == "fp16" and device.type == "cpu":
        raise ValueError("precision fp16 needs a GPU; use bf16 or fp32 on CPU")
    if cfg.precision == "bf16" and device.type == "cpu" and not cpu_features.has_amx_bf16():
        # without AMX, bf16 speed depends on the CPU: one with avx512_bf16 ran a step ~13x slower than fp32
        log.warning("precision bf16 on a CPU without AMX (no amx_bf16 in /proc/cpuinfo flags): bf16 matrix "
                    "products have no AMX tiles here and a step can be many times slower than fp32 (~13x on "
                    "one CPU with avx512_bf16); measure it (benchmarks/bench_train.py) or use train.precision=fp32")
    ds.pop("train_batch_size", None)  # DeepSpeed derives it from the two below and the world size
    ds["train_micro_batch_size_per_gpu"] = cfg.batch_size
    ds["gradient_accumulation_steps"] = cfg.grad_accum
    ds["gradient_clipping"] = float(cfg.grad_clip)
    if cfg.zero_stage is not None:
        ds.setdefault("zero_optimization", {})["stage"] = int(cfg.zero_stage)
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": cfg.precision == "bf16"}
    fp16 = {"loss_scale": 0, "initial_scale_power": 16}
    ds["fp16"] = {**fp16, **ds.get("fp16", {}), "enabled": cfg.precision == "fp16"}
    ds.setdefault("zero_allow_untested_optimizer", True)  # we pass a torch optimizer on purpose
    ds.setdefault("steps_per_print", 10**9)  # the trainer does its own logging
    return ds


def cap_bucket_sizes(ds: dict[str, Any], trainable_params: int) -> dict[str, Any]:
    """Shrink ZeRO's communication buckets to the model size when the model is smaller.

    ZeRO-1/2 allocates a fresh reduce bucket (default 5e8 elements, 2 GB in fp32) every micro-step; on the
    CPU that is a new allocation each time, and under torch.use_deterministic_algorithms it is also filled
    with NaN, which made a tiny model's step take ~0.4 s. A bucket larger than the model buys nothing.
    """
    zero = ds.setdefault("zero_optimization", {})
    if int(zero.get("stage", 0)) == 0:
        return ds
    limit = max(1, int(trainable_params))
    for key in ("reduce_bucket_size", "allgather_bucket_size"):
        zero[key] = int(min(float(zero.get(key, 5e8)), limit))
    return ds


def _set_deterministic() -> None:
    # cuBLAS needs this before its first call to be deterministic.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def _cast_float_buffers(module: nn.Module, dtype: torch.dtype) -> None:
    """DeepSpeed's bf16/fp16 modes cast parameters but not buffers; BatchNorm then meets bf16 activations
    and weights with fp32 running statistics and fails. Give floating-point buffers the parameters' dtype."""
    for sub in module.modules():
        for name, buf in list(sub.named_buffers(recurse=False)):
            if buf is not None and buf.is_floating_point() and buf.dtype != dtype:
                setattr(sub, name, buf.to(dtype))


class Trainer:
    """Runs `objective` on `model` over `data` for `cfg.max_steps` optimizer steps under DeepSpeed.

    Writes into `output_dir`: metrics.jsonl and tensorboard/ (rank 0), checkpoints/<tag>/ via DeepSpeed's
    collective save plus an atomically written checkpoints/latest. With `resume=True` it continues from
    checkpoints/latest (model, optimizer, scheduler, step, data position, every rank's RNG state), or starts
    fresh if there is none. `data_state`, if given, may offer `state_dict()`/`load_state_dict()` (plain data,
    per rank, saved with checkpoints) and `counts()` (ints, logged as "data/<key>").
    """

    def __init__(self, cfg: TrainConfig, optim: OptimConfig, model: nn.Module, objective: Objective,
                 data: DataSource, output_dir: str | os.PathLike, *,
                 epoch_setter: Callable[[int], Any] | None = None, data_state: Any = None, resume: bool = False):
        if cfg.batch_size < 1 or cfg.grad_accum < 1 or cfg.max_steps < 0:
            raise ValueError("batch_size and grad_accum must be >= 1 and max_steps >= 0")
        self.cfg, self.optim_cfg = cfg, optim
        self.objective = objective
        self.output_dir = Path(output_dir)
        self.checkpoint_dir = self.output_dir / CHECKPOINT_DIR
        self.data_state = data_state
        D.init_distributed()
        self.rank, self.world_size = D.rank(), D.world_size()
        self.is_main = self.rank == 0
        _quiet_deepspeed(cfg.deepspeed_log_level)
        if cfg.deterministic:
            _set_deterministic()
        D.seed_everything(cfg.seed + self.rank)
        self.device = D.pick_device()
        self.engine = self.build_engine(model)
        self.stream = BatchStream(data, epoch_setter)
        self.step = 0
        self.last_saved_step: int | None = None
        self._window = self._empty_window()
        self._window_start = time.perf_counter()
        resumed = self.load_checkpoint() if resume else False
        if resume and not resumed:
            log.warning("resume requested but %s holds no checkpoint; starting from step 0", self.checkpoint_dir)
        self.metrics = (MetricsWriter(self.output_dir, resume_step=self.step if resumed else None)
                        if self.is_main else None)
        self._closed = False

    # --- engine

    def build_engine(self, model: nn.Module) -> Any:
        """Optimizer, schedule and DeepSpeed engine in one place (a GAN recipe overrides this to build several)."""
        import deepspeed

        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        ds_config = cap_bucket_sizes(build_deepspeed_config(self.cfg, self.device), trainable)
        self.optimizer = build_optimizer(model, self.optim_cfg)
        self.lr_scheduler = build_scheduler(self.optimizer, self.optim_cfg, self.cfg.max_steps)
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=self.optimizer,
                                               lr_scheduler=self.lr_scheduler, config=ds_config)
        install_safe_loader(engine)
        if self.cfg.precision in ("bf16", "fp16"):
            _cast_float_buffers(engine.module, torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16)
        if self.cfg.compile:
            engine.compile()
        return engine

    def _autocast(self) -> contextlib.AbstractContextManager:
        # DeepSpeed's bf16/fp16 modes cast the weights; autocast lets fp32 inputs meet them.
        if self.cfg.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        if self.cfg.precision == "fp16":
            return torch.autocast(self.device.type, dtype=torch.float16)
        return contextlib.nullcontext()

    def _prepare(self, batch: dict) -> dict:
        hook = getattr(self.objective, "prepare_batch", None)
        return hook(batch, self.device) if hook is not None else move_to_device(batch, self.device)

    # --- loop

    def fit(self) -> dict[str, Any] | None:
        """Train until cfg.max_steps; returns the last logged record (rank 0) or None."""
        from tqdm import tqdm

        if self._closed:
            raise RuntimeError("fit() already ran on this Trainer; build a new one with resume=True to go on")
        cfg = self.cfg
        last_record = None
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not (self.is_main and cfg.progress),
                   dynamic_ncols=True, desc="train")
        self._window_start = time.perf_counter()
        try:
            while self.step < cfg.max_steps:
                self._train_step()
                self.step += 1
                after_step = getattr(self.objective, "after_step", None)
                if after_step is not None:
                    after_step(self.engine, self.step)
                bar.update(1)
                val = self._maybe_validate()
                if val is not None or self.step % max(1, cfg.log_every) == 0 or self.step == cfg.max_steps:
                    record = self._log(val)
                    if record is not None:
                        last_record = record
                        bar.set_postfix(loss=f"{record['loss']:.4f}", samples_s=f"{record['samples_per_s']:.1f}")
                if cfg.save_every > 0 and self.step % cfg.save_every == 0:
                    self.save_checkpoint()
            if cfg.save_at_end and self.last_saved_step != self.step:
                self.save_checkpoint()
        finally:
            bar.close()
            self.close()
        return last_record

    def _train_step(self) -> None:
        engine = self.engine
        engine.train()
        lrs = self.learning_rates()  # the rates this update uses; the scheduler moves on inside engine.step()
        sums: dict[str, torch.Tensor] = {}
        samples = 0
        for _ in range(self.cfg.grad_accum):
            batch = self._prepare(self.stream.next())
            samples += batch_length(batch, self.cfg.batch_size)
            with self._autocast():
                out = self.objective.loss(engine, batch, self.step)
            if "loss" not in out:
                raise KeyError("objective.loss must return a dict with a 'loss' entry")
            engine.backward(out["loss"])
            engine.step()
            for key, value in out.items():
                value = torch.as_tensor(value).detach().float().to(self.device)
                sums[key] = sums[key] + value if key in sums else value
        window = self._window
        for key, value in sums.items():  # an objective may log a key on some steps only (GAN phases)
            mean = value / self.cfg.grad_accum
            window["sums"][key] = window["sums"][key] + mean if key in window["sums"] else mean
            window["counts"][key] = window["counts"].get(key, 0) + 1
        window["steps"] += 1
        window["samples"] += samples
        window["lrs"] = lrs

    @staticmethod
    def _empty_window() -> dict[str, Any]:
        return {"sums": {}, "counts": {}, "steps": 0, "samples": 0, "lrs": {}}

    def _maybe_validate(self) -> dict[str, float] | None:
        hook = getattr(self.objective, "validate", None)
        if hook is None or self.cfg.val_every <= 0 or self.step % self.cfg.val_every != 0:
            return None
        self.engine.eval()
        # validation must not move training's random streams: the same run gives the same weights whether or
        # how often it validates (a validation loader's worker seeds, noise for samples...)
        rng = capture_rng_state()
        try:
            with torch.no_grad(), self._autocast():
                values = hook(self.engine, self.step) or {}
        finally:
            restore_rng_state(rng)
        self.engine.train()
        return {key: float(value) for key, value in values.items()}

    def _log(self, val: dict[str, float] | None) -> dict[str, Any] | None:
        """Mean of each logged scalar over the steps since the last log and over ranks (a collective)."""
        window = self._window
        keys = sorted(window["sums"])
        vector = torch.stack([window["sums"][k] / window["counts"][k] for k in keys]
                             + [torch.tensor(float(window["samples"]), device=self.device)])
        if self.world_size > 1:
            torch.distributed.all_reduce(vector)
            vector[:-1] /= self.world_size
        values = vector.tolist()
        lrs = window["lrs"] or self.learning_rates()
        elapsed = max(time.perf_counter() - self._window_start, 1e-9)
        samples_per_s = values[-1] / elapsed
        self._window = self._empty_window()
        self._window_start = time.perf_counter()
        if not self.is_main:
            return None
        record: dict[str, Any] = {"step": self.step, "epoch": self.stream.epoch}
        record.update(zip(keys, values[:-1]))
        record.update(lrs)
        record["samples_per_s"] = samples_per_s
        if val:
            record.update({f"val/{k}": v for k, v in val.items()})
        counts = getattr(self.data_state, "counts", None)
        if callable(counts):
            record.update({f"data/{k}": int(v) for k, v in counts().items()})
        self.metrics.write(record)
        # the progress bar already shows loss and speed; without it, the log line is the heartbeat
        log.log(logging.DEBUG if self.cfg.progress else logging.INFO, "step %d/%d loss %.4f lr %.3g %.1f samples/s",
                self.step, self.cfg.max_steps, record["loss"], record["lr"], samples_per_s)
        return record

    def learning_rates(self) -> dict[str, float]:
        """{"lr": default group's lr (else the first group's), "lr/<group>": each configured group's lr}."""
        rates: dict[str, float] = {}
        for group in self.optimizer.param_groups:
            name = str(group.get("name", "default")).removesuffix(NO_DECAY_SUFFIX)
            rates.setdefault(f"lr/{name}", float(group["lr"]))
        rates["lr"] = rates.get("lr/default", next(iter(rates.values())))
        return rates

    # --- checkpoints

    def _rank_state(self) -> dict[str, Any]:
        window = self._window
        state = {
            "rng": capture_rng_state(),
            "epoch_start_rng": self.stream.epoch_start_rng,
            # each rank's own position: ranks can hold different numbers of batches per epoch
            "epoch": self.stream.epoch,
            "batches_in_epoch": self.stream.consumed,
            "window": {"sums": {k: float(v) for k, v in window["sums"].items()},
                       "counts": dict(window["counts"]), "steps": window["steps"], "samples": window["samples"], "lrs": dict(window["lrs"])},
        }
        data_state_dict = getattr(self.data_state, "state_dict", None)
        if callable(data_state_dict):
            state["data_state"] = data_state_dict()
        return state

    def save_checkpoint(self) -> Path:
        """Collective: every rank writes its part; `latest` moves only once all parts are on disk."""
        tag = step_tag(self.step)
        client_state = {
            "format": CLIENT_STATE_FORMAT,
            "step": self.step,
            "epoch": self.stream.epoch,
            "batches_in_epoch": self.stream.consumed,
            "world_size": self.world_size,
            "rank_states": D.all_gather_objects(self._rank_state()),
        }
        objective_state = getattr(self.objective, "state_dict", None)
        if callable(objective_state):
            client_state["objective_state"] = objective_state()
        self.engine.save_checkpoint(str(self.checkpoint_dir), tag=tag, client_state=client_state,
                                    save_latest=False)
        path = self.checkpoint_dir / tag
        fsync_tree(path)
        D.barrier()
        if self.is_main:
            write_latest_tag(self.checkpoint_dir, tag)
        D.barrier()
        self.last_saved_step = self.step
        log.info("saved checkpoint %s", path)
        self.after_checkpoint(self.step, path)
        return path

    def after_checkpoint(self, step: int, path: Path) -> None:
        """Called on every rank once checkpoint `path` is complete and `latest` names it. No-op by default."""

    def load_checkpoint(self, tag: str | None = None) -> bool:
        """Restore from checkpoints/<tag> (default: the `latest` one); False if there is none."""
        tag = tag or read_latest_tag(self.checkpoint_dir)
        if tag is None:
            return False
        path, client = self.engine.load_checkpoint(str(self.checkpoint_dir), tag=tag)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {self.checkpoint_dir / tag}")
        if client.get("format") != CLIENT_STATE_FORMAT:
            raise RuntimeError(f"{path}: unknown client state format {client.get('format')!r}")
        self.step = self.last_saved_step = int(client["step"])
        if "objective_state" in client and hasattr(self.objective, "load_state_dict"):
            self.objective.load_state_dict(client["objective_state"])
        states = client["rank_states"]
        mine = states[self.rank] if int(client["world_size"]) == self.world_size else None
        if mine is None:
            log.warning("checkpoint was written by %s ranks, now %s: data order and RNG streams restart",
                        client["world_size"], self.world_size)
        if mine is not None and "data_state" in mine and hasattr(self.data_state, "load_state_dict"):
            self.data_state.load_state_dict(mine["data_state"])
        position = mine if mine is not None and "batches_in_epoch" in mine else client
        self.stream.seek(int(position["epoch"]), int(position["batches_in_epoch"]),
                         mine["epoch_start_rng"] if mine is not None else None)
        if mine is not None:
            window = mine["window"]
            self._window = {
                "sums": {k: torch.tensor(v, dtype=torch.float32, device=self.device)
                         for k, v in window["sums"].items()},
                # older checkpoints kept no counts: every key was logged on every step then
                "counts": {k: int(window.get("counts", {}).get(k, window["steps"])) for k in window["sums"]},
                "steps": int(window["steps"]), "samples": int(window["samples"]),
                "lrs": {k: float(v) for k, v in window["lrs"].items()},
            }
            restore_rng_state(mine["rng"])
        else:
            D.seed_everything(self.cfg.seed + self.rank + 7919 * self.step)
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step, self.stream.epoch,
                 self.stream.consumed)
        return True

    # --- output

    def export_weights(self, path: str | os.PathLike) -> Path | None:
        """Collective: module weights (gathered under ZeRO-3) as safetensors, written atomically by rank 0."""
        return export_weights(self.engine, path, metadata={"step": str(self.step)})

    def close(self) -> None:
        """Close metrics.jsonl and TensorBoard (fit() does this when it ends)."""
        self._closed = True
        if self.metrics is not None:
            self.metrics.close()


def _quiet_deepspeed(level: str) -> None:
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(getattr(logging, level.upper(), logging.WARNING))
