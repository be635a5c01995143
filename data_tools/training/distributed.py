"""Process-group set-up that works the same alone, under `torchrun` and under the `deepspeed` launcher.

Both launchers export RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init_distributed` reads
them. Backend: NCCL with CUDA, gloo on CPU.

A world of one (no launcher, or a launcher's WORLD_SIZE=1) opens no network listener: its store is an
in-memory HashStore (a TCPStore would accept unauthenticated connections, and torch binds it to every
interface whatever host it is given), and the transports' own sockets are pinned to the loopback interface
(GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME, unless the user set them; gloo always keeps one listener for its
pairs, on loopback). It exports RANK=0, WORLD_SIZE=1, LOCAL_RANK=0, LOCAL_WORLD_SIZE=1, MASTER_ADDR and
MASTER_PORT because DeepSpeed reads them, but MASTER_PORT is a port nobody listens on: there is nothing to
join. A process started later that inherits these variables sees WORLD_SIZE=1 and makes its own world of
one; it never rendezvouses.
"""
from __future__ import annotations

import atexit
import datetime
import logging
import os
import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def pick_device() -> torch.device:
    """This rank's accelerator (cuda:LOCAL_RANK) or the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    return torch.device("cpu")


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def prebuild_deepspeed_ops() -> None:
    """Build (or load the cached build of) the shared-memory comm op DeepSpeed's CPU backend JIT-compiles.

    DeepSpeed builds it inside its communication backend on first use; two ranks compiling into the same
    cache folder at once can crash, so `init_distributed` lets local rank 0 build it first. Tests call this
    once per session for the same reason. A no-op where the accelerator has no such op (CUDA).
    """
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return
    builder.load(verbose=False)


def _single_rank_store() -> dist.Store:
    """The store of a world of one: in memory, no socket."""
    return dist.HashStore()


def _loopback_interface() -> str:
    """Name of the interface that carries 127.0.0.1 ("lo" on Linux)."""
    try:
        import psutil

        for name, addrs in psutil.net_if_addrs().items():
            if any(a.address == "127.0.0.1" for a in addrs):
                return name
    except Exception:  # noqa: BLE001 - psutil missing or no permission: the Linux name
        pass
    return "lo"


def _unused_port() -> int:
    """A port number the OS had free a moment ago; nothing here listens on it."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _single_process_group(backend: str, timeout: datetime.timedelta) -> None:
    # Pin the transports to loopback for the life of the process: later groups (DeepSpeed's new_group
    # calls) make new gloo devices, and NCCL reads its variable when its first communicator is built.
    loopback = _loopback_interface()
    os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback)
    os.environ.setdefault("NCCL_SOCKET_IFNAME", loopback)
    # DeepSpeed's init_distributed wants all five launcher variables (else it tries MPI discovery). MASTER_PORT
    # names a port nobody listens on: there is no store to join, and a child that inherits WORLD_SIZE=1 makes
    # its own world of one (`_is_world_of_one`).
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_unused_port()))
    dist.init_process_group(backend, store=_single_rank_store(), rank=0, world_size=1, timeout=timeout)


def _is_world_of_one() -> bool:
    """No launcher variables, or a launcher's world of one."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return True
    return os.environ["WORLD_SIZE"].strip() == "1"


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> None:
    """Initialise torch.distributed (if needed) and DeepSpeed's communication layer on top of it."""
    import deepspeed

    timeout = datetime.timedelta(seconds=timeout_s)
    backend = backend or default_backend()
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(pick_device())
        if _is_world_of_one():
            _single_process_group(backend, timeout)
            atexit.register(_destroy_world_of_one)
        else:
            os.environ.setdefault("LOCAL_RANK", "0")
            dist.init_process_group(backend, init_method="env://", timeout=timeout)
        log.info("process group: rank %d of %d on %s", rank(), world_size(), backend)
    elif dist.get_world_size() == 1:
        os.environ.setdefault("LOCAL_RANK", "0")  # set up by the caller without a launcher; DeepSpeed asks
    # Local rank 0 compiles DeepSpeed's JIT op alone; the others then load the cached build.
    if local_rank() == 0:
        prebuild_deepspeed_ops()
    barrier()
    if local_rank() != 0:
        prebuild_deepspeed_ops()
    deepspeed.init_distributed(dist_backend=dist.get_backend(), timeout=timeout)


def _destroy_world_of_one() -> None:
    """At interpreter exit, tear down the kept world-of-one group while Python is still whole: left to the
    interpreter's own teardown, gloo aborts now and then ("terminate called without an active exception",
    about 1 exit in 25 here), which fails a command that finished its work."""
    if dist.is_initialized() and dist.get_world_size() == 1:
        dist.destroy_process_group()


def shutdown_distributed() -> None:
    """Leave the process group together: every rank waits for the others, then tears its groups down.

    Left to interpreter exit, a rank whose peer has already gone can abort in gloo's C++ teardown
    ("terminate called without an active exception"), which fails a job that finished its work. A world of
    one has no peer to wait for and keeps its group: DeepSpeed caches it, and a later run in the same process
    (a test, a notebook) reuses it.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    barrier()
    dist.destroy_process_group()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable, plain data) on every rank."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
