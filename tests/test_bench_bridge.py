"""benchmarks/bench_bridge.py: counting half-bridges to a level, and a quick end-to-end pass that writes the report
(tiny settings: it checks the plumbing, not the paper's claims)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from bench_helpers import BENCH, load_benchmark


def test_first_reaching_counts_half_bridges_trained():
    bench = load_benchmark("bench_bridge")
    points = [(0, 1.5), (1, 1.5), (2, 0.9), (3, 0.9), (4, 0.7)]
    assert bench.first_reaching(points, 1.0) == 3  # after half-bridge 2: three trained
    assert bench.first_reaching(points, 1.0, handed_over=True) == 2  # half-bridge 0 was the flow-matching model
    assert bench.first_reaching(points, 0.5) is None
    history = [{"half_bridge": 0, "data_w2": 2.0}, {"half_bridge": 1, "data_w2": 2.0, "prior_w2": 1.0}]
    assert bench.curve(history, "prior_w2") == [(1, 1.0)]


def test_quick_run_writes_the_report(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, str(BENCH / "bench_bridge.py"), "--quick", "--seeds", "0", "--runs",
                           str(tmp_path / "runs"), "--out", str(tmp_path / "out")], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads((tmp_path / "out" / "bridge.json").read_text())
    assert results["quick"] and set(results["arms"]) == {"DSB", "SDSB", "TR-SDSB", "FR-SDSB", "FR-SDSB-simulated",
                                                         "FM-TR-SDSB", "FM-FR-SDSB"}
    assert set(results["analysis"]["tr_fr_faster_than_dsb"]) == {"TR-SDSB", "FR-SDSB"}
    fm = results["arms"]["FM-TR-SDSB"]["0"]
    assert fm[0]["half_bridge"] == 0 and "from" in fm[0]  # started from the flow-matching model
    assert results["floors"]["checkerboard_vs_itself_w2"] < results["floors"]["gaussian_vs_checkerboard_w2"]
    report = (tmp_path / "out" / "bridge.md").read_text()
    assert "QUICK RUN" in report and "SDSB against DSB" in report


def test_quick_digits_run_writes_the_report_with_its_references(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, str(BENCH / "bench_bridge_digits.py"), "--quick", "--runs",
                           str(tmp_path / "runs"), "--out", str(tmp_path / "out")], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads((tmp_path / "out" / "bridge_digits.json").read_text())
    translation = results["tasks"]["translation"]["0"]
    assert [h["half_bridge"] for h in translation] == [0, 1]
    assert 0.0 <= translation[-1]["class_kept"] <= 1.0 and translation[-1]["data_fd"] > 0
    assert "class_kept" not in results["tasks"]["gaussian"]["0"][0]  # noise has no class to keep
    refs = results["references"]
    assert refs["digits_vs_digits"]["data_fd"] < refs["gaussian_noise"]["data_fd"]
    assert (tmp_path / "out" / "bridge_digits_translation.png").stat().st_size > 0
    assert "QUICK RUN" in (tmp_path / "out" / "bridge_digits.md").read_text()
