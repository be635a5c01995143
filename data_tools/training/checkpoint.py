"""Checkpoint helpers: plain-data RNG state, safe loading of DeepSpeed checkpoints, the `latest` pointer, export.

What DeepSpeed does itself (0.19): `engine.save_checkpoint` writes `mp_rank_00_model_states.pt` (module,
scheduler, counters, our client state) from data-parallel rank 0 and one `*zero_pp_rank_R_*_optim_states.pt`
per rank for ZeRO, all with plain `torch.save`; rank 0 then writes `latest` without waiting for the other ranks
and without an atomic rename. `engine.load_checkpoint` reads every file through its checkpoint engine's
`load`, which calls `torch.load(..., weights_only=False)`: full unpickling, so a crafted checkpoint could run
code. Here:

* the trainer saves with `save_latest=False`, waits for every rank, fsyncs, and then rank 0 writes `latest`
  atomically, so `latest` only ever names a complete checkpoint;
* `install_safe_loader(engine)` swaps DeepSpeed's torch checkpoint engine for one that loads with
  `weights_only=True`, allowing only the three DeepSpeed classes its ZeRO files hold (a loss-scaler object,
  the ZeRO stage enum and a fragment-address dataclass). Universal checkpoints and DeepSpeed's offline tools
  (`zero_to_fp32.py`, `ds_to_universal`) still call `torch.load(weights_only=False)` directly: only run them on
  checkpoints you wrote;
* the client state is plain data (ints, floats, strings, lists, dicts, uint8 tensors), so it loads under
  `weights_only=True` too.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# fsync_dir / fsync_tree live in data_tools.files and stay importable from here
from data_tools.files import atomic_write_bytes, atomic_write_text, fsync_dir, fsync_tree  # noqa: F401

log = logging.getLogger(__name__)

LATEST_FILE = "latest"


def step_tag(step: int) -> str:
    return f"step{step:08d}"


# --- RNG state as plain data


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) generator states as lists and uint8 tensors."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(mt), gauss],
        "numpy": [str(kind), [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().clone(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.clone() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, mt, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"].to(torch.uint8).cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.to(torch.uint8).cpu() for s in state["cuda"]])


# --- safe loading


def _deepspeed_safe_globals() -> list[Any]:
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def safe_torch_load(path: str | os.PathLike, map_location: Any = None) -> Any:
    """torch.load with weights_only=True, plus the few DeepSpeed classes its checkpoint files contain."""
    with torch.serialization.safe_globals(_deepspeed_safe_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


def install_safe_loader(engine: Any) -> bool:
    """Make `engine.load_checkpoint` read files with weights_only=True; False if the engine uses another backend."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location: Any = None) -> Any:
            return safe_torch_load(path, map_location=map_location)

    current = getattr(engine, "checkpoint_engine", None)
    if type(current) is not TorchCheckpointEngine:
        log.warning("checkpoint engine %s kept: it loads with DeepSpeed's own unpickling", type(current).__name__)
        return False
    safe = WeightsOnlyCheckpointEngine.__new__(WeightsOnlyCheckpointEngine)
    safe.__dict__.update(current.__dict__)
    engine.checkpoint_engine = safe
    return True


# --- the `latest` pointer


def read_latest_tag(checkpoint_dir: str | os.PathLike) -> str | None:
    path = Path(checkpoint_dir) / LATEST_FILE
    if not path.is_file():
        return None
    tag = path.read_text(encoding="utf-8").strip()
    return tag or None


def write_latest_tag(checkpoint_dir: str | os.PathLike, tag: str) -> None:
    atomic_write_text(Path(checkpoint_dir) / LATEST_FILE, tag)
    fsync_dir(checkpoint_dir)


# --- export


def consolidated_state_dict(engine: Any) -> dict[str, torch.Tensor] | None:
    """The full module state dict on rank 0 (None elsewhere); collective under ZeRO-3, call on every rank."""
    import deepspeed

    module: nn.Module = engine.module
    params = list(module.parameters())
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    partitioned = any(hasattr(p, "ds_id") for p in params)  # ZeRO-3 leaves empty placeholders
    gather = deepspeed.zero.GatheredParameters(params, modifier_rank=None) if partitioned else contextlib.nullcontext()
    with gather:
        return _cpu_copy(module.state_dict()) if rank == 0 else None


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Cloning also breaks storage sharing between tied weights, which safetensors refuses.
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def export_weights(engine: Any, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path | None:
    """Write the module weights (gathered under ZeRO-3) to a safetensors file, atomically, from rank 0.

    Collective: call on every rank. Weights are saved in the dtype the module holds (bf16 under bf16 training).
    Returns the path on rank 0, None elsewhere.
    """
    from safetensors.torch import save

    state = consolidated_state_dict(engine)
    path = Path(path)
    if state is not None:
        atomic_write_bytes(path, save(state, metadata=metadata))
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()
    return path if state is not None else None
