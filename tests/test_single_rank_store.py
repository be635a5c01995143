"""A world of one (training without a launcher) opens no network listener.

The old one-rank process group hosted a TCPStore that accepted unauthenticated connections on every interface
(it bound `::`) for the whole run, and exported its port as MASTER_PORT, so a child process started later
tried to rendezvous with it. Now the store lives in memory (HashStore) and gloo's own transport is pinned to
the loopback interface.
"""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

# Starts a world of one the way the trainer does, says so, and stays alive until its stdin closes.
CHILD = textwrap.dedent("""
    import json, os, sys
    import torch
    import torch.distributed as dist
    from data_tools.training import distributed as D
    D.init_distributed()
    t = torch.ones(3)
    dist.all_reduce(t)
    out = [torch.zeros(3)]
    dist.all_gather(out, t)
    assert t.tolist() == [1.0, 1.0, 1.0] and out[0].tolist() == [1.0, 1.0, 1.0]
    print("READY " + json.dumps({"world": D.world_size(), "rank": D.rank(),
                      "env": {k: os.environ.get(k) for k in %r}}), flush=True)
    sys.stdin.read()
""" % (LAUNCHER_VARIABLES,))


def _clean_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    for name in LAUNCHER_VARIABLES:
        env.pop(name, None)
    return env


def _listening(pid: int) -> list:
    proc = psutil.Process(pid)
    conns = proc.net_connections(kind="inet") if hasattr(proc, "net_connections") else proc.connections(kind="inet")
    return [c for c in conns if c.status == psutil.CONN_LISTEN]


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _start(env: dict[str, str]) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD], cwd=REPO, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # DeepSpeed prints to stdout too
        if line.startswith("READY "):
            return proc, json.loads(line[len("READY "):])
    proc.stdin.close()
    raise AssertionError(f"child failed:\n{proc.stderr.read()[-4000:]}")


def _stop(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    proc.wait(timeout=60)


def test_world_of_one_listens_on_no_network_interface():
    proc, info = _start(_clean_env())
    try:
        listeners = _listening(proc.pid)
        assert info["world"] == 1 and info["rank"] == 0
        exposed = [f"{c.laddr.ip}:{c.laddr.port}" for c in listeners if not _is_loopback(c.laddr.ip)]
        assert exposed == [], f"a world of one listens beyond loopback: {exposed}"
        # No store: the exported MASTER_PORT (if any) is nobody's listener, so no child can join it.
        ports = {c.laddr.port for c in listeners}
        master_port = info["env"]["MASTER_PORT"]
        assert master_port is None or int(master_port) not in ports
        # What DeepSpeed reads is still there.
        assert info["env"]["RANK"] == "0" and info["env"]["WORLD_SIZE"] == "1" and info["env"]["LOCAL_RANK"] == "0"
    finally:
        _stop(proc)


def test_child_of_a_world_of_one_starts_its_own_world_without_rendezvous():
    """A process started from a one-rank run inherits its exported variables; it must not try to join it."""
    parent, info = _start(_clean_env())
    try:
        inherited = {k: v for k, v in info["env"].items() if v is not None}
        child, child_info = _start(_clean_env(**inherited))
        try:
            assert child_info["world"] == 1
            exposed = [c for c in _listening(child.pid) if not _is_loopback(c.laddr.ip)]
            assert exposed == []
        finally:
            _stop(child)
    finally:
        _stop(parent)


def test_single_process_group_uses_an_in_memory_store(monkeypatch):
    """The one-rank group never constructs a TCPStore (checked in-process with a tripwire)."""
    import torch.distributed as dist

    from data_tools.training import distributed as D

    created = []

    class Tripwire:
        def __init__(self, *args, **kwargs):
            created.append((args, kwargs))
            raise AssertionError("TCPStore constructed for a world of one")

    monkeypatch.setattr(dist, "TCPStore", Tripwire)
    store = D._single_rank_store()
    assert isinstance(store, dist.HashStore)
    assert created == []


SHUTDOWN_CHILD = textwrap.dedent("""
    import json
    import torch
    import torch.distributed as dist
    from data_tools.training import distributed as D

    D.init_distributed()
    group = dist.group.WORLD
    D.shutdown_distributed()
    D.shutdown_distributed()
    kept = dist.is_initialized() and dist.group.WORLD is group
    D.init_distributed()  # a later run in the same process
    t = torch.ones(2)
    dist.all_reduce(t)
    print("RESULT " + json.dumps({"kept": kept, "reduced": t.tolist()}), flush=True)
""")


def test_shutdown_of_a_world_of_one_keeps_the_group_for_later_runs_in_the_process():
    """A world of one has no peer to leave: `shutdown_distributed` keeps its group (DeepSpeed caches it), so a
    second run in the same process still communicates. (Two ranks leaving together: tests/test_trainer.py.)"""
    proc = subprocess.run([sys.executable, "-c", SHUTDOWN_CHILD], cwd=REPO, env=_clean_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    assert result == {"kept": True, "reduced": [1.0, 1.0]}
