"""benchmarks/bench_spo.py: reading curves against compute, the goal's crossing point, and a quick end-to-end pass
that writes the report (tiny settings, so it checks the plumbing, not the claim)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench_helpers import BENCH, load_benchmark

CURVE = {"nfe": [0.0, 100.0, 200.0, 300.0], "crispness": [0.70, 0.74, 0.78, 0.77], "fd": [2.0, 2.5, 3.0, 3.5]}


def test_value_at_interpolates_and_stops_at_the_last_evaluation():
    bench = load_benchmark("bench_spo")
    assert bench.value_at(CURVE, "crispness", 150.0) == pytest.approx(0.76)
    assert bench.value_at(CURVE, "fd", 0.0) == pytest.approx(2.0)
    assert bench.value_at(CURVE, "fd", 301.0) is None


def test_nfe_to_reach_finds_the_first_crossing():
    bench = load_benchmark("bench_spo")
    assert bench.nfe_to_reach(CURVE, "crispness", 0.76) == pytest.approx(150.0)
    assert bench.nfe_to_reach(CURVE, "crispness", 0.775) == pytest.approx(187.5)
    assert bench.nfe_to_reach(CURVE, "crispness", 0.80) is None
    assert bench.nfe_to_reach(CURVE, "crispness", 0.69) == 0.0  # the base already reaches it


def test_quick_run_writes_the_report(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, str(BENCH / "bench_spo.py"), "--quick", "--threads", "1", "--runs",
                           str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--arms", "spo",
                           "trajectory-dpo"], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads((tmp_path / "out" / "spo.json").read_text())
    assert results["quick"] and set(results["runs"]) == {"spo", "trajectory-dpo"}
    assert set(results["sweep"]["chosen"]) == {"spo", "trajectory-dpo"}
    goal = results["analysis"]["goal"]
    assert len(goal["per_seed"]) == 2 and isinstance(goal["speed_met"], bool)
    report = (tmp_path / "out" / "spo.md").read_text()
    assert "QUICK RUN" in report and "## The goal" in report
    assert (tmp_path / "out" / "spo_curves.png").stat().st_size > 0
    assert (tmp_path / "out" / "spo_samples.png").stat().st_size > 0
